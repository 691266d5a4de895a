"""finished.json once per runner pass: the records of the jobs that ended together in one
file, linked in as each job's finished.json (``batchfile.write_linked``)."""
import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest
from dropbox_runner.on_hpc import batchfile
from dropbox_runner.on_hpc.headnode import read_finished_record
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import FinishedRecord, JobState, Release, cancelled_record
from dropbox_runner.on_hpc.recorder import Recorder
from helpers import drain, drop

JOBS = ["sub.a", "sub.b", "sub.c"]


def claimed_store(root, job_ids, runner="r1"):
    store = JobStore(str(root))
    store.ensure_layout()
    os.makedirs(store.claimed_dir(runner), exist_ok=True)
    for job_id in job_ids:
        os.makedirs(store.job_dir(job_id), exist_ok=True)
        Path(store.job_dir(job_id), "job.json").write_text('{"class": "default"}')
        Path(store.claimed_dir(runner), job_id).touch()
    return store


def records(job_ids):
    return [(job_id, FinishedRecord(rc=n, runner="r1", host="h%d" % n)) for n, job_id in enumerate(job_ids)]


def read_all(store, job_ids):
    errors = []
    found = {job_id: read_finished_record(store, job_id, errors) for job_id in job_ids}
    assert errors == []
    return found


def test_a_pass_ending_three_jobs_makes_one_inode_and_each_job_reads_its_own(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS)
    store.finish_many("r1", records(JOBS))
    infos = [os.stat(store.finished_path(job_id)) for job_id in JOBS]
    assert len({info.st_ino for info in infos}) == 1
    assert [info.st_nlink for info in infos] == [3, 3, 3]          # the hidden name is gone
    assert os.listdir(store.runners_dir()) == []
    assert sorted(os.listdir(store.done_dir())) == JOBS and os.listdir(store.claimed_dir("r1")) == []
    found = read_all(store, JOBS)
    assert [(found[job_id]["rc"], found[job_id]["host"]) for job_id in JOBS] == [(0, "h0"), (1, "h1"), (2, "h2")]
    assert [name for job_id in JOBS for name in os.listdir(store.job_dir(job_id)) if name.startswith(".")] == []


def kill_during_finish_many(root, job_ids, patched):
    """Run finish_many in a child that SIGKILLs itself right after ``patched`` (a sync)."""
    code = f"""
import os, signal
from dropbox_runner.on_hpc import batchfile
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import FinishedRecord
real = batchfile.{patched}
def then_die(paths):
    real(paths)
    os.kill(os.getpid(), signal.SIGKILL)
batchfile.{patched} = then_die
JobStore({str(root)!r}).finish_many("r1", [(j, FinishedRecord(rc=0, runner="r1")) for j in {job_ids!r}])
"""
    done = subprocess.run([sys.executable, "-c", code], timeout=60)
    assert done.returncode == -9


def test_a_runner_killed_between_the_data_sync_and_the_links_leaves_no_record_and_its_jobs_run_again(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS)
    kill_during_finish_many(store.root, JOBS, "sync_files")
    leftover = store.finished_batch_path("r1")
    assert os.path.exists(leftover)                     # the data, synced, never linked
    assert not any(os.path.exists(store.finished_path(job_id)) for job_id in JOBS)
    assert os.listdir(store.done_dir()) == [] and sorted(os.listdir(store.claimed_dir("r1"))) == JOBS
    # what the head node does for a lost runner's jobs: each goes back to the queue
    assert [store.release("r1", job_id, "runner lost", 3) for job_id in JOBS] == [Release.REQUEUED] * 3
    errors = []
    assert read_finished_record(store, JOBS[0], errors) == {"rc": -1, "error": "the run left no finished record"}
    store.forget_runner("r1")                           # the head node forgets the lost runner
    assert os.listdir(store.runners_dir()) == []


