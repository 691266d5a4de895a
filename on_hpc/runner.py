"""The batched runner: one allocation that drains every ready job of its class.

It claims jobs with a rename (see ``jobstore``), runs as many at once as the allocation's
CPUs, memory and GPUs hold (see ``resources``: each job takes what it asked for, or one
``slots``-th of a node), each in its own process group, or as a Slurm job step that Slurm
confines to what the job asked for, and keeps taking jobs that arrive while it runs.  It
never starts a job that expects more time than the allocation has left, and when told to
stop (the scheduler's early warning, SIGTERM, Ctrl-C) it ends its jobs and hands them back to the queue as interrupted.
"""
import collections
import contextlib
import errno
import os
import re
import select
import signal
import subprocess
import sys
import time

from . import claims, coming, policy_state
from .doorbell import Doorbell, drain
from .files import free_bytes, read_json, remove_file, remove_tree, tree_bytes, write_json
from .gpus import NoGpus
from .jobstore import JobStore
from .protocol import (
    DEFAULT_IDLE_TIMEOUT,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_WARN_SECONDS,
    START_ERROR_SUFFIX,
    FinishedRecord,
    cancelled_record,
)
from .recorder import Recorder
from .resources import Ledger, job_request
from .schedulers import connector, effective_warn_seconds, too_long_message

POLL_SECONDS = 0.2
SRUN_OUT_OF_MEMORY = re.compile(rb"^srun: error: \S+: task \d+: Out Of Memory", re.MULTILINE)
STEP_ID_FILE = "step.id"     # in the job's folder: "<job id>.<step id>" of its Slurm step
HEARTBEAT_SECONDS = 10
LINGER_READ_SECONDS = 5
COMING_READ_SECONDS = 1
# A job that dies by a signal may have been hit by the same signal that is about to stop
# the runner (scancel signals every process of the allocation at once); under a batch
# scheduler so may a job that fails (``_may_be_the_stop``).  Its end is held back this
# long so a stop that follows turns it into an interruption, not a failure.
SIGNAL_GRACE_SECONDS = 2.0
TERMINATE_WAIT_SECONDS = 3.0
# Ends are recorded together, at most this long after the first of them (while jobs still
# run; at once when none does): a record costs two syncfs, which on ext4 with a journal
# made recording each pass's one or two ends a third of a burst of short jobs' time.
RECORD_SECONDS = 0.1
# A failed job that leaves less than this free on its disk is taken to have failed for
# want of space (its own output filled it).
FULL_BYTES = 64 * 1024


