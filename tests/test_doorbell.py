"""An idle runner starts work the moment a cycle queues it (``on_hpc/doorbell.py``), and
a ring never blocks, follows a link or writes anywhere but a listening runner's FIFO."""
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from dropbox_runner.on_hpc import doorbell, headnode
from dropbox_runner.on_hpc.files import write_json
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import RunnerState
from dropbox_runner.on_hpc.schedulers import RunnerInfo
from helpers import wait_until
from test_on_hpc import FakeConnector

# A runner whose poll is half a minute: only a ring can make it start a job sooner.
SLOW_POLLING_RUNNER = """
import sys
from dropbox_runner.on_hpc import runner
runner.POLL_SECONDS = 30
runner.Runner({"id": "default-1-a", "class": "default", "root": sys.argv[1], "scheduler": "local",
               "slots": 1, "idle_timeout": 60}).run()
"""


def stage(store, job_id):
    os.makedirs(store.job_dir(job_id))
    write_json(os.path.join(store.job_dir(job_id), "job.json"), {"id": job_id, "class": "default"})
    Path(store.job_dir(job_id), "job.sh").write_text("#!/bin/sh\ntrue\n")


def test_an_idle_runner_starts_what_a_cycle_queues_at_once(tmp_path, monkeypatch):
    store = JobStore(str(tmp_path))
    store.ensure_layout()
    runner = subprocess.Popen([sys.executable, "-c", SLOW_POLLING_RUNNER, str(tmp_path)])
    try:
        bell = Path(store.runners_dir(), "default-1-a" + doorbell.SUFFIX)
        wait_until(bell.exists, 20, 0.05, "the runner to install its doorbell")
        time.sleep(0.3)         # into its first nap
        stage(store, "s.j1")
        live = FakeConnector({"default-1-a": RunnerInfo("default-1-a", "1", RunnerState.RUNNING, None)})
        monkeypatch.setattr(headnode, "connector", lambda name, root: live)
        queued = time.monotonic()
        headnode.cycle({"root": str(tmp_path), "scheduler": "fake", "submitter": "s", "in_flight": ["s.j1"],
                        "classes": {"default": {"slots": 1}}})
        wait_until(lambda: store.states().get("s.j1") == "done", 10, 0.02, "the queued job to run")
        assert time.monotonic() - queued < 5, "the runner waited for its next poll"
        assert live.submitted == []
    finally:
        runner.send_signal(signal.SIGTERM)
        runner.wait(timeout=30)
    assert not bell.exists(), "the runner left its doorbell behind"


def test_a_ring_never_blocks_and_writes_only_into_a_listening_fifo(tmp_path):
    runners = tmp_path / "runners"
    runners.mkdir()
    os.mkfifo(runners / ("gone" + doorbell.SUFFIX))          # its runner died: no reader
    (runners / ("planted" + doorbell.SUFFIX)).write_text("a job's file\n")
    outside = tmp_path / "outside"
    outside.write_text("not the runner's\n")
    (runners / ("linked" + doorbell.SUFFIX)).symlink_to(outside)
    listening = doorbell.Doorbell.install(str(runners), "live")
    try:
        ringing = threading.Thread(target=doorbell.ring, args=(str(runners),), daemon=True)
        ringing.start()
        ringing.join(timeout=5)
        assert not ringing.is_alive(), "the ring blocked"
        assert os.read(listening.fd, 16) == b"\0"
    finally:
        listening.close()
    assert (runners / ("planted" + doorbell.SUFFIX)).read_text() == "a job's file\n"
    assert outside.read_text() == "not the runner's\n"


def test_a_runner_installs_its_own_fifo_over_whatever_was_planted_there(tmp_path):
    """A link planted where the doorbell goes is replaced, never followed."""
    outside = tmp_path / "outside"
    outside.write_text("not the runner's\n")
    planted = tmp_path / ("r" + doorbell.SUFFIX)
    planted.symlink_to(outside)
    bell = doorbell.Doorbell.install(str(tmp_path), "r")
    try:
        assert bell is not None and not planted.is_symlink() and planted.is_fifo()
        doorbell.ring(str(tmp_path))
        bell.clear()
    finally:
        bell.close()
    assert outside.read_text() == "not the runner's\n"


def test_without_a_place_for_a_fifo_a_runner_only_polls(tmp_path):
    assert doorbell.Doorbell.install(str(tmp_path / "missing"), "r") is None