def test_a_leftover_linked_before_the_kill_is_removed_by_the_next_pass_and_its_records_stay(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS + ["sub.d"])
    kill_during_finish_many(store.root, JOBS, "sync_folders")   # linked and synced; markers not moved
    leftover = store.finished_batch_path("r1")
    assert os.stat(leftover).st_ino == os.stat(store.finished_path(JOBS[0])).st_ino
    store.finish_many("r1", [("sub.d", FinishedRecord(rc=7, runner="r1"))])      # the runner's next pass
    assert os.listdir(store.runners_dir()) == []
    assert os.stat(store.finished_path(JOBS[0])).st_nlink == 3    # removed, not truncated nor reused
    found = read_all(store, JOBS + ["sub.d"])
    assert [found[job_id]["rc"] for job_id in JOBS + ["sub.d"]] == [0, 0, 0, 7]
    # a job with its record is never run again: its marker goes to done/
    assert [store.release("r1", job_id, "runner lost", 3) for job_id in JOBS] == [Release.DONE] * 3


def test_torn_and_garbage_lines_and_forged_keys_never_give_a_job_another_ones_record(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS)
    store.finish_many("r1", records(JOBS))
    with open(store.finished_path("sub.b"), "ab") as spoiled:     # a job can write the shared file
        spoiled.write(b'not json at all\n{"key": 5, "record": {"rc": 99}}\n{"key": "sub.x", "record": {"rc": 98}}\n'
                      b'{"key": "sub.a", "record": "no object"}\n{"key": "sub.c", "rec')
    errors = []
    assert read_finished_record(store, "sub.b", errors)["rc"] == 1
    assert read_finished_record(store, "sub.c", errors)["rc"] == 2          # the torn tail is not a line
    # a key's last whole line wins: one that is no object is the job's spoiled record
    assert read_finished_record(store, "sub.a", errors) == {
        "rc": -1, "error": "its finished record is unreadable (not a JSON object)"}
    assert batchfile.read_record(store.finished_path("sub.a"), "sub.a", "default") == "default"
    assert read_finished_record(store, "sub.x", errors) == {"rc": -1, "error": "the run left no finished record"}
    assert errors == []
    Path(store.finished_path("sub.c")).write_bytes(b"\xff\xfe garbage")     # through the shared inode
    for job_id in JOBS:        # the job's fault, at once: never "cannot read just now" for ever
        assert read_finished_record(store, job_id, errors)["error"].startswith("its finished record is unreadable")
    assert errors == []


def test_a_record_without_the_jobs_line_is_the_jobs_fault_and_a_read_error_the_filesystems(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS)
    store.finish_many("r1", records(JOBS[:2]))
    os.link(store.finished_path("sub.a"), store.finished_path("sub.c"))    # a batch not naming sub.c
    errors = []
    assert read_finished_record(store, "sub.c", errors) == {
        "rc": -1, "error": "its finished record is unreadable (no record for sub.c in its batch)"}
    os.unlink(store.finished_path("sub.c"))
    os.mkdir(store.finished_path("sub.c"))
    assert read_finished_record(store, "sub.c", errors) is None
    assert len(errors) == 1 and "cannot read its finished record just now" in errors[0]


def test_a_finished_json_there_before_is_replaced_atomically_and_a_link_in_its_place_is_not_followed(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS)
    Path(store.finished_path("sub.a")).write_text('{"rc": -1, "error": "cancelled", "cancelled": true}')
    secret = tmp_path / "secret.txt"
    secret.write_text("the operator's\n")
    os.symlink(secret, store.finished_path("sub.b"))
    store.finish_many("r1", records(JOBS))       # as before batches: the runner's record replaces it
    found = read_all(store, JOBS)
    assert [found[job_id]["rc"] for job_id in JOBS] == [0, 1, 2] and "cancelled" not in found["sub.a"]
    assert not os.path.islink(store.finished_path("sub.b")) and secret.read_text() == "the operator's\n"
    assert os.stat(store.finished_path("sub.a")).st_nlink == 3
    assert [name for job_id in JOBS for name in os.listdir(store.job_dir(job_id)) if name.startswith(".")] == []
    # the head node's cancel of a job not running keeps writing one document: both read
    os.makedirs(store.job_dir("sub.q"))
    assert store.cancel("sub.q", {}) == JobState.DONE
    assert read_all(store, ["sub.q"])["sub.q"] == cancelled_record().to_json()


