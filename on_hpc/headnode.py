"""One submitter cycle's work on the head node, in one remote command.

The submitter sends what it knows (the jobs it just staged, every job it still holds) and
gets back everything it needs (which of its jobs are done, with their records; which are
missing; what runners exist), so a cycle costs one round trip whatever the number of jobs.

The scheduler is asked once per cycle (one ``squeue`` for Slurm).  What it says is the
truth about which runners exist; when it does not answer, the last listing is kept and
nothing is requeued, submitted or failed on the strength of a missing answer.
"""
import contextlib
import os
import sys
import time

from . import afterwards, coming, doorbell, policy, policy_state, sweep
from .batchfile import load_record
from .files import free_bytes, listdir, read_json, remove_tree, write_json
from .jobstore import JobStore
from .locks import FileLock
from .protocol import (
    ON_HPC_ARGV,
    START_ERROR_SUFFIX,
    CycleAnswer,
    CycleRequest,
    FinishedRecord,
    JobState,
    RunnerState,
    StatusRequest,
    WaitRequest,
    class_setting,
)
from .schedulers import (
    RunnerInfo,
    SchedulerUnavailable,
    SubmitFailed,
    connector,
    effective_warn_seconds,
    too_long_message,
    usable_seconds,
)

# A runner whose submission is recorded but that the scheduler does not list is counted
# as pending this long: a crash between ``sbatch`` and recording its job id, or an
# ``sbatch`` that timed out but may have worked, must not cause a second submission
# before the scheduler has had every chance to show the first.
SUBMIT_GRACE_SECONDS = 120
MAX_WAIT_SECONDS = 300
WAIT_INTERVAL_SECONDS = 0.25
GATHER_INTERVAL_SECONDS = 0.05      # ``wait`` for every job of a list: a wait under half a second
HEADNODE_RUNNER = "headnode"      # claims jobs the head node itself must end


