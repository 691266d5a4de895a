"""One submitter cycle's work on the head node, in one remote command.

The submitter sends what it knows (the jobs it just staged, every job it still holds) and
gets back everything it needs (which of its jobs are done, with their records; which are
missing; what runners exist), so a cycle costs one round trip whatever the number of jobs.
"""
import os
import sys
import time
import uuid

from .files import listdir, read_json, write_json
from .jobstore import ABSENT, DONE, JobStore
from .schedulers import ENDING, PENDING, RunnerInfo, SchedulerUnavailable, connector

# A runner submitted this recently is counted as pending even before the scheduler (or,
# for local runners, the runner itself) reports it, so a crash or a slow scheduler between
# the submission and the first listing can never cause a second submission.
SUBMIT_GRACE_SECONDS = 120
MAX_WAIT_SECONDS = 300
WAIT_INTERVAL_SECONDS = 0.25


def cycle(request):
    store = JobStore(request["root"])
    store.ensure_layout()
    sched = connector(request["scheduler"], store)
    in_flight = sorted(set(request.get("in_flight", [])))
    states = store.states()
    for job_id in request.get("cancel", []):
        states[job_id] = store.cancel(job_id, states)
    for job_id in in_flight:
        # Idempotent: queues what was just staged, leaves the rest where it stands.
        states[job_id] = store.make_ready(job_id, states)

    scheduler_ok = True
    try:
        runners = sched.list_runners()
    except SchedulerUnavailable as error:
        scheduler_ok = False
        runners = sched.last_known_runners()
        sys.stderr.write("scheduler unavailable, keeping last known state: %s\n" % error)

    requeued, submitted = [], []
    if scheduler_ok:
        requeued = requeue_lost_claims(store, sched, runners, request)
        if requeued:
            states = store.states()
        runners = with_recent_submissions(store, runners)
        for job_class, settings in sorted(request.get("classes", {}).items()):
            runner = ensure_runner(store, sched, runners, job_class, settings, request)
            if runner:
                submitted.append(runner)
    else:
        runners = with_recent_submissions(store, runners)

    finished = [{"id": job_id, "record": read_json(store.finished_path(job_id), {})}
                for job_id in in_flight if states.get(job_id) == DONE]
    removed = remove_collected(store, states, request["submitter"], in_flight)
    held = set(in_flight)
    return {
        "states": {job_id: states.get(job_id, ABSENT) for job_id in in_flight},
        "claimed_by": {job_id: runner_id for runner_id in store.runners_with_claims()
                       for job_id in store.claimed_jobs(runner_id) if job_id in held},
        "finished": finished,
        "removed": removed,
        "requeued": requeued,
        "submitted": submitted,
        "scheduler_ok": scheduler_ok,
        "runners": [describe_runner(store, info) for info in sorted(runners.values())],
        "counts": count_states(states),
    }


def remove_collected(store, states, submitter, in_flight):
    """Done jobs of this submitter that it no longer holds have been collected."""
    prefix = submitter + "."
    held = set(in_flight)
    removed = []
    for job_id, state in sorted(states.items()):
        if state == DONE and job_id.startswith(prefix) and job_id not in held:
            store.remove(job_id)
            removed.append(job_id)
    return removed


def status(request):
    """What ``dropbox-runner status`` shows about the cluster side."""
    store = JobStore(request["root"])
    store.ensure_layout()
    sched = connector(request["scheduler"], store)
    try:
        runners, scheduler_ok = sched.list_runners(), True
    except SchedulerUnavailable:
        runners, scheduler_ok = sched.last_known_runners(), False
    runners = with_recent_submissions(store, runners)
    return {
        "scheduler_ok": scheduler_ok,
        "runners": [describe_runner(store, info) for info in sorted(runners.values())],
        "counts": count_states(store.states()),
    }


def wait(request):
    """Return as soon as a job of this submitter is done, or after a bounded wait.

    The watch daemon keeps this one command open while jobs run, so results come back
    within moments of finishing while the head node sees a single quiet connection
    instead of a poll every few seconds.
    """
    store = JobStore(request["root"])
    prefix = request["submitter"] + "."
    ignore = set(request.get("ignore", []))
    deadline = time.time() + min(float(request.get("timeout", 30)), MAX_WAIT_SECONDS)
    while True:
        done = [job_id for job_id in listdir(store.done_dir())
                if job_id.startswith(prefix) and job_id not in ignore]
        if done or time.time() >= deadline:
            return {"done": done}
        time.sleep(WAIT_INTERVAL_SECONDS)


