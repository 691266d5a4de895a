"""The runner as a local process: slots, idle exit, and losing it at the worst moment."""
import json
import os
import signal
import time
from collections import Counter
from datetime import datetime
from pathlib import Path

from dropbox_runner.on_hpc.jobstore import JobStore
from helpers import drain, drop, wait_until

from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport


def ledger_job(config, number, seconds):
    return {"script": "ledger", "args": {"seconds": seconds}, "cache": False,
            "output_map": {"out": str(Path(config.dropbox).parent / "outputs" / f"o{number}.txt")}}


def wait_for_running_job(config, timeout=20):
    """Cycle until some job is claimed; return the pid of the runner that holds it."""
    workspace = Path(config.workspace)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        run_once(config, LocalTransport())
        for claimed in (workspace / "claimed").glob("*/*"):
            alive = workspace / "runners" / f"{claimed.parent.name}.alive.json"
            if alive.exists() and JobStore(str(workspace)).claim_of(claimed.name, claimed.parent.name):
                return json.loads(alive.read_text())["pid"]
        time.sleep(0.1)
    raise AssertionError("no job started")


def test_slots_run_jobs_at_once_in_one_runner(config):
    names = [f"p{i}.job" for i in range(4)]
    for i, name in enumerate(names):
        drop(config, name, ledger_job(config, i, 1))
    results = drain(config, names)
    blocks = [results[name]["job"] for name in names]
    assert len({block["runner"] for block in blocks}) == 1
    # Results give whole seconds: jobs started together differ by at most a second or two
    # (under load); one slot at a time would spread these 1-second jobs over 3 or more.
    starts = [datetime.fromisoformat(block["start"]).timestamp() for block in blocks]
    assert max(starts) - min(starts) <= 2.0


def test_an_idle_runner_leaves(config):
    drop(config, "a.job", ledger_job(config, 0, 0))
    drain(config, ["a.job"])
    runners = Path(config.workspace) / "runners"
    wait_until(lambda: not list(runners.glob("*.alive.json")), 10, 0.2, "the runner to leave after its idle timeout")


def test_a_sigkilled_runner_loses_no_job_and_runs_none_twice(config):
    drop(config, "k.job", ledger_job(config, 0, 2))
    os.kill(wait_for_running_job(config), signal.SIGKILL)
    block = drain(config, ["k.job"], timeout=60)["k.job"]["job"]
    assert block["status"] == "ok" and block["attempts"] == 2
    time.sleep(2.5)   # long enough for an orphaned first run to have finished, had it survived
    assert Counter((Path(config.dropbox).parent / "ledger").read_text().split()) == {block["id"]: 1}


def test_a_terminated_runner_hands_its_jobs_back(config):
    drop(config, "t.job", ledger_job(config, 0, 2))
    os.kill(wait_for_running_job(config), signal.SIGTERM)
    block = drain(config, ["t.job"], timeout=60)["t.job"]["job"]
    assert block["status"] == "ok" and block["attempts"] == 2
    assert Counter((Path(config.dropbox).parent / "ledger").read_text().split()) == {block["id"]: 1}


def test_interrupted_too_often_gives_an_error_result(config_factory):
    config = config_factory(max_attempts=1)
    drop(config, "x.job", ledger_job(config, 0, 5))
    os.kill(wait_for_running_job(config), signal.SIGKILL)
    block = drain(config, ["x.job"], timeout=30)["x.job"]["job"]
    assert block["status"] == "error" and "interrupted 1 times" in block["message"]
    assert not (Path(config.dropbox).parent / "outputs" / "o0.txt").exists()


def test_runner_per_job_gives_every_job_its_own_runner(config_factory):
    config = config_factory(classes={"default": {"runner_per_job": True, "idle_timeout": 2}})
    names = [f"solo{i}.job" for i in range(4)]
    for i, name in enumerate(names):
        drop(config, name, ledger_job(config, i, 0))
    results = drain(config, names)
    runners = {results[name]["job"]["runner"] for name in names}
    assert len(runners) == 4 and all(results[name]["job"]["status"] == "ok" for name in names)