def cycle(request, sched=None):
    """The whole cycle's work for one submitter: a CycleRequest in (as JSON), a
    CycleAnswer out (as JSON)."""
    request = CycleRequest.from_json(request)
    store = JobStore(request.root, remember_briefs=True)
    store.ensure_layout()
    sched = sched or connector(request.scheduler, store)
    in_flight = sorted(set(request.in_flight))
    claimed_by = {}
    states = store.states(claimed_by)
    for job_id in request.cancel:
        states[job_id] = store.cancel(job_id, states)
    known = set(states)
    unsent = set(request.unsent)
    for job_id in in_flight:
        if job_id in unsent and job_id not in states:
            # Its push failed half-way (a full disk): what arrived is removed, not queued;
            # the submitter sends it again when there is room.
            remove_tree(store.job_dir(job_id))
            states[job_id] = JobState.SUBMITTED
            continue
        # Idempotent: queues what was just staged, leaves the rest where it stands.
        states[job_id] = store.make_ready(job_id, states)
    arrived = [job_id for job_id in in_flight if job_id not in known and states[job_id] == JobState.QUEUED]
    if arrived:
        doorbell.ring(store.runners_dir())     # an idle runner here starts them now, not at its next poll
    coming.arrived(store, request.classes)     # what an early call announced is queued (or is not coming)

    answer = CycleAnswer()
    answer.errors.extend(afterwards.failures())
    # Submitters sharing a workspace take turns here, so two of them never both decide
    # that a class needs a runner.
    with workspace_lock(store):
        claimants = store.runners_with_claims()     # before the listing: see requeue_lost_claims
        try:
            runners = sched.list_runners()
        except SchedulerUnavailable as error:
            answer.scheduler_ok = False
            runners = sched.last_known_runners()
            answer.errors.append("scheduler unavailable, keeping the last known state: %s" % error)
            sys.stderr.write(answer.errors[-1] + "\n")
        answer.errors.extend(sched.problems)

        if answer.scheduler_ok:
            answer.requeued = requeue_lost_claims(store, sched, runners, request, claimants)
            runners = with_recent_submissions(store, runners, listing_ok=True,
                                              listed_at_once=sched.lists_at_submission)
            for job_class, settings in sorted(request.classes.items()):
                answer.refused += refuse_hopeless(store, job_class, settings)
                ensure = ensure_runner_per_job if settings.get("runner_per_job") else ensure_runner
                try:
                    new, dropped = ensure(store, sched, runners, job_class, settings, request, arrived)
                except SubmitFailed as error:
                    answer.errors.append("class %s: cannot submit a runner: %s" % (job_class, error))
                    sys.stderr.write(answer.errors[-1] + "\n")
                    new, dropped = getattr(error, "submitted", []), getattr(error, "cancelled", [])
                answer.submitted.extend(new)
                answer.cancelled_runners.extend(dropped)
                for runner in dropped:
                    runners.pop(runner["runner"], None)
                for runner in new:
                    runners[runner["runner"]] = RunnerInfo(
                        runner["runner"], runner["sched_id"], RunnerState.PENDING, settings.get("time_limit"))
        else:
            runners = with_recent_submissions(store, runners, listing_ok=False)
    answer.errors += start_errors(store)
    if answer.requeued or answer.refused:
        claimed_by = {}
        states = store.states(claimed_by)

    answer.finished = []
    for job_id in in_flight:
        if states.get(job_id) == JobState.DONE:
            record = read_finished_record(store, job_id, answer.errors)
            if record is not None:
                answer.finished.append({"id": job_id, "record": record})
    answer.removed = collected_jobs(states, request.submitter, in_flight) if request.remove_collected else []
    leaving = sweep.measure_leaving(store, answer.removed)
    answer.states = {job_id: states.get(job_id, JobState.ABSENT) for job_id in in_flight}
    answer.claimed_by = {job_id: claimed_by[job_id] for job_id in in_flight
                         if answer.states[job_id] == JobState.RUNNING and job_id in claimed_by}
    answer.runners = [describe_runner(store, info) for info in sorted(runners.values())]
    answer.counts = count_states(states)
    # What the trash holds is as good as free (a sweep is removing it): counted so that a
    # job is never refused as too big for room that is being freed (measured first, so a
    # sweep in between can only make it look roomier, and a push then meets a full disk:
    # the jobs wait a cycle).
    trash, free = sweep.trash_bytes(store) + sum(size for _, size in leaving.values()), free_bytes(store.root)
    answer.workspace_free_bytes = None if free is None else trash + free
    jobs_active = bool(answer.counts.get(JobState.QUEUED) or answer.counts.get(JobState.RUNNING))
    room_short = free is None or trash > free       # the trash holds more than is free beside it
    afterwards.later(lambda: remove_collected(store, leaving, jobs_active, room_short))
    return answer.to_json()


def read_finished_record(store, job_id, errors):
    """A done job's record; None (and an error line) when it cannot be read just now.

    A read that fails (NFS EIO, ESTALE, a permission glitch) is the filesystem's fault,
    not the job's: the job stays done and is reported again next cycle.  A record that
    reads but is not JSON was spoiled where the job could write: the job's fault."""
    try:
        return load_record(store.finished_path(job_id), job_id)
    except FileNotFoundError:
        return {"rc": -1, "error": "the run left no finished record"}
    except OSError as error:
        errors.append("%s: cannot read its finished record just now (%s); it is collected later" % (job_id, error))
        sys.stderr.write(errors[-1] + "\n")
        return None
    except ValueError as error:
        return {"rc": -1, "error": "its finished record is unreadable (%s)" % error}


@contextlib.contextmanager
def workspace_lock(store):
    lock = FileLock(os.path.join(store.runners_dir(), ".cycle.lock"))
    try:
        lock.acquire(blocking=True)
        yield
    finally:
        lock.release()


def start_errors(store):
    """Why runners could not start (a GPU class with no GPU to be found), each told once."""
    errors = []
    for name in listdir(store.runners_dir()):
        if name.endswith(START_ERROR_SUFFIX):
            path = os.path.join(store.runners_dir(), name)
            try:
                with open(path) as handle:
                    errors.append(handle.read(4096))
                os.unlink(path)
            except OSError:
                pass
    return errors