class RunningJob(object):
    def __init__(self, job_id, process, start, request, placement, attempt, free_at_start=None):
        self.job_id = job_id
        self.free_at_start = free_at_start    # bytes free on its disk just before it started (None: unknown)
        self.disk_full = None                 # why its disk was full when it ended ("" if it was not)
        self.process = process
        self.start = start
        self.request = request
        self.placement = placement
        self.attempt = attempt
        self.exit = None          # (returncode, end time) once reaped
        self.claim = None         # its line in the runner's claims journal
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
        self.doorbell = None                  # rung when work is queued (run() installs it)
        self.spec = spec
        self.runner_id = spec["id"]
        self.job_class = spec["class"]
        self.store = JobStore(spec["root"])
        self.sched = connector(spec["scheduler"], self.store)
        self.host = os.uname().nodename
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
        self.resources = dict(spec.get("resources") or {}, slots=spec.get("slots", 1))
        # Every node of the allocation with its CPUs, memory and GPUs; a GPU class on a
        # machine with no GPU to be found stops here, with the reason (ValueError).
        self.ledger = Ledger(self.sched.allocation_nodes(self.resources))
        self.gpus_per_node = max(len(node.gpus) for node in self.ledger.nodes)
        self.steps = self.sched.launches_steps(self.resources)
        # What every job's environment starts from, read once: copying os.environ (which
        # decodes each variable) for each job was a tenth of the runner's time a job.  In
        # bytes, as the kernel takes it, so starting a job does not encode each variable again.
        self.environment = dict(os.environb)
        self.devnull = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)     # every job's stdin
        self.jobs = {}
        self.queue = collections.deque()    # ready job ids of the last listing, not yet tried
        self.metas = {}     # job.json of the queued jobs: fixed once staged, so read once each
        self.unrecorded = {}      # job id -> (job, code, end): ends a full disk refused to record
        self.ending = []          # (job id, record) ended, recorded together (_record_due); None: one by one
        self.ending_jobs = {}     # job id -> (job, code, end) of those
        self.ending_since = None  # when the first of them ended
        self.disk_seen_full = None    # (when, why): the last time a failed job's disk was full
        self.recorder = Recorder(self.store, self.runner_id, wake_write)
        self.unfit_seen = set()
        self.next_cancel_look = 0.0
        self._linger_read = None      # (when, seconds): the adaptive linger last read
        self._coming_read = None      # (when, bool): whether announced work was still coming
        self.one_job = bool(spec.get("resources", {}).get("runner_per_job"))
        self.started = 0
        self.alive_path = os.path.join(self.store.runners_dir(), self.runner_id + ".alive.json")
        self.claims = claims.Journal(self.store.claims_path(self.runner_id))

    def run(self):
        self.alive = {"pid": os.getpid(), "host": self.host, "sched_id": self.sched_id,
                      "started": time.time(), "deadline": self.deadline, "nodes": self.ledger.describe()}
        write_json(self.alive_path, self.alive)
        self.doorbell = Doorbell.install(self.store.runners_dir(), self.runner_id)
        if self.doorbell is None:
            log("cannot make a doorbell FIFO in %s; new work is found by polling only" % self.store.runners_dir())
        log("runner %s up on %s: %s; jobs as %s; %s" % (
            self.runner_id, self.host, "; ".join(_node_text(node) for node in self.ledger.nodes),
            "job steps" if self.steps else "processes", self._left_text()))
        idle_since = last_beat = time.time()
        try:
            while True:
                unfit = self._reap_and_refill()
                for job, code, end in list(self.unrecorded.values()):
                    self._finish(job, code, end)
                if self.stop_reason:
                    self._shutdown()
                    break
                now = time.time()
                if now - last_beat >= HEARTBEAT_SECONDS:
                    self._heartbeat()
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
                elif now - idle_since >= self._linger(now) and not self._work_coming(now):
                    log("idle for %ds; leaving" % (now - idle_since))
                    break
                self._nap(self._nap_seconds(now))
        finally:
            try:
                self._record_pass()     # ends still waiting for their RECORD_SECONDS
                self._batch_written()
            finally:
                self.store.forget_runner(self.runner_id)
                os.close(self.devnull)
                if self.doorbell is not None:
                    self.doorbell.close()

    def _heartbeat(self):
        """Touch the heartbeat; recreate it when someone removed it (a cleanup script, a
        full disk's victim), so the head node does not take a live runner for lost."""
        try:
            os.utime(self.alive_path, None)
        except FileNotFoundError:
            log("heartbeat file %s vanished; writing it again" % self.alive_path)
            try:
                write_json(self.alive_path, self.alive)
            except OSError as error:
                log("cannot write the heartbeat file: %s" % error)
        except OSError as error:
            log("cannot touch the heartbeat file: %s" % error)
        if self.claims.removed():
            log("claims journal %s vanished; writing it again" % self.claims.path)
            try:
                self.claims.rewrite(self._running_claims())
            except OSError as error:
                log("cannot write the claims journal: %s" % error)

    def _running_claims(self):
        return [job.claim for job in self.jobs.values()]

    # -- claiming and starting ----------------------------------------------------------
    def _fill_slots(self):
        """Start ready jobs while the allocation has room; return how many could not fit
        in time."""
        if self.one_job and self.started:
            return 0
        unfit = 0
        if not self.queue:
            # One listing serves many passes: listing (and stat-ing) every ready job each
            # time a slot frees made draining N jobs cost N^2.  A listed job another runner
            # took since, or one cancelled, fails its claim and is skipped.
            self.queue = collections.deque(self.store.ready_jobs(self.job_class))
            self.metas = {job_id: self.metas[job_id] for job_id in self.queue if job_id in self.metas}
        later = []      # not started for now (no room yet, not enough time): first next pass
        while self.queue:
            if self.stop_reason or (self.one_job and self.started) or self.ledger.full():
                break
            job_id = self.queue.popleft()
            meta = self.metas.get(job_id) or self.store.job_meta(job_id)
            if meta:
                self.metas[job_id] = meta      # an unreadable one ({}) is read again next time
            expected = meta.get("expected_seconds") or 0
            if self.fresh_usable is not None and expected > self.fresh_usable:
                self._refuse(job_id, self._too_long(expected))
                continue
            request = job_request(meta, self.resources, self.gpus_per_node)
            if not self.ledger.fits_anywhere(request):
                self._refuse(job_id, self._too_big(request))
                continue
            if self.usable_until is not None and expected > self.usable_until - time.time():
                later.append(job_id)
                unfit += 1
                if job_id not in self.unfit_seen:
                    self.unfit_seen.add(job_id)
                    log("not starting %s here: it expects %ds, this runner has %ds left"
                        % (job_id, expected, self.usable_until - time.time()))
                continue
            placement = self.ledger.place(request)
            if placement is None:
                later.append(job_id)
                continue     # not now: it waits for a running job to end
            if not self.store.claim(self.job_class, job_id, self.runner_id):
                self.ledger.release(request, placement)
                continue
            if os.path.exists(self.store.finished_path(job_id)):
                # Ran to completion before (its runner died before moving the marker):
                # never again.
                self.ledger.release(request, placement)
                self.store.finish_marker(self.runner_id, job_id)
                continue
            self._start(job_id, request, placement)
        self.queue.extendleft(reversed(later))
        return unfit

    def _too_long(self, expected):
        return too_long_message(expected, self.job_class, self.fresh_usable + self.warn,
                                self.fresh_usable) + "; the job was not run"

    def _too_big(self, request):
        return ("the job asks for %d CPU(s), %dM memory and %d GPU(s), more than any node of "
                "this runner of class %s holds (%s); the job was not run"
                % (request.cpus, request.memory_mb, request.gpus, self.job_class,
                   "; ".join(_node_text(node) for node in self.ledger.nodes)))

    def _refuse(self, job_id, message):
        if not self.store.claim(self.job_class, job_id, self.runner_id):
            return
        self.store.finish(self.runner_id, job_id, FinishedRecord(
            error=message, start=time.time(), runner=self.runner_id, sched_id=self.sched_id, host=self.host))
        log("refused %s: %s" % (job_id, message))

    def _start(self, job_id, request, placement):
        self.started += 1
        job_dir = self.store.job_dir(job_id)
        attempt = self.store.attempts_before(job_id) + 1
        _empty_folder(os.path.join(job_dir, "output"))
        env = dict(self.environment)
        env[b"DBR_JOB_ID"], env[b"DBR_ATTEMPT"] = job_id.encode(), b"%d" % attempt
        if self.steps:
            # Slurm binds the step's own GPUs; the allocation's list must not leak in.
            env.pop(b"CUDA_VISIBLE_DEVICES", None)
            remove_file(os.path.join(job_dir, STEP_ID_FILE))
            argv = self.sched.step_argv(_script_argv(os.path.join(job_dir, "job.sh")), job_id, request,
                                        placement, STEP_ID_FILE)
        else:
            if placement.gpus:
                env[b"CUDA_VISIBLE_DEVICES"] = ",".join(placement.gpus).encode()
            argv = _script_argv(os.path.join(job_dir, "job.sh"))
        free_at_start = free_bytes(job_dir)
        start = time.time()
        try:
            with _created(os.path.join(job_dir, "stdout")) as out, _created(os.path.join(job_dir, "stderr")) as err:
                process = subprocess.Popen(argv, cwd=job_dir, env=env, stdin=self.devnull, stdout=out, stderr=err,
                                           start_new_session=True)
        except OSError as error:
            with open(os.path.join(job_dir, "stderr"), "ab") as err:
                err.write(("dropbox-runner: cannot start job.sh: %s\n" % error).encode())
            self.ledger.release(request, placement)
            self.store.finish(self.runner_id, job_id, self._record(job_id, attempt, start, 127, None))
            return
        job = self.jobs[job_id] = RunningJob(job_id, process, start, request, placement, attempt, free_at_start)
        job.claim = {"job": job_id, "runner": self.runner_id, "sched_id": self.sched_id, "host": self.host,
                     "attempt": attempt, "start": start, "pgid": process.pid, "node": placement.node,
                     "gpus": placement.gpus, "request": dict(request._asdict()), "step": self.steps}
        try:
            self.claims.add(job.claim, self._running_claims)
        except OSError as error:    # a full disk: the job runs; only its leftovers' cleanup needs this
            log("cannot record the claim of %s in %s: %s" % (job_id, self.claims.path, error))
        log("started %s (attempt %d, %d cpu, %dM, %d gpu on %s%s)" % (
            job_id, attempt, request.cpus, request.memory_mb, request.gpus, placement.node,
            " as a job step" if self.steps else ", gpus %s" % (",".join(placement.gpus) or "none")))

    # -- ending ---------------------------------------------------------------------------
    def _reap_and_refill(self):
        """End what has ended and start what fits in the slots freed, then record the
        jobs that ended, when due (``_record_due``): one sync for many finished.json files
        instead of one each, made while the new jobs already run (the slots used to wait
        for it).  Returns how many ready jobs could not fit in time (``_fill_slots``)."""
        try:
            self._reap_pass()
            if not self.stop_reason and self.stop_at is not None and time.time() >= self.stop_at:
                self.stop_reason = "runner %s reached its time limit less %ds" % (self.runner_id, self.warn)
            return 0 if self.stop_reason else self._fill_slots()
        finally:
            if not self.recorder.busy():
                self._batch_written()
            if self._record_due():
                self._record_pass()

    def _record_due(self):
        """Record now when nothing runs (no later end to wait for), when stopping, or once
        the first unrecorded end is RECORD_SECONDS old: a result comes back that much later
        at most, where the submitter's wait looks every few tenths of a second anyway.
        Never while the batch before is still being written: the ends keep gathering, and
        the recorder wakes the loop when it is done."""
        return bool(self.ending) and not self.recorder.busy() and (
            not self.jobs or bool(self.stop_reason) or time.time() - self.ending_since >= RECORD_SECONDS)

    def _nap_seconds(self, now):
        """A poll's length, or less when ends wait to be recorded."""
        if self.ending_since is None or self.recorder.busy():
            return POLL_SECONDS
        return max(0.0, min(POLL_SECONDS, self.ending_since + RECORD_SECONDS - now))

    def _record_pass(self):
        """Hand the ends gathered so far to the recorder (``recorder.py``), once the batch
        before them is written."""
        self._batch_written()
        ending, jobs = self.ending, self.ending_jobs
        if not ending:
            return
        self.ending, self.ending_jobs, self.ending_since = [], {}, None
        self.recorder.start(ending, jobs)

    def _batch_written(self):
        """Wait for the batch in flight, if any; if the filesystem refused it (a full disk),
        record its jobs one by one, with the full disk's handling (``_record_end``)."""
        refused = self.recorder.wait()
        if refused is None:
            return
        ending, jobs = refused
        gathering, self.ending, self.ending_jobs = (self.ending, self.ending_jobs), None, {}
        try:
            for job_id, _ in ending:
                self._finish(*jobs[job_id])
        finally:
            self.ending, self.ending_jobs = gathering

    def _reap_pass(self):
        now = time.time()
        # A cancel is looked for once a poll, not in every pass: passes come as often as
        # jobs end, and a look for each running job in each was a stat per job per pass.
        look_for_cancels = now >= self.next_cancel_look
        if look_for_cancels:
            self.next_cancel_look = now + POLL_SECONDS
        for job in list(self.jobs.values()):
            if (look_for_cancels and job.exit is None and not job.cancelled
                    and self.store.cancel_requested(job.job_id)):
                job.cancelled = True
                self._end(job)
                log("cancelled %s" % job.job_id)
            if job.exit is None:
                code = job.process.poll()
                if code is None:
                    continue
                job.exit = (code, now)
                # Its process is gone, so its place is free now, though its end may still
                # be held (SIGNAL_GRACE_SECONDS): a failure held there kept the next job waiting.
                self.ledger.release(job.request, job.placement)
            code, end = job.exit
            if job.cancelled:
                self._finish(job, code, end)
                continue
            if self._may_be_the_stop(code) and (self.stop_reason or now - end < SIGNAL_GRACE_SECONDS):
                continue   # held for a stop that may follow; once it comes, handed back by _shutdown
            self._finish(job, code, end)

    def _may_be_the_stop(self, code):
        """True for an end the runner's stop may have caused: death by a signal, and under
        a batch scheduler, which signals the whole allocation at once, any failure, since
        what a job makes of the signal is its own (``srun`` exits 1 when its step is
        cancelled; a script that traps TERM exits as it likes).  Such a failure then comes
        SIGNAL_GRACE_SECONDS late; a local runner's jobs are signalled by it alone."""
        return _looks_signalled(code) or (code != 0 and self.sched.signals_whole_allocation)

    def _finish(self, job, code, end):
        self.ending_jobs[job.job_id] = (job, code, end)     # for _record_pass, should its batch fail
        self.jobs.pop(job.job_id, None)        # its place was freed when it was reaped
        record = self._record(job.job_id, job.attempt, job.start, code, end, job.cancelled, job)
        job_dir = self.store.job_dir(job.job_id)
        if job.disk_full is None:     # as it was when the job ended, not when recorded
            job.disk_full = (self._full_while_running(job, job_dir) if code != 0 and not job.cancelled
                             else None) or ""
        full = job.disk_full
        try:
            if full and _filled_by_others(job, job_dir):
                # Not this job's fault.  It runs again, counted, so a disk that stays full
                # ends it after max_attempts.
                outcome = self.store.release(self.runner_id, job.job_id, "the cluster's disk filled up (%s), "
                                             "not by this job" % full,
                                             self.spec.get("max_attempts", DEFAULT_MAX_ATTEMPTS), attempt=job.attempt)
                log("released %s: %s (disk full, not its doing)" % (job.job_id, outcome))
                self.unrecorded.pop(job.job_id, None)
                return
            if full:
                record.error = free_space_of_failed_job(job_dir, full)
            self._record_end(job.job_id, record)
        except OSError as error:
            # The filesystem refused even that (a full disk): the runner goes on and tries
            # again each turn of its loop; if it leaves first, the head node hands the job back.
            if job.job_id not in self.unrecorded:
                log("cannot record the end of %s (%s); trying again" % (job.job_id, error))
            self.unrecorded[job.job_id] = (job, code, end)
            return
        self.unrecorded.pop(job.job_id, None)
        log("finished %s rc=%s%s" % (job.job_id, code, " (%s)" % record.error if full else ""))

    def _full_while_running(self, job, job_dir):
        """Why the failed job's disk was full while it ran, or None.  Full now, or seen full
        since it started: a job that failed beside one filling the disk may be seen to end
        only after that one's output was removed, when the disk has room again."""
        why = disk_full(job_dir)
        if why:
            self.disk_seen_full = (time.time(), why)
        elif self.disk_seen_full is not None and self.disk_seen_full[0] >= job.start:
            why = self.disk_seen_full[1]
        return why

    def _record_end(self, job_id, record):
        """finished.json; when even that small file does not fit, the job's own output is
        what fills the disk: it is removed and the record says so."""
        if self.ending is not None:
            self.ending.append((job_id, record))     # with the others ending about now
            self.ending_since = self.ending_since or time.time()
            return
        try:
            self.store.finish(self.runner_id, job_id, record)
        except OSError as error:
            if error.errno not in (errno.ENOSPC, errno.EDQUOT) or record.error:
                raise
            record.error = free_space_of_failed_job(self.store.job_dir(job_id), error.strerror)
            self.store.finish(self.runner_id, job_id, record)

    def _end(self, job):
        """SIGTERM to the job's process group (srun passes it on to its step), SIGKILL if
        it is still there moments later; a job step is then cancelled through Slurm, which
        also reaches what the job started outside its process group."""
        _end_group(job.process)
        if self.steps:
            self.sched.cancel_steps([_step_id(self.store.job_dir(job.job_id), self.sched_id)])

    def _record(self, job_id, attempt, start, code, end, cancelled=False, job=None):
        signal_name = None
        if code < 0:
            signal_name = _signal_name(-code)
            code = 128 - code
        record = FinishedRecord(rc=code, signal=signal_name, start=start, end=end or time.time(), host=self.host,
                                runner=self.runner_id, sched_id=self.sched_id, attempt=attempt)
        if job is not None:
            record.node = job.placement.node
            record.resources = dict(job.request._asdict())
            if self.steps:
                record.step_id = _step_id(self.store.job_dir(job_id), self.sched_id)
                if code and _out_of_memory(os.path.join(self.store.job_dir(job_id), "stderr")):
                    record.error = ("killed by Slurm for using more than the %dM memory it asked for "
                                    "(srun: Out Of Memory)" % job.request.memory_mb)
        if cancelled:
            cancelled_copy = cancelled_record(rc=code)
            record.error, record.cancelled = cancelled_copy.error, cancelled_copy.cancelled
        return record

    def _shutdown(self):
        log("stopping (%s): ending %d job(s)" % (self.stop_reason, len(self.jobs)))
        for job in self.jobs.values():
            if job.exit is None:
                _signal_group(job.process.pid, signal.SIGTERM)
        waited_until = time.time() + TERMINATE_WAIT_SECONDS
        while time.time() < waited_until and any(j.process.poll() is None for j in self.jobs.values()):
            time.sleep(0.1)
        if self.steps:
            self.sched.cancel_steps([_step_id(self.store.job_dir(job_id), self.sched_id) for job_id in self.jobs])
        for job in list(self.jobs.values()):
            _signal_group(job.process.pid, signal.SIGKILL)
            job.process.wait()
            if job.exit is not None and not self._may_be_the_stop(job.exit[0]):
                self._finish(job, *job.exit)
                continue
            outcome = self.store.release(self.runner_id, job.job_id, self.stop_reason,
                                         self.spec.get("max_attempts", DEFAULT_MAX_ATTEMPTS), attempt=job.attempt)
            del self.jobs[job.job_id]
            if job.exit is None:            # else freed when it was reaped
                self.ledger.release(job.request, job.placement)
            log("released %s: %s" % (job.job_id, outcome))

    def _linger(self, now):
        """How long to wait idle: the class's fixed ``idle_timeout``, or with
        ``adaptive_linger`` what the last cycle worked out from recent arrivals (see
        ``policy.linger_seconds``), never longer than ``idle_timeout``."""
        fixed = float(self.spec.get("idle_timeout", DEFAULT_IDLE_TIMEOUT) or 0)
        if not self.spec.get("resources", {}).get("adaptive_linger"):
            return fixed
        # Read at most every LINGER_READ_SECONDS: the figure changes once a cycle, and the
        # file is on the shared filesystem.
        if self._linger_read is None or now - self._linger_read[0] >= LINGER_READ_SECONDS:
            self._linger_read = (now, policy_state.read_linger(self.store, self.job_class, fixed, now))
        return self._linger_read[1]

    def _work_coming(self, now):
        """True while jobs announced by an early submission (``coming.py``) are still being
        staged; read at most every COMING_READ_SECONDS, and only once the linger is up."""
        if self._coming_read is None or now - self._coming_read[0] >= COMING_READ_SECONDS:
            self._coming_read = (now, coming.expected(self.store, self.job_class, now))
        return self._coming_read[1]

    def _nap(self, seconds):
        """Sleep until a signal comes (a job ended, a stop), the doorbell rings (work
        was queued) or ``seconds`` pass."""
        bells = [self._wake_read] + ([self.doorbell.fd] if self.doorbell is not None else [])
        if select.select(bells, [], [], seconds)[0]:
            drain(self._wake_read)
            if self.doorbell is not None:
                self.doorbell.clear()

    def _on_signal(self, signum, frame):
        self.stop_reason = "runner %s got %s" % (self.runner_id, _signal_name(signum))

    def _left_text(self):
        if self.deadline is None:
            return "no time limit"
        return "%ds left (stops %ds before the end)" % (self.deadline - time.time(), self.warn)


