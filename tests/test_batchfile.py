"""One file of metas per intake cycle, linked in as every job's job.json (issue 18):
one inode per cycle instead of one per job, and no job ever reads another's record."""
import errno
import json
import os

from dropbox_runner.on_hpc import batchfile
from dropbox_runner.on_hpc.batchfile import BATCH_PREFIX, BatchFile, read_record
from dropbox_runner.on_hpc.jobstore import JobStore
from helpers import drain, drop, make_config

from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import Submitter
from dropbox_runner.transport.local import LocalTransport


def _jobs(config, count, prefix="j"):
    names = []
    for number in range(count):
        name = f"{prefix}{number}.job"
        drop(config, name, {"script": "echo_args", "args": {"first": str(number), "second": "x"}, "cache": False,
                            "output_map": {"out": str(config.dropbox.parent / "outputs" / f"{prefix}{number}.txt")}})
        names.append(name)
    return names


def _staged(config):
    jobs = os.path.join(str(config.workspace), "jobs")
    return {job_id: os.path.join(jobs, job_id, "job.json") for job_id in os.listdir(jobs)}


def test_a_cycle_makes_one_file_of_metas_and_every_job_reads_its_own(tmp_path):
    config = make_config(tmp_path)
    names = _jobs(config, 5)
    submitter = Submitter(config, LocalTransport())
    try:
        submitter.cycle()
        staged = _staged(config)
        assert len(staged) == 5
        inodes = {os.stat(path).st_ino for path in staged.values()}
        assert len(inodes) == 1                                    # one inode for the cycle's five jobs
        store = JobStore(str(config.workspace))
        assert {job_id: store.job_meta(job_id)["id"] for job_id in staged} == {job_id: job_id for job_id in staged}
        assert not [name for name in os.listdir(config.state_dir / "outbox") if name.startswith(BATCH_PREFIX)]
        results = drain(config, names, cycle=submitter.cycle)
    finally:
        submitter.close()
    assert [results[name]["job"]["status"] for name in names] == ["ok"] * 5


def test_a_cycle_killed_before_closing_its_metas_leaves_nothing_that_is_sent(tmp_path):
    config = make_config(tmp_path)
    outbox = config.state_dir / "outbox"
    outbox.mkdir(parents=True)
    (outbox / (BATCH_PREFIX + "0123456789abcdef")).write_text('{"key": "x", "record": {}}\n')
    names = _jobs(config, 2)
    results = drain(config, names)
    assert [results[name]["job"]["status"] for name in names] == ["ok", "ok"]
    assert not [name for name in os.listdir(outbox) if name.startswith(BATCH_PREFIX)]
    workspace = os.path.join(str(config.workspace), "jobs")
    assert not [name for name in os.listdir(workspace) if name.startswith(BATCH_PREFIX)]


def test_a_full_disk_while_adding_a_jobs_meta_makes_that_job_wait_and_takes_the_others(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    names = _jobs(config, 3)
    original = BatchFile.add
    refused = []

    def add(self, key, record, target):
        if ".j1." in key and not refused:
            refused.append(key)
            raise OSError(errno.ENOSPC, "No space left on device")
        return original(self, key, record, target)

    monkeypatch.setattr(BatchFile, "add", add)
    submitter = Submitter(config, LocalTransport())
    try:
        report = submitter.cycle()
        assert refused and report.taken == 2
        listing = Dropbox(config.dropbox).scan()
        assert listing.new == ["j1.job"] and not listing.finished           # waits; not failed
        assert not (config.state_dir / "outbox" / refused[0]).exists()
        results = drain(config, names, cycle=submitter.cycle)
    finally:
        submitter.close()
    assert [results[name]["job"]["status"] for name in names] == ["ok"] * 3


def test_a_torn_write_costs_only_its_own_line(tmp_path, monkeypatch):
    batch = BatchFile(str(tmp_path))
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    (tmp_path / "c").mkdir()
    batch.add("a", {"n": 1}, str(tmp_path / "a" / "job.json"))
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:7]))     # a full disk, part-way
    try:
        batch.add("b", {"n": 2}, str(tmp_path / "b" / "job.json"))
        raise AssertionError("a short write must raise")
    except OSError:
        pass
    monkeypatch.setattr(os, "write", real_write)
    batch.add("c", {"n": 3}, str(tmp_path / "c" / "job.json"))
    batch.close()
    assert not (tmp_path / "b" / "job.json").exists()               # never linked: the job waits
    assert read_record(str(tmp_path / "a" / "job.json"), "a") == {"n": 1}
    assert read_record(str(tmp_path / "c" / "job.json"), "c") == {"n": 3}
    assert read_record(str(tmp_path / "c" / "job.json"), "b") is None
    assert sorted(os.listdir(tmp_path)) == ["a", "b", "c"]          # the batch's own name is gone


def test_a_reader_takes_only_complete_lines_naming_its_key(tmp_path):
    path = tmp_path / "job.json"
    lines = [json.dumps({"key": "a", "record": {"v": 1}}, sort_keys=True), "garbage {",
             json.dumps({"key": "b", "record": ["not", "an", "object"]}, sort_keys=True),
             json.dumps({"key": "a", "record": {"v": 2}}, sort_keys=True),          # the last one wins
             json.dumps({"key": 7, "record": {"v": 3}}, sort_keys=True),
             json.dumps({"key": "c", "record": {"v": 4}}, sort_keys=True)[:-3]]     # torn: no newline
    path.write_text("\n".join(lines[:-1]) + "\n" + lines[-1])
    assert read_record(str(path), "a") == {"v": 2}
    assert read_record(str(path), "b", {}) == {}
    assert read_record(str(path), "c", {}) == {}
    assert read_record(str(path), "7", {}) == {}
    assert read_record(str(path), "zzz", {}) == {}