def collected_jobs(states, submitter, in_flight):
    """Done jobs of this submitter that it no longer holds have been collected."""
    prefix = submitter + "."
    held = set(in_flight)
    return [job_id for job_id, state in sorted(states.items())
            if state == JobState.DONE and job_id.startswith(prefix) and job_id not in held]


def remove_collected(store, leaving, jobs_active, room_short):
    """Move the collected jobs' folders to the trash (measured as they left, ``leaving``:
    not walked again there) and start the sweep, or put it off while jobs run
    (``sweep.start_when_quiet``); after the answer, in ``serve`` (``afterwards``)."""
    for job_id, (inode, size) in leaving.items():
        sweep.moved(store.remove(job_id), inode, size)
    sweep.start_when_quiet(store, jobs_active, room_short)


def status(request, sched=None):
    """What ``dropbox-runner status`` shows about the cluster side."""
    request = StatusRequest.from_json(request)
    store = JobStore(request.root)
    store.ensure_layout()
    sched = sched or connector(request.scheduler, store)
    try:
        runners, scheduler_ok = sched.list_runners(), True
    except SchedulerUnavailable:
        runners, scheduler_ok = sched.last_known_runners(), False
    runners = with_recent_submissions(store, runners, listing_ok=scheduler_ok,
                                      listed_at_once=sched.lists_at_submission, forget=False)
    return {
        "scheduler_ok": scheduler_ok,
        "runners": [with_node_use(store, describe_runner(store, info)) for info in sorted(runners.values())],
        "counts": count_states(store.states()),
    }


def with_node_use(store, described):
    nodes = node_use(store, described["runner"])
    if nodes:
        described["nodes"] = nodes
    return described


def node_use(store, runner_id):
    """What each node of a running runner holds and what its jobs booked there, from the
    nodes it recorded at its start and the claims of its jobs (read for status only)."""
    alive = read_json(os.path.join(store.runners_dir(), runner_id + ".alive.json"), {})
    nodes = dict((node["node"], dict(node)) for node in alive.get("nodes") or [])
    journal = store.runner_claims(runner_id)
    for job_id in store.claimed_jobs(runner_id):
        claim = store.claim_of(job_id, runner_id, journal)
        node, request = nodes.get(claim.get("node")), claim.get("request") or {}
        if node is None:
            continue
        node["jobs"] += 1
        for key, asked in (("cpus", "cpus"), ("memory_mb", "memory_mb"), ("gpus", "gpus")):
            node[key] = [node[key][0] + int(request.get(asked) or 0), node[key][1]]
    return list(nodes.values())


def wait(request):
    """Return as soon as a job of this submitter is done (or every job of
    ``request.every``: the daemon gathering finished jobs stops waiting once the last is
    done, or, with ``request.gather``, once its gathering time is over), or after a
    bounded wait.  One command does both the watch daemon's wait for a first job and its
    gathering after it: they were two, and a command's start is some 50 ms of CPU here.

    The watch daemon keeps this one command open while jobs run, so results come back
    within moments of finishing while the head node sees a single quiet connection
    instead of a poll every few seconds.
    """
    request = WaitRequest.from_json(request)
    store = JobStore(request.root)
    prefix = request.submitter + "."
    ignore, every = set(request.ignore), set(request.every)
    started = time.time()
    deadline = started + min(float(request.timeout), MAX_WAIT_SECONDS)
    gathered = None if request.gather is None else started + float(request.gather)
    while True:
        done = [job_id for job_id in listdir(store.done_dir())
                if job_id.startswith(prefix) and job_id not in ignore]
        now = time.time()
        answered = done and (not every or every <= set(done) or (gathered is not None and now >= gathered))
        if answered or now >= deadline:
            return {"done": done}
        time.sleep(GATHER_INTERVAL_SECONDS if every and (done or gathered is None) else WAIT_INTERVAL_SECONDS)


