"""The runner policy against the real single-node Slurm of the ``slurm_cluster`` fixture: the head
node's cycle (``on_hpc cycle``) with the real Slurm connector, its sbatch and scancel.

Runners that must stay pending ask for ``--begin=now+1hour``; runners that must really run get
both of the node's GPUs, so a second one waits for resources.  These tests never skip.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from dropbox_runner.on_hpc import headnode
from dropbox_runner.on_hpc.files import write_json
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import JobState
from helpers import wait_until

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def slurm_env(slurm_cluster, monkeypatch):
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    yield slurm_cluster
    slurm_cluster.run("scancel", "-u", "root")
    slurm_cluster.wait_idle(60)


def stage(store, job_id, script="true\n", job_class="default"):
    folder = store.job_dir(job_id)
    os.makedirs(folder)
    Path(folder, "job.sh").write_text("#!/bin/sh\n" + script)
    write_json(os.path.join(folder, "job.json"), {"id": job_id, "class": job_class, "expected_seconds": 60})
    return job_id


def cycle(store, classes, in_flight=(), cancel=()):
    return headnode.cycle({"root": store.root, "scheduler": "slurm", "submitter": "sub",
                           "pythonpath": str(REPO), "python": sys.executable, "in_flight": list(in_flight),
                           "cancel": list(cancel), "max_attempts": 3, "classes": classes})


def our_jobs(slurm, state=None):
    """Slurm job ids of this workspace's runners (``dbr.`` names), optionally in one state."""
    argv = ["squeue", "-h", "-o", "%i|%j|%T"] + (["-t", state] if state else [])
    lines = [line.split("|") for line in slurm.run(*argv, timeout=30).stdout.split()]
    return sorted(job_id for job_id, name, _ in lines if name.startswith("dbr."))


def test_a_burst_of_1000_is_held_to_the_cycle_and_hourly_caps_and_drained_pending_runners_are_cancelled(
        slurm_env, tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    jobs = [stage(store, "sub.j%04d" % number) for number in range(1000)]
    classes = {"default": {"slots": 1, "max_runners": 50, "submit_cap": 4, "submit_per_hour": 10,
                           "extra_args": ["--begin=now+1hour"]}}
    counts = []
    for _ in range(4):
        answer = cycle(store, classes, jobs)
        counts.append(len(answer["submitted"]))
        assert not answer["errors"], answer["errors"]
    assert counts == [4, 4, 2, 0]                  # 4 a cycle, 10 in the hour, whatever the backlog
    pending = our_jobs(slurm_env, "PENDING")
    assert len(pending) == 10

    # One pending runner holds a claim (it would have started and taken a job): never cancelled.
    keeper = answer["runners"][0]
    assert store.claim("default", jobs[0], keeper["runner"])
    # The backlog drains: every other job is cancelled by its submitter.
    answer = cycle(store, classes, jobs, cancel=jobs[1:])
    assert answer["counts"].get(JobState.DONE) == 999
    cancelled = {runner["sched_id"] for runner in answer["cancelled_runners"]}
    assert len(cancelled) == 9 and keeper["sched_id"] not in cancelled
    wait_until(lambda: our_jobs(slurm_env) == [keeper["sched_id"]], timeout=60,
               what="only the runner with a claim left in squeue")
    assert cycle(store, classes, jobs)["cancelled_runners"] == []


def test_pending_surplus_is_cancelled_once_a_started_runner_took_the_work(slurm_env, tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    job = stage(store, "sub.long", script="sleep 20\n")
    # Each runner takes both GPUs: the first runs, the others wait for resources.
    classes = {"default": {"slots": 1, "max_runners": 3, "speculate": 3, "gres": "gpu:2",
                           "time_limit": 600, "idle_timeout": 60}}
    answer = cycle(store, classes, [job])
    assert len(answer["submitted"]) == 3
    running = wait_until(lambda: [runner for runner in store.runners_with_claims() if store.claimed_jobs(runner)],
                         timeout=90, what="a runner to start and claim the job")
    answer = cycle(store, classes, [job])
    cancelled = [runner["runner"] for runner in answer["cancelled_runners"]]
    assert len(cancelled) == 2 and running[0] not in cancelled
    wait_until(lambda: len(our_jobs(slurm_env)) == 1, timeout=60, what="the two pending runners gone")
    assert our_jobs(slurm_env, "RUNNING") == our_jobs(slurm_env)
    # The runner that holds the job finishes it.
    wait_until(lambda: cycle(store, classes, [job])["states"][job] == JobState.DONE, timeout=120, interval=2,
               what="the job to finish")


def test_cancel_pending_cancels_only_jobs_still_pending(slurm_env, tmp_path):
    """What makes the cancel safe against a runner that starts meanwhile: Slurm itself checks."""
    from dropbox_runner.on_hpc.sched_slurm import SlurmConnector
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    running = slurm_env.run("sbatch", "--parsable", "--job-name=dbr.test.running", "--chdir=" + str(tmp_path),
                            "--output=/dev/null", "--wrap=sleep 120", check=True).stdout.strip()
    waiting = slurm_env.run("sbatch", "--parsable", "--job-name=dbr.test.waiting", "--begin=now+1hour",
                            "--chdir=" + str(tmp_path), "--output=/dev/null", "--wrap=true", check=True).stdout.strip()
    wait_until(lambda: running in our_jobs(slurm_env, "RUNNING"), timeout=60, what="the first job running")
    asked = SlurmConnector(store).cancel_pending([running, waiting])
    assert sorted(asked) == sorted([running, waiting])
    wait_until(lambda: our_jobs(slurm_env) == [running], timeout=60, what="only the pending job cancelled")
    assert our_jobs(slurm_env, "RUNNING") == [running]
