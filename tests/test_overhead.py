"""Per-job overhead (issue 18): durable batches instead of an fsync per file, without
giving up the order that makes a crash harmless."""
import os
import subprocess
import sys

import pytest
from dropbox_runner.on_hpc import files
from helpers import drain, drop, make_config, write_config

from dropbox_runner import durable
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import BATCH_PREFIX, Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport


def ledger_job(tmp_path, n, seconds=0):
    return {"script": "ledger", "args": {"seconds": seconds}, "cache": False,
            "output_map": {"out": str(tmp_path / "outputs" / f"o{n}.txt")}}


class SyncCounter:
    def __init__(self, monkeypatch):
        self.fsyncs = self.syncfs = 0
        real_fsync, real_syncfs = os.fsync, files.syncfs_function()

        def fsync(fd):
            self.fsyncs += 1
            real_fsync(fd)

        def syncfs(fd):
            self.syncfs += 1
            return real_syncfs(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        if real_syncfs is not None:
            monkeypatch.setattr(files, "_SYNCFS", syncfs)

    @property
    def total(self):
        return self.fsyncs + self.syncfs


def test_a_cycle_makes_its_files_durable_in_a_few_calls_not_one_per_job(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    names = [f"j{n}.job" for n in range(40)]
    for n, name in enumerate(names):
        drop(config, name, ledger_job(tmp_path, n))
    counter = SyncCounter(monkeypatch)
    run_once(config, LocalTransport())
    assert len(Dropbox(config.dropbox).scan().submitted) == 40
    assert counter.total <= 4, (counter.fsyncs, counter.syncfs)    # was 40: one per .submitted
    results = drain(config, names)
    assert {r["job"]["status"] for r in results.values()} == {"ok"}
    assert counter.total < 40, (counter.fsyncs, counter.syncfs)    # was 80: and one per .finished


def test_without_syncfs_every_file_is_still_fsynced_before_it_is_renamed(tmp_path, monkeypatch):
    monkeypatch.setattr(files, "_SYNCFS", lambda fd: -1)     # a filesystem refusing syncfs
    counter = SyncCounter(monkeypatch)
    batch = durable.DurableBatch()
    for n in range(5):
        batch.write(tmp_path / f"f{n}", f"{n}\n".encode())
    assert not (tmp_path / "f0").exists()
    batch.commit()
    assert counter.fsyncs == 5 + 1      # each file, then the folder
    assert [(tmp_path / f"f{n}").read_text() for n in range(5)] == [f"{n}\n" for n in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{n}" for n in range(5)]


def test_a_batch_removes_nothing_before_what_was_written_is_in_place(tmp_path):
    (tmp_path / "x.job").write_text("script: a\n")
    dropbox = Dropbox(tmp_path)
    with dropbox.durable_batch():
        dropbox.write_result("x.job", {"script": "a"}, {"status": "ok"})
        dropbox.discard("x.job", "")
        assert (tmp_path / "x.job").exists() and not (tmp_path / "x.job.finished").exists()
    assert not (tmp_path / "x.job").exists()
    assert dropbox.read_result("x.job")["job"] == {"status": "ok"}


def once(config_path, fault=None):
    env = {key: value for key, value in os.environ.items() if key != "DROPBOX_RUNNER_FAULT"}
    if fault:
        env["DROPBOX_RUNNER_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "dropbox_runner.cli", "once", "--config", str(config_path)],
                          env=env, capture_output=True, timeout=60)


def test_a_submitter_killed_mid_batch_changed_nothing_and_the_next_cycle_sweeps_its_leftovers(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    names = [f"j{n}.job" for n in range(3)]
    for n, name in enumerate(names):
        drop(config, name, ledger_job(tmp_path, n))
    assert once(config_path, "in_batch").returncode == -9      # files written, none renamed
    listing = Dropbox(config.dropbox).scan()
    assert listing.new == names and listing.submitted == []       # nothing taken: the batch never ended
    staging = config.state_dir / "staging"                          # made there, not in the watched dropbox
    assert not listing.batch_leftovers and [p for p in staging.iterdir() if p.name.startswith(BATCH_PREFIX)]
    results = drain(config, names)
    assert {r["job"]["status"] for r in results.values()} == {"ok"}
    assert not [p for p in config.dropbox.iterdir() if p.name.startswith(BATCH_PREFIX)]
    assert not [p for p in staging.iterdir() if p.name.startswith(BATCH_PREFIX)]
    assert sorted((tmp_path / "ledger").read_text().split()) == sorted(r["job"]["id"] for r in results.values())


def test_killed_mid_batch_at_intake_or_collection_every_job_still_finishes_exactly_once(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    names = [f"j{n}.job" for n in range(6)]
    for n, name in enumerate(names):
        # longer than a once call's gathering, so the jobs are collected by a later call
        drop(config, name, ledger_job(tmp_path, n, seconds=1))
    kills = 0
    for attempt in range(40):
        faulty = attempt % 2 == 0        # every other cycle dies in its batch, intake's or collection's
        done = once(config_path, "in_batch" if faulty else None)
        assert done.returncode in ((-9, 0) if faulty else (0,)), done.stderr
        kills += done.returncode == -9
        if not faulty and len(Dropbox(config.dropbox).scan().finished) == len(names):
            break
    assert kills >= 2
    results = drain(config, names)
    assert {r["job"]["status"] for r in results.values()} == {"ok"}
    assert sorted((tmp_path / "ledger").read_text().split()) == sorted(r["job"]["id"] for r in results.values())
    assert not [p for p in config.dropbox.iterdir() if p.name.startswith((BATCH_PREFIX, ".tmp-"))]


def test_the_local_transport_moves_a_new_entry_and_copies_into_one_already_there(tmp_path):
    outbox, workspace = tmp_path / "outbox", tmp_path / "workspace"
    for job in ("new", "old"):
        (outbox / job / "input").mkdir(parents=True)
        (outbox / job / "job.sh").write_text(f"echo {job}\n")
    (workspace / "old").mkdir(parents=True)
    inode = (outbox / "new" / "job.sh").stat().st_ino
    LocalTransport().push(outbox, str(workspace))
    assert not (outbox / "new").exists() and (workspace / "new" / "job.sh").stat().st_ino == inode   # moved
    assert (outbox / "old" / "job.sh").exists() and (workspace / "old" / "job.sh").read_text() == "echo old\n"
    assert sorted(p.name for p in (workspace / "new").iterdir()) == ["input", "job.sh"]


def sleeper(config, name, seconds="60"):
    import yaml

    (config.dropbox / name).write_text(yaml.safe_dump(
        {"script": "sleep", "args": {"seconds": seconds}, "cache": False,
         "output_map": {"out": str(config.dropbox.parent / "outputs" / (name + ".txt"))}}))


def test_held_jobs_are_kept_as_summaries_never_read_back_after_intake_and_read_again_when_changed(
        config_factory, monkeypatch):
    """Between cycles a held job is its name, id, class and cache key (its whole hold was
    some 3 KB parsed: 300 MB for a 100,000-job burst behind a queue wait); the holds intake
    wrote are not read back, and one whose file changed in any way is read again."""
    from dropbox_runner.dropbox import HeldSummary
    from dropbox_runner.submitter import Submitter

    config = config_factory()
    for name in ("a.job", "b.job"):
        sleeper(config, name)
    reads = []
    real_read_held = Dropbox.read_held
    monkeypatch.setattr(Dropbox, "read_held", lambda self, name: reads.append(name) or real_read_held(self, name))
    submitter = Submitter(config, LocalTransport())
    try:
        assert submitter.cycle().taken == 2
        assert [submitter.cycle().held for _ in range(2)] == [2, 2] and reads == []
        assert all(type(known[1]) is HeldSummary for known in submitter._known.values())
        hold = config.dropbox / "a.job.submitted"
        before = hold.stat()
        hold.write_bytes(hold.read_bytes())         # the same bytes, size and mtime: only the ctime moves
        os.utime(hold, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert submitter.cycle().held == 2 and reads == ["a.job"]
    finally:
        submitter.close()


@pytest.mark.parametrize("kept", [True, False])
def test_a_hold_changed_where_no_cycle_saw_it_is_never_used(config_factory, monkeypatch, kept):
    """A hold changed where no cycle saw it change is not used.  One this process wrote and
    keeps whole (``kept``) is finished as written, the file's edit ignored; one it does not
    keep is read when its job is finished and its seal checked then, never taken from a
    summary a cycle remembered.  A job collected beside it finishes in the same cycle."""
    import yaml
    from dropbox_runner.on_hpc.jobstore import JobStore
    from helpers import wait_until

    from dropbox_runner import submitter as submitter_module
    from dropbox_runner.submitter import Submitter

    if not kept:
        monkeypatch.setattr(submitter_module, "WHOLE_HOLDS_KEPT", 0)
    config = config_factory()
    for name in ("a.job", "bystander.job"):
        sleeper(config, name, seconds="0")
    submitter = Submitter(config, LocalTransport())
    try:
        submitter.cycle()
        hold = config.dropbox / "a.job.submitted"
        document = yaml.safe_load(hold.read_text())
        document["description"]["output_map"]["out"] = "/etc/elsewhere"
        hold.write_text(yaml.safe_dump(document))
        known = dict(submitter._known)
        monkeypatch.setattr(Dropbox, "hold_identity", lambda self, name: known[name][0])   # unseen
        done = JobStore(config.workspace).done_dir()
        wait_until(lambda: len(os.listdir(done)) == 2, what="both jobs done on the cluster")
        assert len(submitter.cycle().collected_ids) == 2
    finally:
        submitter.close()
    block = yaml.safe_load((config.dropbox / "a.job.finished").read_text())["job"]
    if kept:
        assert block["status"] == "ok" and (config.dropbox.parent / "outputs" / "a.job.txt").exists()
    else:
        assert block["status"] == "error" and "seal does not match" in block["message"]
    assert not (config.dropbox / "a.job.submitted").exists() and not os.path.exists("/etc/elsewhere")
    assert yaml.safe_load((config.dropbox / "bystander.job.finished").read_text())["job"]["status"] == "ok"


def test_jobs_ending_together_are_recorded_with_one_sync_and_each_whole(tmp_path, monkeypatch):
    from dropbox_runner.on_hpc.batchfile import read_record
    from dropbox_runner.on_hpc.jobstore import JobStore
    from dropbox_runner.on_hpc.protocol import FinishedRecord

    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    os.makedirs(store.claimed_dir("r1"))
    ended = []
    for n in range(6):
        job_id = f"sub.j{n}"
        os.makedirs(store.job_dir(job_id))
        open(os.path.join(store.claimed_dir("r1"), job_id), "w").close()
        ended.append((job_id, FinishedRecord(rc=n, runner="r1")))
    counter = SyncCounter(monkeypatch)
    store.finish_many("r1", ended)
    assert counter.total <= 2, (counter.fsyncs, counter.syncfs)      # was 6: one fsync per finished.json
    assert sorted(os.listdir(store.done_dir())) == [job_id for job_id, _ in ended]
    assert [read_record(store.finished_path(job_id), job_id)["rc"] for job_id, _ in ended] == list(range(6))
    assert not [name for job_id, _ in ended for name in os.listdir(store.job_dir(job_id)) if name.startswith(".")]


def _made_in(folder):
    return sorted(p.name for p in folder.iterdir())


def test_a_batch_makes_its_files_in_the_staging_folder_so_the_dropbox_sees_only_their_arrival(tmp_path):
    dropbox, staging = tmp_path / "dropbox", tmp_path / "state" / "staging"
    dropbox.mkdir()
    staging.mkdir(parents=True, mode=0o700)
    (tmp_path / "state").chmod(0o700)
    batch = durable.DurableBatch(BATCH_PREFIX, staging)
    batch.write(dropbox / "a.job.finished", b"a")
    assert _made_in(dropbox) == [] and len(_made_in(staging)) == 1          # nothing in the watched folder yet
    batch.commit()
    assert _made_in(dropbox) == ["a.job.finished"] and _made_in(staging) == []
    assert (dropbox / "a.job.finished").read_bytes() == b"a"


def test_a_staging_folder_that_is_a_link_or_open_to_others_is_not_used(tmp_path):
    dropbox, state, elsewhere = tmp_path / "dropbox", tmp_path / "state", tmp_path / "elsewhere"
    for folder in (dropbox, state, elsewhere):
        folder.mkdir()
    state.chmod(0o700)
    (state / "staging").symlink_to(elsewhere)                  # swapped in by someone else
    batch = durable.DurableBatch(BATCH_PREFIX, state / "staging")
    batch.write(dropbox / "a.job.finished", b"a")
    assert _made_in(elsewhere) == [] and len(_made_in(dropbox)) == 1     # beside its target, as before
    batch.commit()
    (state / "staging").unlink()
    (state / "staging").mkdir(mode=0o777)
    (state / "staging").chmod(0o777)                            # others may write in it
    batch.write(dropbox / "b.job.finished", b"b")
    assert _made_in(state / "staging") == []
    batch.commit()
    assert _made_in(dropbox) == ["a.job.finished", "b.job.finished"]


def test_a_cycle_over_held_jobs_keeps_and_reads_little_per_job(config_factory):
    """Memory for a large burst behind a queue wait (issue 18): between cycles a held job
    was some 850 bytes (a hold's identity alone, four ints in a tuple, 200), and each cycle
    loaded every in-flight job's whole history row to compare with the cluster's answer:
    here a peak of some 740 bytes a held job above what the cycle keeps, 390 with only
    each job's state and runner read."""
    import tracemalloc

    from dropbox_runner.submitter import Submitter

    config = config_factory(classes={"default": {"slots": 1, "max_runners": 1}})
    held = 300
    for number in range(held):
        sleeper(config, f"j{number:03}.job")
    submitter = Submitter(config, LocalTransport())
    try:
        assert submitter.cycle().taken == held
        submitter.cycle()
        tracemalloc.start()
        try:
            report = submitter.cycle()
            kept, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    finally:
        submitter.close()
    assert report.held == held
    assert len(submitter._known["j000.job"][0]) == 32
    assert (peak - kept) / held < 550, f"{(peak - kept) / held:.0f} bytes a held job at the cycle's peak"