RECORDING_RUNNER = """
import json, os, sys, time
from dropbox_runner.on_hpc import batchfile, runner
from dropbox_runner.on_hpc.jobstore import JobStore

if os.environ.get("SLOW_SYNC"):     # a disk whose journal commits take this long
    sync_files = batchfile.sync_files
    batchfile.sync_files = lambda paths: time.sleep(float(os.environ["SLOW_SYNC"])) or sync_files(paths)

events = []
claim, finish_many = JobStore.claim, JobStore.finish_many
JobStore.claim = lambda store, *args: events.append(["start", args[1], time.time()]) or claim(store, *args)
JobStore.finish_many = lambda store, runner_id, ended: (
    events.append(["record", [job_id for job_id, _ in ended], time.time()]) or finish_many(store, runner_id, ended))
runner.Runner({"id": "default-1-a", "class": "default", "root": sys.argv[1], "scheduler": "local",
               "slots": int(sys.argv[2]), "idle_timeout": 0}).run()
print(json.dumps(events))
"""


def run_recording_runner(root, scripts, slots, slow_sync=0.0):
    """Run a runner over jobs with these scripts (job id -> script) until it leaves;
    return its claims and records in order, as ``[kind, job id(s), time]``.  With
    ``slow_sync``, each batch's data sync takes that many seconds more."""
    import subprocess
    import sys

    from dropbox_runner.on_hpc.files import write_json

    store = JobStore(str(root))
    store.ensure_layout()
    for job_id, script in scripts.items():
        os.makedirs(store.job_dir(job_id))
        write_json(os.path.join(store.job_dir(job_id), "job.json"), {"id": job_id, "class": "default"})
        Path(store.job_dir(job_id), "job.sh").write_text("#!/bin/sh\n" + script + "\n")
        store.make_ready(job_id, store.states())
    env = dict(os.environ, SLOW_SYNC=str(slow_sync)) if slow_sync else None
    done = subprocess.run([sys.executable, "-c", RECORDING_RUNNER, str(root), str(slots)], capture_output=True,
                          text=True, timeout=60, check=True, env=env)
    assert sorted(store.states().items()) == [(job_id, "done") for job_id in sorted(scripts)]
    return json.loads(done.stdout.splitlines()[-1])


def test_a_freed_slot_is_refilled_before_the_ended_job_is_recorded(tmp_path):
    """The record's sync (two syncfs) ran while the freed slot stood empty; the next job
    now runs during it."""
    events = run_recording_runner(tmp_path, {"j1": "true", "j2": "true"}, slots=1)
    assert [event[:2] for event in events][:2] == [["start", "j1"], ["start", "j2"]]
    assert [job for kind, jobs, _ in events if kind == "record" for job in jobs] == ["j1", "j2"]


def test_jobs_keep_starting_while_a_slow_disk_records_the_ones_that_ended(tmp_path):
    """A batch's syncs (two syncfs, 3 ms each on ext4 with a journal, far more on a busy
    shared filesystem) blocked the loop, and every slot that freed meanwhile stayed empty.
    With each sync made 1 s slower, 10 jobs of 50 ms through one slot took 4.5 s to
    start that way; the ends that come while a batch is written gather for the next."""
    jobs = [f"q{n:02d}" for n in range(10)]
    events = run_recording_runner(tmp_path, {job_id: "sleep 0.05" for job_id in jobs}, slots=1, slow_sync=1.0)
    starts = [at for kind, _, at in events if kind == "start"]
    records = [recorded for kind, recorded, _ in events if kind == "record"]
    assert len(starts) == 10 and max(starts) - min(starts) < 0.9, starts
    assert sorted(job for recorded in records for job in recorded) == jobs
    assert 2 <= len(records) <= 3, records      # the first ends, then the rest, gathered during its sync


