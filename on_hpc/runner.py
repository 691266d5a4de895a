"""The batched runner: one allocation that drains every ready job of its class.

It claims jobs with a rename (see ``jobstore``), runs up to ``slots`` of them at once,
each in its own process group with its own share of the allocation's GPUs, and keeps
taking jobs that arrive while it runs.  It never starts a job that expects more time than
the allocation has left, and when told to stop (the scheduler's early warning, SIGTERM,
Ctrl-C) it ends its jobs and hands them back to the queue as interrupted.
"""
import collections
import os
import select
import shutil
import signal
import socket
import sys
import time

from .files import read_json, write_json
from .jobstore import JobStore
from .protocol import DEFAULT_IDLE_TIMEOUT, DEFAULT_MAX_ATTEMPTS, DEFAULT_WARN_SECONDS, FinishedRecord, cancelled_record
from .schedulers import connector, effective_warn_seconds, too_long_message

POLL_SECONDS = 0.2
HEARTBEAT_SECONDS = 10
# A job that dies by a signal may have been hit by the same signal that is about to stop
# the runner (scancel signals every process of the allocation at once).  Its end is held
# back this long so a stop that follows turns it into an interruption, not a failure.
SIGNAL_GRACE_SECONDS = 2.0
TERMINATE_WAIT_SECONDS = 3.0


class RunningJob(object):
    def __init__(self, job_id, process, start, gpus, attempt):
        self.job_id = job_id
        self.process = process
        self.start = start
        self.gpus = gpus
        self.attempt = attempt
        self.exit = None          # (returncode, end time) once reaped
        self.cancelled = False