def requeue_lost_claims(store, sched, runners, request, claimants):
    """Jobs claimed by a runner that is gone (or silent too long) go back to ready.

    Only the ``claimants``, runners that held claims before ``runners`` was listed, can be
    taken for gone: a runner lists itself once started (a local one by its heartbeat
    file), so one that started and claimed its first job while the listing was being
    taken was in neither.  Its jobs were requeued while it ran them, and its heartbeat
    file removed with its records, so every later cycle took it for gone again (a fuzzer
    run saw its bystanders run twice, requeued twice from one live runner)."""
    stale_after = request.heartbeat_timeout
    requeued = []
    for runner_id in claimants:
        info = runners.get(runner_id)
        if runner_id == HEADNODE_RUNNER:
            info = None                      # a cycle died half-way through refusing
        alive_path = os.path.join(store.runners_dir(), runner_id + ".alive.json")
        silent = info is not None and info.state != RunnerState.PENDING and _age(alive_path) > stale_after
        if info is not None and not silent:
            continue
        if silent:
            sched.cancel([info.sched_id])
        state = "stopped answering" if info else "is gone (%s)" % _traces(store, runner_id)
        reason = "runner %s %s" % (runner_id, state)
        journal = store.runner_claims(runner_id)     # read before forget_runner removes it
        for job_id in store.claimed_jobs(runner_id):
            claim = store.claim_of(job_id, runner_id, journal)
            sched.kill_leftovers(job_id, claim)
            outcome = store.release(runner_id, job_id, reason, request.max_attempts, attempt=claim.get("attempt"))
            requeued.append({"id": job_id, "outcome": outcome, "reason": reason})
        if info is None:
            store.forget_runner(runner_id)
    return requeued


def _traces(store, runner_id):
    """What is left of a runner taken for gone, for its jobs' requeue reason: no heartbeat
    file when it left or never started, an old one when it died, a fresh one when it runs
    but the scheduler does not list it; the operator's first question, answered at once."""
    traces = []
    for what, suffix in (("record", ".json"), ("heartbeat", ".alive.json")):
        age = _age(os.path.join(store.runners_dir(), runner_id + suffix), missing=None)
        traces.append("no %s" % what if age is None else "%s %.0f s old" % (what, max(0.0, age)))
    return ", ".join(traces)


def with_recent_submissions(store, runners, listing_ok, listed_at_once=False, forget=True):
    """Add runners whose submission is recorded but that the scheduler does not list.

    A recorded runner counts as pending for SUBMIT_GRACE_SECONDS: the cycle that wrote
    the record may have died before ``sbatch`` returned, and a local runner lists itself
    only once it has started.  A scheduler that lists a job from the moment it is
    submitted (``listed_at_once``: Slurm) settles it sooner: a record with a scheduler id
    that a good listing does not show is of a runner that has ended.  Records of ended
    runners are dropped (with ``forget``) unless claims remain for the requeue.
    """
    merged = dict(runners)
    for name in listdir(store.runners_dir()):
        if not name.endswith(".json") or name.endswith(".alive.json") or name.startswith("squeue"):
            continue
        runner_id = name[: -len(".json")]
        if runner_id in merged:
            continue
        record = read_json(os.path.join(store.runners_dir(), name), {})
        if not record:
            continue
        recent = time.time() - record.get("submitted_at", 0) < SUBMIT_GRACE_SECONDS
        if not listing_ok or (recent and not (listed_at_once and record.get("sched_id"))):
            merged[runner_id] = _pending(runner_id, record)
        elif forget and not store.claimed_jobs(runner_id):
            store.forget_runner(runner_id)
    return merged


def refuse_hopeless(store, job_class, settings):
    """End ready jobs that expect more time than a fresh runner of their class has.

    The submitter refuses such jobs at intake; this catches the ones queued before the
    class's limit was lowered, so they end with a clear error instead of waiting forever
    (or having runner after runner submitted for them).
    """
    usable = usable_seconds(settings.get("time_limit"), class_setting(settings, "warn_seconds"))
    if usable is None:
        return []
    refused = []
    for job_id in store.ready_jobs(job_class, ordered=False):
        expected = _expected_seconds(store.job_brief(job_id))
        if expected <= usable:
            continue
        if not store.claim(job_class, job_id, HEADNODE_RUNNER):
            continue
        message = too_long_message(expected, job_class, settings.get("time_limit"), usable) + "; the job was not run"
        store.finish(HEADNODE_RUNNER, job_id, FinishedRecord(error=message, start=time.time()))
        refused.append({"id": job_id, "reason": message})
    return refused