def test_jobs_ending_one_after_another_are_recorded_together_and_soon(tmp_path):
    """Short jobs end one at a time, each in its own pass of the runner's loop, and each
    pass recorded its one end: two syncfs a job, which on ext4 with a journal cost 0.8 s
    of a 3.3 s burst of 1000 jobs.  Ends are now recorded together, but no later than
    RECORD_SECONDS after the first of them, even while a long job holds another slot."""
    from dropbox_runner.on_hpc.runner import RECORD_SECONDS

    short = [f"s{n:02d}" for n in range(30)]
    events = run_recording_runner(tmp_path, {"long": "sleep 2", **{job_id: "true" for job_id in short}}, slots=2)
    records = [(jobs, at) for kind, jobs, at in events if kind == "record"]
    assert sorted(job for jobs, _ in records for job in jobs) == sorted(short + ["long"])
    assert len(records) <= 6, records          # was one per short job
    long_started = next(at for kind, job, at in events if kind == "start" and job == "long")
    starts = {job: at for kind, job, at in events if kind == "start"}
    for jobs, at in records:
        if "long" not in jobs:                 # recorded while the long job still ran
            assert at < long_started + 1.5
            assert at - min(starts[job] for job in jobs) < RECORD_SECONDS + 0.5


COUNTING_RUNNER = """
import json, os, sys
from dropbox_runner.on_hpc import batchfile, jobstore, runner

counts = {"makedirs": 0, "cancel looks": 0, "largest read": 0}
makedirs, cancel_requested, real_open = os.makedirs, jobstore.JobStore.cancel_requested, open

def counting_makedirs(*args, **kwargs):
    counts["makedirs"] += 1
    return makedirs(*args, **kwargs)

def counting_cancel(store, job_id):
    counts["cancel looks"] += 1
    return cancel_requested(store, job_id)

class Reads:
    def __init__(self, handle):
        self.handle = handle
    def __enter__(self):
        return self
    def __exit__(self, *exc):
        return self.handle.__exit__(*exc)
    def fileno(self):
        return self.handle.fileno()
    def read(self, size=-1):
        counts["largest read"] = max(counts["largest read"], size)
        return self.handle.read(size)

jobstore.os.makedirs = counting_makedirs
jobstore.JobStore.cancel_requested = counting_cancel
batchfile.open = lambda *args, **kwargs: Reads(real_open(*args, **kwargs))
runner.Runner({"id": "default-1-a", "class": "default", "root": sys.argv[1], "scheduler": "local",
               "slots": 4, "idle_timeout": 0}).run()
print(json.dumps(counts))
"""


def test_a_runner_does_no_work_per_job_for_what_is_the_same_for_every_job(tmp_path):
    """Per job, a runner made the claimed and done folders again (two system calls each),
    looked for a cancel of every running job in every pass of its loop (passes come as
    often as jobs end), and read each job.json into a 16 MiB buffer: a runner's CPU per job
    decides how fast it starts jobs where they share the machine's cores with it."""
    import subprocess
    import sys

    from dropbox_runner.on_hpc.files import write_json

    store = JobStore(str(tmp_path))
    store.ensure_layout()
    jobs = [f"j{n:02d}" for n in range(40)]
    for job_id in jobs:
        os.makedirs(store.job_dir(job_id))
        write_json(os.path.join(store.job_dir(job_id), "job.json"), {"id": job_id, "class": "default"})
        Path(store.job_dir(job_id), "job.sh").write_text("true\n")
        store.make_ready(job_id, store.states())
    os.rmdir(store.done_dir())      # made again by the first job that ends
    done = subprocess.run([sys.executable, "-c", COUNTING_RUNNER, str(tmp_path)], capture_output=True, text=True,
                          timeout=60, check=True)
    counts = json.loads(done.stdout.splitlines()[-1])
    assert sorted(store.states().items()) == [(job_id, "done") for job_id in jobs]
    assert counts["makedirs"] <= 2                  # the runner's claimed folder, done/ once
    assert counts["cancel looks"] < len(jobs)
    assert 0 < counts["largest read"] < 1000