def requeue_lost_claims(store, sched, runners, request):
    """Jobs claimed by a runner that is gone (or silent too long) go back to ready."""
    stale_after = request.get("heartbeat_timeout", 300)
    requeued = []
    for runner_id in store.runners_with_claims():
        info = runners.get(runner_id)
        alive_path = os.path.join(store.runners_dir(), runner_id + ".alive.json")
        silent = _age(alive_path) > stale_after
        if info is not None and not silent:
            continue
        if info is not None and silent:
            sched.cancel([info.sched_id])
        reason = "runner %s %s" % (runner_id, "stopped answering" if info else "is gone")
        for job_id in store.claimed_jobs(runner_id):
            claim = read_json(os.path.join(store.job_dir(job_id), "claim.json"), {})
            sched.kill_leftovers(job_id, claim)
            outcome = store.release(runner_id, job_id, reason, request.get("max_attempts", 3))
            requeued.append({"id": job_id, "outcome": outcome, "reason": reason})
        if info is None:
            store.forget_runner(runner_id)
    return requeued


def with_recent_submissions(store, runners):
    """Add runners whose submission is recorded but not yet visible, as pending."""
    merged = dict(runners)
    for name in listdir(store.runners_dir()):
        if not name.endswith(".json") or name.endswith(".alive.json") or name.startswith("squeue"):
            continue
        runner_id = name[: -len(".json")]
        record = read_json(os.path.join(store.runners_dir(), name), {})
        if runner_id in merged or not record:
            continue
        if time.time() - record.get("submitted_at", 0) < SUBMIT_GRACE_SECONDS:
            merged[runner_id] = _pending(runner_id, record)
        elif not store.claimed_jobs(runner_id):
            store.forget_runner(runner_id)
    return merged


def ensure_runner(store, sched, runners, job_class, settings, request):
    """Submit at most one runner for a class, and only when ready work needs it."""
    ready = store.ready_jobs(job_class)
    if not ready:
        return None
    live = [info for info in runners.values()
            if _runner_class(store, info.runner_id) == job_class and info.state != ENDING]
    if live:
        if len(live) >= settings.get("max_runners", 1):
            return None
        free = 0
        for info in live:
            busy = len(store.claimed_jobs(info.runner_id))
            free += max(0, settings.get("slots", 1) - busy)
        if len(ready) <= free and not _needs_fresh_runner(store, ready, live):
            return None
    return submit_runner(store, sched, job_class, settings, request)


def submit_runner(store, sched, job_class, settings, request):
    runner_id = "%s-%s-%s" % (job_class, time.strftime("%Y%m%dT%H%M%S"), uuid.uuid4().hex[:6])
    spec = {
        "id": runner_id,
        "class": job_class,
        "root": store.root,
        "scheduler": request["scheduler"],
        "slots": settings.get("slots", 1),
        "idle_timeout": settings.get("idle_timeout", 60),
        "time_limit": settings.get("time_limit"),
        "max_attempts": request.get("max_attempts", 3),
        "resources": settings,
        "submitted_at": time.time(),
    }
    spec_path = os.path.join(store.runners_dir(), runner_id + ".json")
    write_json(spec_path, spec)   # the intent, before the submission
    env = dict(os.environ)
    env["PYTHONPATH"] = request["pythonpath"]
    argv = [request.get("python") or sys.executable, "-m", "on_hpc", "run", spec_path]
    try:
        spec["sched_id"] = sched.submit(spec, spec_path, argv, env)
    except Exception:
        os.unlink(spec_path)
        raise
    write_json(spec_path, spec)
    return {"runner": runner_id, "class": job_class, "sched_id": spec["sched_id"]}


def describe_runner(store, info):
    return {"runner": info.runner_id, "sched_id": info.sched_id, "state": info.state,
            "time_left": info.time_left, "class": _runner_class(store, info.runner_id),
            "jobs": len(store.claimed_jobs(info.runner_id))}


def count_states(states):
    counts = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def _needs_fresh_runner(store, ready, live):
    """True when some ready job expects more time than any live runner has left."""
    longest_left = max(float("inf") if info.time_left is None else info.time_left for info in live)
    if longest_left == float("inf"):
        return False
    return any((store.job_meta(job_id).get("expected_seconds") or 0) > longest_left for job_id in ready)


def _runner_class(store, runner_id):
    return read_json(os.path.join(store.runners_dir(), runner_id + ".json"), {}).get(
        "class", runner_id.split("-")[0])


def _pending(runner_id, record):
    return RunnerInfo(runner_id, record.get("sched_id", ""), PENDING, record.get("time_limit"))


def _age(path):
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return 0.0