class Runner(object):
    def __init__(self, spec):
        # First of all, so a warning or a cancel that comes while the runner starts up
        # (the default action of SIGUSR1 is to die) is not lost.
        self.stop_reason = None
        for signum in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT):
            signal.signal(signum, self._on_signal)
        # Every signal (a job ending is SIGCHLD) wakes the main loop at once, so a slot is
        # refilled the moment it frees and a stop is acted on without waiting a poll.
        self._wake_read, wake_write = os.pipe()
        for fd in (self._wake_read, wake_write):
            os.set_blocking(fd, False)
        signal.set_wakeup_fd(wake_write)
        signal.signal(signal.SIGCHLD, lambda signum, frame: None)
        self.spec = spec
        self.runner_id = spec["id"]
        self.job_class = spec["class"]
        self.store = JobStore(spec["root"])
        self.sched = connector(spec["scheduler"], self.store)
        self.slots = int(spec.get("slots", 1))
        self.host = socket.gethostname()
        self.sched_id = self.sched.allocation_id() or str(os.getpid())
        # The allocation's time, read once; the runner stops taking work and hands its
        # jobs back ``warn`` seconds before the end (the scheduler's warning signal may
        # come late, or not at all when the limit is the partition's default).
        seconds = self.sched.allocation_seconds(spec)
        # The warning as sbatch was told it (from the class's limit), else from what the
        # allocation turned out to have (a partition's default limit).
        self.warn = effective_warn_seconds(spec.get("time_limit") or seconds,
                                          spec.get("warn_seconds", DEFAULT_WARN_SECONDS))
        self.deadline = None if seconds is None else time.time() + seconds
        # Jobs must be done by ``usable_until``; at ``stop_at`` the runner hands back what
        # is still running.  With no warning wanted (warn_seconds: 0) it runs until the
        # scheduler ends it at the limit (SIGTERM), and hands its jobs back then.
        self.usable_until = None if seconds is None else self.deadline - self.warn
        self.stop_at = self.usable_until if self.warn else None
        # What the allocation offered at its start: a job expecting more could never run
        # in any runner like this one, so it ends with an error instead of waiting.
        self.fresh_usable = None if seconds is None else seconds - self.warn
        gpus = self.sched.allocation_gpus()
        if gpus and len(gpus) < self.slots:
            self.slots = len(gpus)    # every job gets a GPU of its own, none shares one
        self.gpus_per_job = len(gpus) // self.slots if gpus else 0
        self.free_gpus = list(gpus)
        self.jobs = {}
        self.queue = collections.deque()    # ready job ids of the last listing, not yet tried
        self.unfit_seen = set()
        self.one_job = bool(spec.get("resources", {}).get("runner_per_job"))
        self.started = 0
        self.alive_path = os.path.join(self.store.runners_dir(), self.runner_id + ".alive.json")

    def run(self):
        write_json(self.alive_path, {"pid": os.getpid(), "host": self.host, "sched_id": self.sched_id,
                                     "started": time.time(), "deadline": self.deadline})
        log("runner %s up on %s: %d slot(s), gpus %s, %s" % (
            self.runner_id, self.host, self.slots, self.free_gpus or "none", self._left_text()))
        idle_since = last_beat = time.time()
        try:
            while True:
                self._reap()
                if not self.stop_reason and self.stop_at is not None and time.time() >= self.stop_at:
                    self.stop_reason = "runner %s reached its time limit less %ds" % (
                        self.runner_id, self.warn)
                if self.stop_reason:
                    self._shutdown()
                    break
                unfit = self._fill_slots()
                now = time.time()
                if now - last_beat >= HEARTBEAT_SECONDS:
                    os.utime(self.alive_path, None)
                    last_beat = now
                if self.jobs:
                    idle_since = now
                elif self.one_job and self.started:
                    log("ran its one job (runner_per_job); leaving")
                    break
                elif unfit:
                    log("ready jobs need more time than this runner has (%s); leaving for a "
                        "fresh runner" % self._left_text())
                    break
                elif now - idle_since >= self.spec.get("idle_timeout", DEFAULT_IDLE_TIMEOUT):
                    log("idle for %ds; leaving" % (now - idle_since))
                    break
                self._nap(POLL_SECONDS)
        finally:
            self.store.forget_runner(self.runner_id)

    # -- claiming and starting ----------------------------------------------------------
    def _fill_slots(self):
        """Start ready jobs while slots are free; return how many could not fit in time."""
        if len(self.jobs) >= self.slots or (self.one_job and self.started):
            return 0
        unfit = 0
        if not self.queue:
            # One listing serves many passes: listing (and stat-ing) every ready job each
            # time a slot frees made draining N jobs cost N^2.  A listed job another runner
            # took since, or one cancelled, fails its claim and is skipped.
            self.queue = collections.deque(self.store.ready_jobs(self.job_class))
        while self.queue:
            if len(self.jobs) >= self.slots or self.stop_reason:
                break
            job_id = self.queue.popleft()
            expected = self.store.job_meta(job_id).get("expected_seconds") or 0
            if self.fresh_usable is not None and expected > self.fresh_usable:
                self._refuse(job_id, expected)
                continue
            if self.usable_until is not None and expected > self.usable_until - time.time():
                unfit += 1
                if job_id not in self.unfit_seen:
                    self.unfit_seen.add(job_id)
                    log("not starting %s here: it expects %ds, this runner has %ds left"
                        % (job_id, expected, self.usable_until - time.time()))
                continue
            if not self.store.claim(self.job_class, job_id, self.runner_id):
                continue
            if os.path.exists(self.store.finished_path(job_id)):
                # Ran to completion before (its runner died before moving the marker):
                # never again.
                self.store.finish_marker(self.runner_id, job_id)
                continue
            self._start(job_id)
        return unfit

    def _refuse(self, job_id, expected):
        if not self.store.claim(self.job_class, job_id, self.runner_id):
            return
        message = too_long_message(expected, self.job_class, self.fresh_usable + self.warn,
                                   self.fresh_usable) + "; the job was not run"
        self.store.finish(self.runner_id, job_id, FinishedRecord(
            error=message, start=time.time(), runner=self.runner_id, sched_id=self.sched_id, host=self.host))
        log("refused %s: %s" % (job_id, message))

    def _start(self, job_id):
        self.started += 1
        job_dir = self.store.job_dir(job_id)
        attempt = self.store.attempts_before(job_id) + 1
        output = os.path.join(job_dir, "output")
        _empty_folder(output)
        gpus = [self.free_gpus.pop(0) for _ in range(self.gpus_per_job)]
        env = dict(os.environ, DBR_JOB_ID=job_id, DBR_ATTEMPT=str(attempt))
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
        script = os.path.join(job_dir, "job.sh")
        start = time.time()
        try:
            with open(os.path.join(job_dir, "stdout"), "wb") as out, \
                    open(os.path.join(job_dir, "stderr"), "wb") as err:
                process = self.sched.launch(_script_argv(script), cwd=job_dir, env=env, stdout=out, stderr=err)
        except OSError as error:
            with open(os.path.join(job_dir, "stderr"), "ab") as err:
                err.write(("dropbox-runner: cannot start job.sh: %s\n" % error).encode())
            self.free_gpus.extend(gpus)
            self.store.finish(self.runner_id, job_id, self._record(job_id, attempt, start, 127, None))
            return
        # Not fsynced: after a crash of the node the job's processes are gone with it, and
        # a lost claim.json only means nothing is left to kill (the requeue reads none).
        write_json(os.path.join(job_dir, "claim.json"), {
            "runner": self.runner_id, "sched_id": self.sched_id, "host": self.host,
            "attempt": attempt, "start": start, "pgid": process.pid, "gpus": gpus}, durable=False)
        self.jobs[job_id] = RunningJob(job_id, process, start, gpus, attempt)
        log("started %s (attempt %d, gpus %s)" % (job_id, attempt, gpus or "none"))

    # -- ending ---------------------------------------------------------------------------
    def _reap(self):
        now = time.time()
        for job in list(self.jobs.values()):
            if job.exit is None and not job.cancelled and self.store.cancel_requested(job.job_id):
                job.cancelled = True
                _end_group(job.process)
                log("cancelled %s" % job.job_id)
            if job.exit is None:
                code = job.process.poll()
                if code is None:
                    continue
                job.exit = (code, now)
            code, end = job.exit
            if job.cancelled:
                self._finish(job, code, end)
                continue
            if _looks_signalled(code) and now - end < SIGNAL_GRACE_SECONDS and not self.stop_reason:
                continue
            if _looks_signalled(code) and self.stop_reason:
                continue   # handed back by _shutdown
            self._finish(job, code, end)

    def _finish(self, job, code, end):
        del self.jobs[job.job_id]
        self.free_gpus.extend(job.gpus)
        self.store.finish(self.runner_id, job.job_id,
                          self._record(job.job_id, job.attempt, job.start, code, end, job.cancelled))
        log("finished %s rc=%s" % (job.job_id, code))

    def _record(self, job_id, attempt, start, code, end, cancelled=False):
        signal_name = None
        if code < 0:
            signal_name = _signal_name(-code)
            code = 128 - code
        details = dict(signal=signal_name, start=start, end=end or time.time(), host=self.host,
                       runner=self.runner_id, sched_id=self.sched_id, attempt=attempt)
        if cancelled:
            return cancelled_record(rc=code, **details)
        return FinishedRecord(rc=code, **details)

    def _shutdown(self):
        log("stopping (%s): ending %d job(s)" % (self.stop_reason, len(self.jobs)))
        for job in self.jobs.values():
            if job.exit is None:
                _signal_group(job.process.pid, signal.SIGTERM)
        waited_until = time.time() + TERMINATE_WAIT_SECONDS
        while time.time() < waited_until and any(j.process.poll() is None for j in self.jobs.values()):
            time.sleep(0.1)
        for job in list(self.jobs.values()):
            _signal_group(job.process.pid, signal.SIGKILL)
            job.process.wait()
            if job.exit is not None and not _looks_signalled(job.exit[0]):
                self._finish(job, *job.exit)
                continue
            outcome = self.store.release(self.runner_id, job.job_id, self.stop_reason,
                                         self.spec.get("max_attempts", DEFAULT_MAX_ATTEMPTS), attempt=job.attempt)
            del self.jobs[job.job_id]
            log("released %s: %s" % (job.job_id, outcome))

    def _nap(self, seconds):
        """Sleep until a signal comes (a job ended, a stop) or ``seconds`` pass."""
        if select.select([self._wake_read], [], [], seconds)[0]:
            try:
                while os.read(self._wake_read, 512):
                    pass
            except (BlockingIOError, InterruptedError):
                pass

    def _on_signal(self, signum, frame):
        self.stop_reason = "runner %s got %s" % (self.runner_id, _signal_name(signum))

    def _left_text(self):
        if self.deadline is None:
            return "no time limit"
        return "%ds left (stops %ds before the end)" % (self.deadline - time.time(), self.warn)


