"""Grid Engine (Son of Grid Engine, Univa/Altair Grid Engine): runners are batch jobs.

The same shape as the Slurm connector: pure functions build the ``qsub``/``qstat``/``qdel``
argv and parse what they print, so the dialect is tested with plain strings.  ``qstat`` is
called once per cycle for all of this account's jobs, in its XML form (read with the
stdlib); a runner asks nothing at its start, since its time left is its class's ``h_rt``
(the runner is the job's first process) and its GPUs come from the environment.
"""
import os
import pwd
import time
import xml.etree.ElementTree as ElementTree

from . import commands
from .durations import parse_clock
from .protocol import RunnerState
from .resources import class_gpus, memory_mb
from .sched_slurm import JOB_NAME_PREFIX, job_name
from .schedulers import (
    BatchConnector,
    RunnerInfo,
    SchedulerUnavailable,
    SubmitFailed,
    effective_warn_seconds,
)

PENDING, RUNNING, ENDING = RunnerState.PENDING, RunnerState.RUNNING, RunnerState.ENDING

QSTAT_TIMEOUT_SECONDS = 60
QSUB_TIMEOUT_SECONDS = 120
# qstat prints times in the head node's local time, to the second.
QSTAT_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


def runner_state(code):
    """A runner's state from Grid Engine's state letters (``qw``, ``hqw``, ``r``, ``Rr``,
    ``t``, ``dr``, ``Eqw``, ``s``...).

    Being deleted (d), in error (E: it will not run until an operator clears it) or
    suspended (s, S, T) is ENDING: not taking work, its claims left alone until it is gone.
    Running (r) or being started (t) is RUNNING; queued, waiting or held is PENDING.  A code
    with none of these letters counts as ENDING, as an unknown Slurm state does.
    """
    if set(code) & set("dEsST"):
        return ENDING
    if set(code) & set("rt"):
        return RUNNING
    if set(code) & set("qwh"):
        return PENDING
    return ENDING