def _node_text(node):
    memory = "memory not counted" if node.memory_mb is None else "%dM" % node.memory_mb
    return "%s: %d cpu, %s, gpus %s" % (node.name, node.cpus, memory, ",".join(node.gpus) or "none")


def _step_id(job_dir, sched_id):
    """``<job>.<step>`` as the job's step wrote it at its start, when it is one of this
    allocation's; else None.  The job could rewrite the file, but a job of the same account
    can end its neighbours' steps with ``scancel`` anyway: the check keeps a mistake from
    reaching another allocation."""
    try:
        with open(os.path.join(job_dir, STEP_ID_FILE)) as handle:
            text = handle.read(64).strip()
    except OSError:
        return None
    job, _, step = text.partition(".")
    return text if job == str(sched_id) and step.isdigit() else None


def _out_of_memory(stderr_path):
    """srun's own report, at the end of the job's stderr, that the step's memory cgroup
    killed it (``srun: error: node7: task 0: Out Of Memory``), not a tool's own words."""
    try:
        with open(stderr_path, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - 4096))
            return SRUN_OUT_OF_MEMORY.search(handle.read()) is not None
    except OSError:
        return False


def _script_argv(script):
    """Honour the template's #! line; a script without one runs under bash."""
    fd = os.open(script, os.O_RDONLY | os.O_CLOEXEC)
    try:
        has_shebang = os.read(fd, 2) == b"#!"
    finally:
        os.close(fd)
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
    """A fresh, empty folder at ``path`` (an earlier attempt's is removed first)."""
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        remove_tree(path)
        os.mkdir(path, 0o700)