def test_a_pass_that_cannot_be_written_leaves_no_hidden_file_and_no_record(tmp_path, monkeypatch):
    store = claimed_store(tmp_path / "ws", JOBS)

    def full(paths):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(batchfile, "sync_files", full)
    try:
        store.finish_many("r1", records(JOBS))
    except OSError:
        pass
    else:
        raise AssertionError("finish_many hid a full disk")
    assert os.listdir(store.runners_dir()) == []
    assert not any(os.path.exists(store.finished_path(job_id)) for job_id in JOBS)
    assert os.listdir(store.done_dir()) == []


def test_the_local_runner_drains_twenty_jobs_and_every_result_is_its_own(config):
    names, expected = [], {}
    for n in range(20):
        name = f"j{n:02d}.job"
        names.append(name)
        out = str(Path(config.dropbox).parent / "outputs" / f"out{n}.txt")
        if n % 3 == 0:
            drop(config, name, {"script": "fail", "output_map": {"out": out}, "cache": False})
            expected[name] = ("error", 3, "")
        else:
            source = Path(config.dropbox).parent / "inputs" / f"in{n}.txt"
            source.write_text(f"text {n}\n")
            drop(config, name, {"script": "copy", "input_map": {"src": str(source)}, "output_map": {"dst": out},
                                "cache": False})
            expected[name] = ("ok", 0, f"copied in{n}.txt\n")
    results = drain(config, names, timeout=120)
    got = {name: (results[name]["job"]["status"], results[name]["job"]["rc"],
                  results[name]["job"]["stdout"] if results[name]["job"]["rc"] == 0 else "") for name in names}
    assert got == expected
    for n in range(20):
        if n % 3:
            assert (Path(config.dropbox).parent / "outputs" / f"out{n}.txt").read_text() == f"text {n}\n"
    assert [name for name in os.listdir(Path(config.workspace) / "runners") if name.startswith(".finished-")] == []


def test_a_fifo_as_finished_json_is_the_jobs_fault_at_once_and_never_blocks_the_head_node(tmp_path):
    store = claimed_store(tmp_path / "ws", JOBS)
    os.mkfifo(store.finished_path("sub.a"))      # no writer: a plain open would wait for ever
    store.finish_many("r1", [("sub.b", FinishedRecord(rc=0)), ("sub.c", FinishedRecord(rc=5))])
    errors = []
    assert read_finished_record(store, "sub.a", errors) == {
        "rc": -1, "error": "its finished record is unreadable (not a regular file)"}
    # the bystanders ended in the same pass are read as theirs, in the same cycle
    assert [read_finished_record(store, job_id, errors)["rc"] for job_id in ("sub.b", "sub.c")] == [0, 5]
    assert errors == []


class RefusingStore:
    """A store whose batch write fails with ``error``."""

    def __init__(self, error):
        self.error = error

    def finish_many(self, runner_id, ended):
        raise self.error


def test_the_recorder_hands_a_refused_batch_back_to_the_loop_and_wakes_it():
    """A batch the filesystem refused comes back whole, for the loop to record one by one
    with the full disk's handling; any other failure is raised again in the loop, which
    stops the runner as before the batches were written by a thread."""
    wake_read, wake_write = os.pipe()
    ending, jobs = records(JOBS), {job_id: ("job", 0, 1.0) for job_id in JOBS}
    recorder = Recorder(RefusingStore(OSError(errno.ENOSPC, "No space left on device")), "r1", wake_write)
    recorder.start(ending, jobs)
    assert os.read(wake_read, 16) == b"r"       # the loop is woken when the batch is done
    assert recorder.wait() == (ending, jobs) and recorder.wait() is None
    recorder = Recorder(RefusingStore(ValueError("a bug")), "r1", wake_write)
    recorder.start(ending, jobs)
    with pytest.raises(ValueError, match="a bug"):
        recorder.wait()
    os.close(wake_read)
    os.close(wake_write)