def qsub_argv(name, log_path, workdir, resources, command):
    """The qsub call for one runner; ``command`` is the argv the job runs, as is (no shell).

    ``resources`` are the class's settings and describe the whole runner, which its
    ``slots`` jobs share: ``cpus`` become slots of the parallel environment ``pe``, and
    ``memory`` (the whole runner's, as Slurm's ``--mem``) is divided among them, since Grid
    Engine counts memory per slot.  ``gpus`` are asked of the consumable ``gpu_resource``,
    which sites define per job (``consumable JOB``).
    """
    # "-o [[host]:]path": the leading colon keeps a colon in the path from being read as
    # a host name (a comma would still separate paths: config refuses one in the workspace).
    argv = ["qsub", "-terse", "-N", name, "-o", ":" + log_path, "-j", "y", "-wd", workdir,
            # Not rerun by Grid Engine after a host failure: a rerun runner would not know
            # the jobs it had claimed.  The next cycle requeues them and submits afresh.
            "-r", "n",
            # The command itself, not a script: no shell between Grid Engine and the
            # runner, so the warning signal reaches the runner.
            "-b", "y", "-shell", "n"]
    if resources.get("queue"):
        argv += ["-q", resources["queue"]]
    cpus = int(resources.get("cpus") or 1)
    if resources.get("pe"):
        argv += ["-pe", resources["pe"], str(cpus)]
    limits = []
    time_limit = resources.get("time_limit")
    if time_limit:
        limits.append("h_rt=%d" % int(time_limit))
        warn = effective_warn_seconds(time_limit, resources.get("warn_seconds"))
        if warn:
            # Past s_rt Grid Engine sends SIGUSR1, the runner's cue to hand its jobs back.
            limits.append("s_rt=%d" % (int(time_limit) - warn))
    if resources.get("memory"):
        per_slot = memory_mb(resources["memory"]) / (cpus if resources.get("pe") else 1)
        limits.append("%s=%dM" % (resources.get("memory_resource") or "h_vmem", -(-per_slot // 1)))
    gpus = class_gpus(resources)
    if gpus:
        limits.append("%s=%d" % (resources.get("gpu_resource") or "gpu", gpus))
    if limits:
        argv += ["-l", ",".join(limits)]
    argv.extend(str(arg) for arg in resources.get("extra_args") or [])
    argv.extend(str(part) for part in command)
    return argv


def parse_qsub(stdout):
    """``-terse`` prints the job id (after any warnings)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1] if lines else ""
    if not job_id.isdigit():
        raise ValueError("qsub printed no job id: %r" % stdout)
    return job_id


def qstat_argv(user=None):
    """One listing of this account's jobs, with their resource requests (``-r``: h_rt)."""
    return ["qstat", "-xml", "-r", "-u", user or _user_name()]


def parse_qstat(stdout, tag, now=None):
    """Runners of this workspace, by runner id, from the one ``qstat -xml`` listing.

    A running runner's time left is its ``h_rt`` less the time since it started; a pending
    one has its whole ``h_rt``; None without a limit.  Raises ValueError for output that is
    not qstat's XML, which the caller treats as a failed listing.
    """
    now = time.time() if now is None else now
    found = {}
    for runner_id, job in _workspace_jobs(stdout, tag):
        state = runner_state(job.findtext("state") or "")
        limit = None
        for request in job.findall("hard_request"):
            if request.get("name") == "h_rt":
                limit = _seconds(request.text)
        left = limit
        start = job.findtext("JAT_start_time")
        if limit is not None and start and state != PENDING:
            left = max(0, int(limit - (now - _local_time(start))))
        found[runner_id] = RunnerInfo(runner_id, job.findtext("JB_job_number") or "", state, left)
    return found


def jobs_in_error(stdout, tag):
    """Job ids of this workspace's runners that Grid Engine put in error state (``Eqw``:
    it could not start them, e.g. a working folder missing on the host).  Such a job stays
    queued until an operator clears it, so it would hold nothing and block nothing, yet
    every cycle would submit another that fails alike: they are deleted, with the reason."""
    return [job.findtext("JB_job_number") for _, job in _workspace_jobs(stdout, tag)
            if "E" in (job.findtext("state") or "")]


def _workspace_jobs(stdout, tag):
    """(runner id, job element) for each of this workspace's runners in the listing."""
    prefix = JOB_NAME_PREFIX + tag + "."
    return [(job.findtext("JB_name")[len(prefix):], job) for job in _job_list(stdout)
            if (job.findtext("JB_name") or "").startswith(prefix)]


def _job_list(stdout):
    """The ``job_list`` elements of a ``qstat -xml`` listing; ValueError when it is not one."""
    try:
        return list(ElementTree.fromstring(stdout).iter("job_list"))
    except ElementTree.ParseError as error:
        raise ValueError("qstat printed no XML: %s" % error) from error


def error_reasons(stdout):
    """The ``error reason`` lines of ``qstat -j <id>``."""
    return [line.split(":", 1)[1].strip() for line in stdout.splitlines()
            if line.strip().startswith("error reason") and ":" in line]


def _seconds(text):
    """Seconds from a time as Grid Engine prints a limit: ``3600`` or ``1:00:00``."""
    text = (text or "").strip()
    return int(text) if text.isdigit() else parse_clock(text)


def _local_time(text):
    return time.mktime(time.strptime(text.strip()[:19], QSTAT_TIME_FORMAT))


def qdel_argv(sched_ids):
    return ["qdel"] + [str(sched_id) for sched_id in sched_ids]


def qhold_argv(sched_ids):
    """A user hold: a pending job then never starts; a running one is not touched."""
    return ["qhold", "-h", "u"] + [str(sched_id) for sched_id in sched_ids]


def qrls_argv(sched_ids):
    return ["qrls", "-h", "u"] + [str(sched_id) for sched_id in sched_ids]


def still_waiting(stdout, sched_ids):
    """Those of ``sched_ids`` that the ``qstat -xml`` listing shows waiting (``qw``,
    ``hqw``), not started, being deleted or in error."""
    wanted = set(str(sched_id) for sched_id in sched_ids)
    return [job.findtext("JB_job_number") for job in _job_list(stdout)
            if job.findtext("JB_job_number") in wanted
            and runner_state(job.findtext("state") or "") == PENDING]


def allocated_gpus(environ):
    """The GPUs of this allocation, as the jobs started in it must name them.

    Grid Engine 8.1 counts a GPU consumable but does not pick devices: sites bind them with
    a prolog or starter method that sets ``CUDA_VISIBLE_DEVICES``.  Univa/Altair's resource
    maps (``RSMAP``) name the devices in ``SGE_HGR_<complex>`` instead.
    """
    for key in sorted(environ):
        if key.startswith("SGE_HGR_") and environ[key].strip():
            return environ[key].replace(",", " ").split()
    return [gpu for gpu in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu]


def _user_name():
    return pwd.getpwuid(os.getuid()).pw_name


class GridEngineConnector(BatchConnector):
    name = "sge"
    listing_cache = "qstat-last.cache"

    def submit(self, spec, spec_path, argv, env):
        log_path = os.path.join(self.store.runners_dir(), spec["id"] + ".log")
        try:
            call = qsub_argv(job_name(self.tag, spec["id"]), log_path, self.store.root, spec["resources"], argv)
            return parse_qsub(commands.run(call, QSUB_TIMEOUT_SECONDS, env=env, cwd=self.store.root))
        except commands.CommandUnavailable as error:
            raise SubmitFailed(str(error), uncertain=error.timed_out) from error
        except (commands.CommandFailed, ValueError) as error:
            raise SubmitFailed(str(error)) from error

    def list_runners(self):
        try:
            stdout = commands.run(qstat_argv(), QSTAT_TIMEOUT_SECONDS)
            runners = parse_qstat(stdout, self.tag)
            failed = jobs_in_error(stdout, self.tag)
        except (commands.CommandUnavailable, commands.CommandFailed, ValueError) as error:
            raise SchedulerUnavailable(str(error)) from error
        if failed:
            self._delete_failed(failed)
        self.remember_listing(runners)
        return runners

    def _delete_failed(self, sched_ids):
        for sched_id in sched_ids:
            try:
                reasons = error_reasons(commands.run(["qstat", "-j", str(sched_id)], QSTAT_TIMEOUT_SECONDS))
            except (commands.CommandUnavailable, commands.CommandFailed):
                reasons = []
            self.problems.append("Grid Engine job %s of a runner is in error state; deleted it: %s"
                                 % (sched_id, "; ".join(reasons) or "no reason given"))
        self.cancel(sched_ids)

    def cancel(self, sched_ids):
        if sched_ids:
            try:
                commands.run(qdel_argv(sched_ids), QSTAT_TIMEOUT_SECONDS)
            except (commands.CommandUnavailable, commands.CommandFailed):
                pass    # the runner is requeued anyway; a later cycle tries again

    def cancel_pending(self, sched_ids):
        """Delete the runners still waiting; never one that started.  ``qdel`` cannot be
        told "only if still pending", so: hold them all (a hold keeps a waiting job from
        starting and does nothing to a running one), list them, delete those still waiting,
        and release the hold of any that started in between.  Returns the ids deleted
        (none when a command could not be run: a later cycle decides again)."""
        if not sched_ids:
            return []
        try:
            commands.run(qhold_argv(sched_ids), QSTAT_TIMEOUT_SECONDS)
        except commands.CommandUnavailable:
            return []
        except commands.CommandFailed:
            pass    # one had ended meanwhile: the others are held all the same
        try:
            waiting = still_waiting(commands.run(qstat_argv(), QSTAT_TIMEOUT_SECONDS), sched_ids)
        except (commands.CommandUnavailable, commands.CommandFailed, ValueError):
            waiting = []
        if waiting:
            self.cancel(waiting)
        started = [sched_id for sched_id in sched_ids if str(sched_id) not in waiting]
        if started:
            try:
                commands.run(qrls_argv(started), QSTAT_TIMEOUT_SECONDS)
            except (commands.CommandUnavailable, commands.CommandFailed):
                pass    # a started job's hold only matters if it is rescheduled
        return waiting

    def allocation_seconds(self, spec):
        """The runner is the job's first process (``-shell n``), so the job's ``h_rt`` is
        what it has left now."""
        return spec.get("time_limit")

    def allocation_gpus(self):
        return allocated_gpus(os.environ)

    def allocation_id(self):
        return os.environ.get("JOB_ID")