def test_a_file_of_one_document_reads_as_its_record_whatever_the_key(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"id": "old", "class": "default"}, indent=1))
    assert read_record(str(path), "old") == {"id": "old", "class": "default"}
    assert read_record(str(path), "anything") == {"id": "old", "class": "default"}
    path.write_text("[1, 2]")
    assert read_record(str(path), "old", {}) == {}
    path.write_text("{not json")
    assert read_record(str(path), "old", {}) == {}
    assert read_record(str(tmp_path / "missing"), "old", {}) == {}


def test_a_fifo_or_an_oversized_file_is_never_waited_on_nor_read_whole(tmp_path, monkeypatch):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    assert read_record(str(fifo), "a", {}) == {}                    # returns at once: no writer waited for
    big = tmp_path / "big"
    big.write_text(json.dumps({"key": "a", "record": {"v": 1}}) + "\n" + " " * 200)
    monkeypatch.setattr(batchfile, "MAX_READ_BYTES", 100)
    assert read_record(str(big), "a", {}) == {}


def test_a_batch_changed_in_place_is_read_again(tmp_path):
    path = tmp_path / "job.json"
    path.write_text(json.dumps({"key": "a", "record": {"v": 1}}, sort_keys=True) + "\n")
    assert read_record(str(path), "a") == {"v": 1}
    with open(path, "a") as handle:
        handle.write(json.dumps({"key": "a", "record": {"v": 2}}, sort_keys=True) + "\n")
    assert read_record(str(path), "a") == {"v": 2}


def test_a_batch_that_reaches_its_size_starts_another_and_every_job_still_reads_its_own(tmp_path, monkeypatch):
    """A cycle's metas in one file had no bound: 25,000 jobs of 700 bytes passed the
    readers' MAX_READ_BYTES, and every one of them would read as absent on the cluster."""
    monkeypatch.setattr(batchfile, "MAX_BATCH_BYTES", 400)
    batch = BatchFile(str(tmp_path))
    keys = [f"j{number}" for number in range(12)]
    for key in keys:
        (tmp_path / key).mkdir()
        batch.add(key, {"id": key, "pad": "x" * 60}, str(tmp_path / key / "job.json"))
    batch.close()
    files = [os.stat(tmp_path / key / "job.json") for key in keys]
    assert len({info.st_ino for info in files}) == 4                    # three records of ~100 bytes a file
    assert max(info.st_size for info in files) <= 400
    assert [read_record(str(tmp_path / key / "job.json"), key)["id"] for key in keys] == keys
    assert sorted(os.listdir(tmp_path)) == sorted(keys)                 # every batch's own name is gone


def test_a_reader_of_some_fields_keeps_only_those_and_a_whole_reader_still_gets_all(tmp_path):
    path = tmp_path / "job.json"
    path.write_text("".join(json.dumps({"key": key, "record": {"class": "gpu", "expected_seconds": 5, "env": "x" * 99}})
                            + "\n" for key in ("a", "b")) + json.dumps({"key": "c", "record": [1]}) + "\n")
    assert read_record(str(path), "a", {}, ("class", "expected_seconds")) == {"class": "gpu", "expected_seconds": 5}
    assert read_record(str(path), "b", {}, ("class", "gone")) == {"class": "gpu"}
    assert read_record(str(path), "c", {}, ("class",)) == {}                        # not an object: as before
    assert read_record(str(path), "a")["env"] == "x" * 99


def test_the_head_nodes_cycle_keeps_only_each_ready_jobs_class_and_expected_time(tmp_path, monkeypatch):
    """It reads every ready job's record each cycle (the runner policy's backlog): whole
    records took it to 186 MiB at 100,000 ready jobs."""
    from test_on_hpc import FakeConnector, run_cycle

    store = JobStore(str(tmp_path))
    store.ensure_layout()
    batch = BatchFile(os.path.join(str(tmp_path), "jobs"))
    ids = [f"s.j{number}" for number in range(20)]
    for job_id in ids:
        os.makedirs(store.job_dir(job_id))
        batch.add(job_id, {"id": job_id, "class": "default", "expected_seconds": 3, "env": {"PAD": "x" * 500}},
                  os.path.join(store.job_dir(job_id), "job.json"))
        with open(os.path.join(store.job_dir(job_id), "job.sh"), "w") as handle:
            handle.write("true\n")
    batch.close()
    monkeypatch.setattr(batchfile, "_parsed", batchfile.collections.OrderedDict())
    answer = run_cycle(tmp_path, FakeConnector(), {"default": {"slots": 4, "max_runners": 1}}, monkeypatch,
                       in_flight=ids)
    assert answer["states"] == dict.fromkeys(ids, "queued") and len(answer["submitted"]) == 1
    kept = [record for records in batchfile._parsed.values() for record in records.values()]
    assert len(kept) == 20 and all(set(record) == {"class", "expected_seconds"} for record in kept)