def ensure_runner(store, sched, runners, job_class, settings, request, arrived=(), coming=(), may_cancel=True):
    """The class's runners as ``policy.decide`` wants them: submit what the backlog calls
    for, cancel pending runners it no longer needs.  ``arrived``: the jobs this cycle made
    ready (of any class).  ``coming``: expected seconds of jobs about to be staged, counted
    as ready and as arrivals for the linger (``on_hpc early``), which also passes
    ``may_cancel=False``: it only adds.  Returns (submitted, cancelled)."""
    now = time.time()
    rules = policy.settings_from(settings)
    state = policy_state.load(store, job_class, now)
    state["arrivals"] += [now for job_id in arrived if store.job_brief(job_id).get("class") == job_class]
    mine = {runner_id: info for runner_id, info in runners.items()
            if _runner_class(store, runner_id) == job_class}
    _observe_queue_waits(store, mine, state)
    usable = policy_runner_usable(settings)
    views = [policy.Runner(runner_id, info.state, len(store.claimed_jobs(runner_id)), usable(info))
             for runner_id, info in sorted(mine.items())]
    others = sum(1 for runner_id, info in runners.items() if runner_id not in mine and info.state != RunnerState.ENDING)
    ready = [_expected_seconds(store.job_brief(job_id)) for job_id in store.ready_jobs(job_class, ordered=False)]
    ready += [_expected_seconds({"expected_seconds": seconds}) for seconds in coming]
    decision = policy.decide(rules, ready, views, others, len(state["submitted"]), state["queue_wait"])
    cancelled = cancel_pending(store, sched, mine, decision.cancel) if may_cancel else []
    state["cancelled"] += len(cancelled)
    submitted = []
    try:
        for _ in range(decision.submit):
            submitted.append(submit_runner(store, sched, job_class, settings, request))
            state["submitted"].append(time.time())
    except SubmitFailed as error:
        error.submitted, error.cancelled = submitted, cancelled
        raise
    finally:
        rate = policy.arrival_rate(state["arrivals"] + [now] * len(coming), now)
        wait = policy.QUEUE_WAIT_GUESS if state["queue_wait"] is None else state["queue_wait"]
        try:
            policy_state.save(store, job_class, state)
            policy_state.write_linger(store, job_class, policy.linger_seconds(rules, rate, wait), now)
        except OSError as error:
            # The policy's memory is a help, not a need: without it the per-cycle cap and
            # max_runners still bound the submissions, and idle runners use idle_timeout.
            sys.stderr.write("class %s: cannot keep the runner policy's state: %s\n" % (job_class, error))
    return submitted, cancelled


def cancel_pending(store, sched, runners, runner_ids):
    """Cancel runners the policy no longer needs, if they are still pending.

    Checked again right before: a runner that holds a claim or has written its heartbeat
    (it started) is left alone, and the scheduler is asked to cancel only jobs still
    pending (``scancel --state=PENDING``), so one that starts meanwhile keeps running.
    """
    chosen = []
    for runner_id in runner_ids:
        info = runners.get(runner_id)
        alive = os.path.join(store.runners_dir(), runner_id + ".alive.json")
        if (info is None or info.state != RunnerState.PENDING or not info.sched_id or store.claimed_jobs(runner_id)
                or os.path.exists(alive)):
            continue
        chosen.append(info)
    if not chosen:
        return []
    asked = set(sched.cancel_pending([info.sched_id for info in chosen]))
    return [{"runner": info.runner_id, "sched_id": info.sched_id} for info in chosen if info.sched_id in asked]


def policy_runner_usable(settings):
    """Seconds a live runner can still give a job, as ``policy.Runner.usable`` wants it: a
    running one keeps back its warning time; None when there is no limit."""
    def usable(info):
        if info.time_left is None:
            return None
        return info.time_left - effective_warn_seconds(settings.get("time_limit") or info.time_left,
                                                       class_setting(settings, "warn_seconds"))
    return usable


def _expected_seconds(meta):
    """A job's expected run time as the policy counts it; 0 (not stated) for anything that
    is not a number."""
    value = meta.get("expected_seconds")
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
        return 0
    return value