def _script_argv(script):
    """Honour the template's #! line; a script without one runs under bash."""
    with open(script, "rb") as handle:
        has_shebang = handle.read(2) == b"#!"
    if has_shebang:
        os.chmod(script, 0o700)
        return [script]
    return ["/bin/bash", script]


def _looks_signalled(code):
    """Killed by a signal, or a shell that reports its child's signal as 128+n."""
    return code < 0 or code in (128 + signal.SIGTERM, 128 + signal.SIGKILL, 128 + signal.SIGINT)


def _signal_name(signum):
    try:
        return signal.Signals(signum).name
    except ValueError:
        return "signal %d" % signum


def _end_group(process):
    """SIGTERM to the job's process group, SIGKILL if it is still there moments later."""
    _signal_group(process.pid, signal.SIGTERM)
    deadline = time.time() + TERMINATE_WAIT_SECONDS
    while process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    _signal_group(process.pid, signal.SIGKILL)


def _signal_group(pgid, signum):
    try:
        os.killpg(pgid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def _empty_folder(path):
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, mode=0o700)


def log(message):
    sys.stdout.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message))
    sys.stdout.flush()


def main(spec_path):
    spec = read_json(spec_path)
    if not spec:
        raise SystemExit("runner spec %s is missing or unreadable" % spec_path)
    Runner(spec).run()
