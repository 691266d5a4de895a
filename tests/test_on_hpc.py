"""The cluster side's queue, without a scheduler: claims, releases, runner bookkeeping."""
import ast
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from dropbox_runner.on_hpc import headnode
from dropbox_runner.on_hpc.files import write_json
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import (
    CycleAnswer,
    CycleRequest,
    FinishedRecord,
    JobState,
    Release,
    RunnerState,
    WaitRequest,
)
from dropbox_runner.on_hpc.schedulers import Connector, RunnerInfo

from dropbox_runner import on_hpc

ON_HPC = Path(on_hpc.__file__).parent


def staged_store(tmp_path, ids, job_class="default", expected=None):
    store = JobStore(str(tmp_path))
    store.ensure_layout()
    for job_id in ids:
        os.makedirs(store.job_dir(job_id))
        write_json(os.path.join(store.job_dir(job_id), "job.json"),
                   {"id": job_id, "class": job_class, "expected_seconds": expected})
        Path(store.job_dir(job_id), "job.sh").write_text("true\n")
        store.make_ready(job_id, store.states())
    return store


def test_on_hpc_is_python38_stdlib_only():
    stdlib = set(sys.stdlib_module_names)
    for path in ON_HPC.glob("*.py"):
        tree = ast.parse(path.read_text(), feature_version=(3, 8))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                names = [node.module]
            else:
                continue
            for name in names:
                assert name.split(".")[0] in stdlib, f"{path.name} imports {name}"
        assert path.stem not in stdlib, f"{path.name} shadows a stdlib module"


def loaded_modules(*names):
    """The modules a fresh ``python -S`` holds after importing ``names`` from on_hpc/."""
    probe = "import sys\n" + "".join(f"import {name}\n" for name in names) + "print(' '.join(sys.modules))"
    done = subprocess.run([sys.executable, "-S", "-c", probe], env={**os.environ, "PYTHONPATH": str(ON_HPC.parent)},
                          capture_output=True, text=True, check=True)
    return set(done.stdout.split())


def test_a_cycle_or_runner_start_leaves_out_the_slow_imports():
    """Each cycle, wait and runner is a fresh interpreter: these modules were a sixth of
    its start and are not needed to begin (``shutil`` is imported where a tree is removed)."""
    loaded = loaded_modules("on_hpc.headnode", "on_hpc.runner", "on_hpc.early")
    assert loaded & {"secrets", "uuid", "tempfile", "socket", "shutil", "platform"} == set()


def test_a_head_node_command_starts_without_the_modules_only_some_commands_need():
    """Fourteenth round: a head-node command's start went from 36 ms to 20 ms here.
    ``dataclasses`` (with ``inspect``, ``ast``) and ``typing`` made the messages;
    ``subprocess`` is imported where a program is run, ``hashlib`` where a batch
    scheduler's runner is named, ``ctypes`` at the first sync."""
    loaded = loaded_modules("on_hpc.__main__", "on_hpc.headnode", "on_hpc.early", "on_hpc.sweep",
                            "on_hpc.sched_local", "on_hpc.sched_slurm", "on_hpc.sched_sge")
    assert "on_hpc.headnode" in loaded
    assert sorted(loaded & {"dataclasses", "inspect", "typing", "subprocess", "hashlib", "ctypes"}) == []


def test_messages_read_tolerantly_and_never_share_their_lists():
    """What the dataclasses gave, the message classes keep: defaults, required fields,
    tolerant reading, equality, and a fresh list or dict for each message."""
    first, second = CycleAnswer(), CycleAnswer()
    first.removed.append("s.a")
    assert second.removed == [] and CycleAnswer().removed == []
    request = CycleRequest.from_json({"root": "/w", "scheduler": "local", "submitter": "s", "from_the_future": 1})
    assert request.in_flight == [] and request.max_attempts == 3
    assert CycleRequest.from_json(request.to_json()) == request
    assert request != CycleRequest(root="/w", scheduler="local", submitter="t")
    with pytest.raises(TypeError, match="needs submitter"):
        CycleRequest(root="/w", scheduler="local")
    with pytest.raises(TypeError, match="no field colour"):
        WaitRequest(root="/w", submitter="s", colour="red")
    record = FinishedRecord(rc=0, start=1.5)
    assert record.to_json() == {"rc": 0, "start": 1.5}      # only what says something
    assert FinishedRecord.from_json(record.to_json()) == record
    assert "rc=0" in repr(record)