def _observe_queue_waits(store, runners, state):
    """Count once, for each runner newly seen running, how long it waited in the queue."""
    for runner_id, info in sorted(runners.items()):
        if info.state != RunnerState.RUNNING or runner_id in state["seen"]:
            continue
        spec = read_json(os.path.join(store.runners_dir(), runner_id + ".json"), {})
        alive = read_json(os.path.join(store.runners_dir(), runner_id + ".alive.json"), {})
        submitted_at, started = spec.get("submitted_at"), alive.get("started")
        if not isinstance(submitted_at, (int, float)) or not isinstance(started, (int, float)):
            continue
        state["seen"] = (state["seen"] + [runner_id])[-policy_state.SEEN_KEPT:]
        state["queue_wait"] = policy.queue_wait_estimate(state["queue_wait"], max(0.0, started - submitted_at))


def ensure_runner_per_job(store, sched, runners, job_class, settings, request, arrived=()):
    """The 1:1 mode (``runner_per_job``): a scheduler job for every ready job, as a site
    that must account each job separately needs, and the baseline batching is measured
    against.  Each such runner runs one job and leaves."""
    waiting = [info for info in runners.values()
               if _runner_class(store, info.runner_id) == job_class and info.state != RunnerState.ENDING
               and not store.claimed_jobs(info.runner_id)]
    missing = len(store.ready_jobs(job_class)) - len(waiting)
    return [submit_runner(store, sched, job_class, dict(settings, slots=1), request) for _ in range(missing)], []


def submit_runner(store, sched, job_class, settings, request):
    runner_id = "%s-%s-%s" % (job_class, time.strftime("%Y%m%dT%H%M%S"), os.urandom(3).hex())
    spec = {
        "id": runner_id,
        "class": job_class,
        "root": store.root,
        "scheduler": request.scheduler,
        "slots": int(class_setting(settings, "slots")),
        "idle_timeout": class_setting(settings, "idle_timeout"),
        "time_limit": settings.get("time_limit"),
        "warn_seconds": class_setting(settings, "warn_seconds"),
        "max_attempts": request.max_attempts,
        "resources": settings,
        "submitted_at": time.time(),
    }
    spec_path = os.path.join(store.runners_dir(), runner_id + ".json")
    write_json(spec_path, spec)   # the intent, before the submission
    env = dict(os.environ)
    env["PYTHONPATH"] = request.pythonpath
    # PYTHONPATH is also on the command line: some sites start batch jobs with a clean
    # environment (SBATCH_EXPORT=NONE).
    argv = ["env", "PYTHONPATH=" + request.pythonpath, request.python or sys.executable,
            *ON_HPC_ARGV, "run", spec_path]
    try:
        spec["sched_id"] = sched.submit(spec, spec_path, argv, env)
    except SubmitFailed as error:
        if not error.uncertain:
            os.unlink(spec_path)
        raise
    write_json(spec_path, spec)
    return {"runner": runner_id, "class": job_class, "sched_id": spec["sched_id"]}


def describe_runner(store, info):
    return {"runner": info.runner_id, "sched_id": info.sched_id, "state": info.state,
            "time_left": info.time_left, "class": _runner_class(store, info.runner_id),
            "jobs": len(store.claimed_jobs(info.runner_id)), "reason": info.reason}


def count_states(states):
    counts = {}
    for state in states.values():
        counts[state] = counts.get(state, 0) + 1
    return counts


def _runner_class(store, runner_id):
    record = read_json(os.path.join(store.runners_dir(), runner_id + ".json"), {})
    # Runner ids are <class>-<time>-<hex>: the class is known even without the record.
    return record.get("class") or runner_id.rsplit("-", 2)[0]


def _pending(runner_id, record):
    return RunnerInfo(runner_id, record.get("sched_id", ""), RunnerState.PENDING, record.get("time_limit"))


def _age(path, missing=0.0):
    """Seconds since ``path`` was last written; ``missing`` when it does not exist."""
    try:
        return time.time() - os.stat(path).st_mtime
    except FileNotFoundError:
        return missing