@contextlib.contextmanager
def _created(path):
    """A job's stdout or stderr as a descriptor for its process, closed after, truncated
    when an earlier attempt left one (no file object: its buffering and checks are never
    used)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o666)
    try:
        yield fd
    finally:
        os.close(fd)


def disk_full(path):
    """Why the disk holding ``path`` counts as full (free space under FULL_BYTES), or None."""
    free = free_bytes(path)
    return "No space left on device (%d bytes free)" % free if free is not None and free < FULL_BYTES else None


def _filled_by_others(job, job_dir):
    """Whether a job that failed on a full disk found it full already, or wrote less than
    half of what was free when it started: then others filled it.  Under load a job may
    start only after its neighbour filled the disk, and it could not write at all."""
    if job.free_at_start is None:
        return False
    return job.free_at_start < FULL_BYTES or job_bytes(job_dir) < job.free_at_start // 2


def job_bytes(job_dir):
    """What a job wrote: its output folder, stdout and stderr."""
    total = tree_bytes(os.path.join(job_dir, "output"))
    for name in ("stdout", "stderr"):
        try:
            total += os.lstat(os.path.join(job_dir, name)).st_size
        except OSError:
            pass
    return total


def free_space_of_failed_job(job_dir, why):
    """A job that failed on a full disk: its partial output is removed so the disk is free
    for the others, and its record says so (the job's fault, not a reason to run it again)."""
    output = os.path.join(job_dir, "output")
    size = tree_bytes(output)
    remove_tree(output)
    return ("the cluster's disk was full when the job ended (%s): its output was removed "
            "(%d bytes) to free the disk for other jobs" % (why, size))


def log(message):
    """The runner's log line; a full disk under the log file must not end the runner."""
    try:
        sys.stdout.write("%s %s\n" % (time.strftime("%Y-%m-%dT%H:%M:%S"), message))
        sys.stdout.flush()
    except OSError:
        pass


def main(spec_path):
    spec = read_json(spec_path)
    if not spec:
        raise SystemExit("runner spec %s is missing or unreadable" % spec_path)
    try:
        runner = Runner(spec)
    except NoGpus as error:
        # The environment's fault: the jobs wait, and the next cycle tells the operator.
        message = "runner %s of class %s cannot start: %s" % (spec["id"], spec["class"], error)
        log(message)
        with open(os.path.join(os.path.dirname(spec_path), spec["id"] + START_ERROR_SUFFIX), "w") as handle:
            handle.write(message)
        raise SystemExit(2) from None
    runner.run()