def test_exactly_one_of_many_racing_runners_claims_a_job(tmp_path):
    store = staged_store(tmp_path, ["j1"])
    wins = []

    def race(runner):
        if store.claim("default", "j1", runner):
            wins.append(runner)

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(wins) == 1
    assert store.states() == {"j1": "running"}


def test_make_ready_is_idempotent_and_never_requeues_a_finished_job(tmp_path):
    store = staged_store(tmp_path, ["j1"])
    assert store.make_ready("j1", store.states()) == JobState.QUEUED
    assert store.claim("default", "j1", "r1")
    store.finish("r1", "j1", FinishedRecord(rc=0))
    assert store.make_ready("j1", store.states()) == JobState.DONE
    assert store.release("r1", "j1", "late", 3) == Release.DONE
    assert store.states() == {"j1": JobState.DONE}


def test_a_queued_jobs_marker_is_a_link_to_its_job_json_not_a_new_file(tmp_path):
    """Making an inode is a queued job's dearest step on many filesystems (issue 18); the
    marker is only ever renamed, listed and stat-ed for its age, so a link serves."""
    store = staged_store(tmp_path, ["j1", "j2"])
    job_json = os.stat(os.path.join(store.job_dir("j1"), "job.json"))
    marker = os.stat(os.path.join(store.ready_dir("default"), "j1"))
    assert (marker.st_ino, marker.st_nlink) == (job_json.st_ino, 2)
    assert store.ready_jobs("default") == ["j1", "j2"]
    assert store.claim("default", "j1", "r1") and not store.claim("default", "j1", "r2")
    assert store.release("r1", "j1", "node lost", 3) == Release.REQUEUED
    assert store.claim("default", "j1", "r2")
    store.finish("r2", "j1", FinishedRecord(rc=0))
    assert store.states() == {"j1": JobState.DONE, "j2": JobState.QUEUED}
    store.remove("j1")
    assert store.states() == {"j2": JobState.QUEUED}
    assert store.cancel("j2", store.states()) == JobState.DONE
    assert os.stat(os.path.join(store.job_dir("j2"), "job.json")).st_nlink == 1


