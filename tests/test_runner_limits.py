"""The runner's sense of time, GPUs and signals, run as its own process on the local scheduler
(fast; the same code runs inside Slurm in test_slurm_runners.py)."""
import os
import signal
import subprocess
import sys
import time

import pytest
from dropbox_runner.on_hpc.files import read_json, write_json
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import JobState
from helpers import wait_until


@pytest.fixture
def store(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    return store


def stage(store, job_id, script, expected=None, job_class="default"):
    folder = store.job_dir(job_id)
    os.makedirs(folder)
    with open(os.path.join(folder, "job.sh"), "w") as handle:
        handle.write("#!/bin/bash\n" + script + "\n")
    write_json(os.path.join(folder, "job.json"),
               {"id": job_id, "class": job_class, "expected_seconds": expected})
    assert store.make_ready(job_id, {}) == JobState.QUEUED
    return job_id


def start_runner(store, env=None, **settings):
    spec = {"id": "default-20250101T000000-abcdef", "class": "default", "root": store.root,
            "scheduler": "local", "slots": 1, "idle_timeout": 1, "time_limit": None,
            "warn_seconds": 60, "max_attempts": 3, "resources": {}}
    spec.update(settings)
    path = os.path.join(store.runners_dir(), spec["id"] + ".json")
    write_json(path, spec)
    log = open(os.path.join(store.runners_dir(), spec["id"] + ".log"), "wb")
    process = subprocess.Popen([sys.executable, "-m", "dropbox_runner.on_hpc", "run", path],
                               stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, **(env or {})))
    log.close()
    process.log = os.path.join(store.runners_dir(), spec["id"] + ".log")
    process.runner_id = spec["id"]
    return process


def finish(process, timeout=30):
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    with open(process.log) as handle:
        return handle.read()


def finish_with_claims(store, process, timeout=30):
    """``finish``, and the claims the runner recorded meanwhile (job id -> claim): its journal
    goes when it ends, so it is read until then."""
    claims = {}
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        claims.update(store.runner_claims(process.runner_id))
        time.sleep(0.05)
    return finish(process, timeout=max(1, deadline - time.monotonic())), claims


def test_stops_before_its_time_limit_and_hands_its_job_back(store):
    job = stage(store, "sub.long", "sleep 30")
    started = time.monotonic()
    runner = start_runner(store, time_limit=4, warn_seconds=2)
    log = finish(runner)
    assert time.monotonic() - started < 10
    assert "released %s: requeued" % job in log
    assert store.ready_jobs("default") == [job]
    [entry] = read_json(os.path.join(store.job_dir(job), "interruptions.json"))
    assert "reached its time limit" in entry["reason"] and entry["attempt"] == 1


def test_refuses_a_job_longer_than_any_such_runner_can_give(store):
    job = stage(store, "sub.toolong", "true", expected=20)
    log = finish(start_runner(store, time_limit=10, warn_seconds=2))
    assert "refused %s" % job in log
    record = read_json(store.finished_path(job))
    assert record["rc"] == -1 and "expected_time 20s exceeds" in record["error"] and "= 8s" in record["error"]
    assert store.states() == {job: "done"}


def test_does_not_start_a_job_it_could_not_finish_and_leaves_for_a_fresh_runner(store):
    first = stage(store, "sub.a", "sleep 3")
    os.utime(os.path.join(store.ready_dir("default"), first), (1, 1))     # first in line
    second = stage(store, "sub.b", "true", expected=6)
    log = finish(start_runner(store, time_limit=10, warn_seconds=2))
    assert "finished %s rc=0" % first in log
    assert "not starting %s here: it expects 6s" % second in log
    assert "leaving for a fresh runner" in log
    assert store.ready_jobs("default") == [second]
    assert not os.path.exists(store.finished_path(second))


def test_each_job_gets_its_own_gpus(store):
    jobs = [stage(store, "sub.g%d" % n, 'echo "$CUDA_VISIBLE_DEVICES" > gpus; sleep 1') for n in range(4)]
    log, claimed = finish_with_claims(store, start_runner(store, env={"CUDA_VISIBLE_DEVICES": "0,1"}, slots=4))
    assert "gpus 0,1" in log                              # never more jobs than GPUs
    seen = [open(os.path.join(store.job_dir(job), "gpus")).read().strip() for job in jobs]
    assert sorted(seen) == ["0", "0", "1", "1"]
    claims = [claimed[job] for job in jobs]
    assert sorted(c["gpus"][0] for c in claims) == ["0", "0", "1", "1"]


@pytest.mark.parametrize("signum", [signal.SIGUSR1, signal.SIGTERM])
def test_a_warning_or_sigterm_ends_the_jobs_and_hands_them_back(store, signum):
    jobs = [stage(store, "sub.s%d" % n, "sleep 60 & echo $! > child; wait") for n in range(2)]
    waiting = stage(store, "sub.w", "true")
    os.utime(os.path.join(store.ready_dir("default"), waiting), (time.time() + 60,) * 2)   # last
    runner = start_runner(store, slots=2)

    def written(job):      # exists and holds the pid: the job wrote it whole
        path = os.path.join(store.job_dir(job), "child")
        return os.path.exists(path) and open(path).read().strip().isdigit()
    wait_until(lambda: all(written(j) for j in jobs), 15)
    children = [int(open(os.path.join(store.job_dir(j), "child")).read()) for j in jobs]
    runner.send_signal(signum)
    log = finish(runner)
    for job in jobs:
        assert "released %s: requeued" % job in log
        [entry] = read_json(os.path.join(store.job_dir(job), "interruptions.json"))
        assert signal.Signals(signum).name in entry["reason"]
    assert sorted(store.ready_jobs("default")) == sorted(jobs + [waiting])   # nothing more claimed
    for pid in children:                  # the jobs' whole process groups ended
        wait_until(lambda pid=pid: not os.path.exists("/proc/%d" % pid) or _zombie(pid), 5)


def _zombie(pid):
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