def test_a_filesystem_that_refuses_links_gets_an_empty_marker(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", refuse)
    store = staged_store(tmp_path, ["j1"])
    assert os.path.getsize(os.path.join(store.ready_dir("default"), "j1")) == 0
    assert store.claim("default", "j1", "r1")


def test_release_requeues_then_fails_after_max_attempts(tmp_path):
    store = staged_store(tmp_path, ["j1"])
    for attempt in (1, 2):
        assert store.claim("default", "j1", f"r{attempt}")
        assert store.release(f"r{attempt}", "j1", "runner gone", 3) == "requeued"
        assert store.states() == {"j1": JobState.QUEUED}
    assert store.claim("default", "j1", "r3")
    assert store.release("r3", "j1", "runner gone", 3) == "failed"
    record = store.job_meta("j1") and __import__("json").load(open(store.finished_path("j1")))
    assert record["interrupted"] == 3 and "interrupted 3 times" in record["error"]


class FakeConnector(Connector):
    """Stands in for a scheduler: records submissions, lists what it is told."""

    def __init__(self, runners=None):
        super().__init__(store=None)
        self.runners = runners or {}
        self.submitted = []

    def list_runners(self):
        return dict(self.runners)

    def submit(self, spec, spec_path, argv, env):
        self.submitted.append(spec["class"])
        return str(1000 + len(self.submitted))

    def cancel(self, ids):
        pass


def run_cycle(tmp_path, connector, classes, monkeypatch, in_flight=()):
    monkeypatch.setattr(headnode, "connector", lambda name, store: connector)
    return headnode.cycle({"root": str(tmp_path), "scheduler": "fake", "submitter": "s",
                           "in_flight": list(in_flight), "classes": classes, "pythonpath": "/x"})


def test_a_burst_gets_at_most_submit_cap_runners_in_a_cycle(tmp_path, monkeypatch):
    staged_store(tmp_path, [f"s.j{i}" for i in range(50)])
    fake = FakeConnector()
    answer = run_cycle(tmp_path, fake, {"default": {"slots": 4, "max_runners": 10, "submit_cap": 3}}, monkeypatch)
    assert fake.submitted == ["default"] * 3 and len(answer["submitted"]) == 3
    # The submission is recorded: the next cycle counts it even before the scheduler lists it.
    run_cycle(tmp_path, fake, {"default": {"slots": 4, "max_runners": 3}}, monkeypatch)
    assert fake.submitted == ["default"] * 3


def test_more_runners_only_when_the_backlog_exceeds_free_slots(tmp_path, monkeypatch):
    store = staged_store(tmp_path, [f"s.j{i}" for i in range(3)])
    write_json(os.path.join(store.runners_dir(), "default-a.json"), {"class": "default"})
    busy = FakeConnector({"default-a": RunnerInfo("default-a", "1", RunnerState.RUNNING, None)})
    run_cycle(tmp_path, busy, {"default": {"slots": 4, "max_runners": 2}}, monkeypatch)
    assert busy.submitted == []          # 3 ready, 4 free slots
    staged_store(tmp_path, [f"s.k{i}" for i in range(3)])
    run_cycle(tmp_path, busy, {"default": {"slots": 4, "max_runners": 2}}, monkeypatch)
    assert busy.submitted == ["default"]  # 6 ready > 4 free


def test_classes_get_their_own_runners(tmp_path, monkeypatch):
    staged_store(tmp_path, ["s.cpu"], "default")
    staged_store(tmp_path, ["s.gpu"], "gpu")
    fake = FakeConnector()
    run_cycle(tmp_path, fake, {"default": {}, "gpu": {"gres": "gpu:1"}}, monkeypatch)
    assert sorted(fake.submitted) == ["default", "gpu"]


def test_claims_of_a_vanished_runner_are_requeued(tmp_path, monkeypatch):
    store = staged_store(tmp_path, ["s.j1"])
    assert store.claim("default", "s.j1", "default-gone")
    answer = run_cycle(tmp_path, FakeConnector(), {}, monkeypatch, in_flight=["s.j1"])
    assert answer["requeued"][0]["outcome"] == "requeued"
    assert answer["states"] == {"s.j1": JobState.QUEUED}


def test_a_pending_runner_with_claims_is_left_alone(tmp_path, monkeypatch):
    store = staged_store(tmp_path, ["s.j1"])
    assert store.claim("default", "s.j1", "default-live")
    fake = FakeConnector({"default-live": RunnerInfo("default-live", "7", RunnerState.PENDING, None)})
    answer = run_cycle(tmp_path, fake, {}, monkeypatch, in_flight=["s.j1"])
    assert answer["requeued"] == [] and answer["states"] == {"s.j1": "running"}


def test_collected_jobs_of_this_submitter_only_are_removed(tmp_path, monkeypatch):
    store = staged_store(tmp_path, ["s.mine", "t.theirs", "s.held"])
    for job_id in ("s.mine", "t.theirs", "s.held"):
        store.claim("default", job_id, "r")
        store.finish("r", job_id, FinishedRecord(rc=0))
    answer = run_cycle(tmp_path, FakeConnector(), {}, monkeypatch, in_flight=["s.held"])
    assert answer["removed"] == ["s.mine"]
    assert [item["id"] for item in answer["finished"]] == ["s.held"]
    assert set(store.states()) == {"t.theirs", "s.held"}


def test_a_running_job_is_answered_with_the_runner_of_the_same_listing(tmp_path, monkeypatch):
    """A job that ends while the cycle goes on (a trivial job, a cycle of many) was once
    answered running on no runner: the runners' folders were listed a second time, when
    it was no longer in any.  The submitter logged "running on runner None" and recorded
    the job running twice."""
    store = staged_store(tmp_path, ["s.j1", "s.j2"])
    assert store.claim("default", "s.j1", "default-live")
    live = FakeConnector({"default-live": RunnerInfo("default-live", "7", RunnerState.RUNNING, None)})
    listed = JobStore.states

    def states_then_the_job_ends(self, *args, **kwargs):
        found = listed(self, *args, **kwargs)
        if self.claimed_jobs("default-live"):
            self.finish("default-live", "s.j1", FinishedRecord(rc=0))
        return found

    monkeypatch.setattr(JobStore, "states", states_then_the_job_ends)
    answer = run_cycle(tmp_path, live, {}, monkeypatch, in_flight=["s.j1", "s.j2"])
    assert answer["states"] == {"s.j1": JobState.RUNNING, "s.j2": JobState.QUEUED}
    assert answer["claimed_by"] == {"s.j1": "default-live"}
