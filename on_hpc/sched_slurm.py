"""Slurm: runners are batch jobs.

Commands are built by pure functions and parsed by pure functions, so the Slurm dialect
is tested with plain strings.  ``squeue`` is called once per cycle for all runners (the
Slurm manual asks tools not to poll it in loops) and once by each runner at its start, for
its time left; ``sacct`` is never used (clusters without slurmdbd have none).
"""
import os
import shlex

from . import commands
from .durations import parse_clock
from .files import read_json
from .protocol import RunnerState
from .resources import Node, gres_gpus, memory_mb, node_cpus, parse_cpus_per_node
from .schedulers import (
    BatchConnector,
    RunnerInfo,
    SchedulerUnavailable,
    SubmitFailed,
    effective_warn_seconds,
)

# Slurm's job states (squeue %T) and what they mean for a runner.  A state not listed
# here (a new Slurm's, or a terminal one squeue shows for a moment) counts as ENDING:
# the runner is not taking work, but its claims are left alone until it is gone.
PENDING, RUNNING, ENDING = RunnerState.PENDING, RunnerState.RUNNING, RunnerState.ENDING
STATE_MAP = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING,
    "REQUEUE_FED": PENDING, "RESIZING": PENDING, "RESV_DEL_HOLD": PENDING,
    "RUNNING": RUNNING,
    "COMPLETING": ENDING, "STOPPED": ENDING, "SUSPENDED": ENDING, "SIGNALING": ENDING,
    "STAGE_OUT": ENDING, "PREEMPTED": ENDING, "TIMEOUT": ENDING, "CANCELLED": ENDING,
    "COMPLETED": ENDING, "FAILED": ENDING, "NODE_FAIL": ENDING, "BOOT_FAIL": ENDING,
    "DEADLINE": ENDING, "OUT_OF_MEMORY": ENDING, "SPECIAL_EXIT": ENDING, "REVOKED": ENDING,
}
JOB_NAME_PREFIX = "dbr."
SQUEUE_FORMAT = "%i|%j|%T|%L|%r"   # %r: why a pending job waits (Priority, Resources...)
SQUEUE_TIMEOUT_SECONDS = 60
SBATCH_TIMEOUT_SECONDS = 120


def job_name(tag, runner_id):
    """``dbr.<workspace tag>.<runner id>``: squeue is the truth about which runners
    exist, and this name is how a runner is recognised in it, even one whose submission
    was never recorded (a crash between ``sbatch`` and writing its job id)."""
    return "%s%s.%s" % (JOB_NAME_PREFIX, tag, runner_id)


def sbatch_argv(name, log_path, workdir, resources, command):
    """The sbatch call for one runner; ``command`` is the argv the allocation runs.

    ``resources`` are the class's settings; they describe what one node of the runner's
    allocation holds (``nodes`` of them), which its jobs share.  Jobs started as job
    steps need their CPUs in the allocation: a class that names no ``cpus`` gets one per
    slot.
    """
    argv = ["sbatch", "--parsable", "--job-name=" + name, "--output=" + log_path,
            "--open-mode=append", "--chdir=" + workdir,
            # Slurm must not restart a runner by itself (node failure): a restarted
            # runner would not know the jobs it had claimed.  Its jobs are requeued by
            # the next cycle, which submits a fresh runner if work is waiting.
            "--no-requeue"]
    if resources.get("partition"):
        argv.append("--partition=" + resources["partition"])
    if resources.get("gres"):
        argv.append("--gres=" + resources["gres"])
    elif isinstance(resources.get("gpus"), int) and resources["gpus"] > 0:
        argv.append("--gres=gpu:%d" % resources["gpus"])
    nodes = int(resources.get("nodes") or 1)
    if nodes > 1:
        # One task per node, so --cpus-per-task, --mem and --gres are each node's.
        argv += ["--nodes=%d" % nodes, "--ntasks-per-node=1"]
    if resources.get("cpus"):
        argv.append("--cpus-per-task=%d" % int(resources["cpus"]))
    elif launches_steps(resources) and int(resources.get("slots") or 1) > 1:
        argv.append("--cpus-per-task=%d" % int(resources["slots"]))
    if resources.get("memory"):
        argv.append("--mem=" + str(resources["memory"]))
    if resources.get("time_limit"):
        argv.append("--time=" + slurm_minutes(resources["time_limit"]))
    warn = effective_warn_seconds(resources.get("time_limit"), resources.get("warn_seconds"))
    if warn:
        # B: signals the batch shell only, which is our runner (the wrap execs it); it
        # ends its jobs itself and hands them back as interrupted.
        argv.append("--signal=B:USR1@%d" % warn)
    argv.extend(str(arg) for arg in resources.get("extra_args") or [])
    argv.append("--wrap=exec " + " ".join(shlex.quote(part) for part in command))
    return argv


def launches_steps(resources):
    """Jobs run as job steps unless the class says ``launch: process``."""
    return resources.get("launch") != "process"


def srun_argv(argv, job_id, request, node, step_file):
    """One job as a step of the runner's allocation, confined to what it asked for.

    ``--exact``: only the CPUs asked (Slurm 21.08 and later otherwise give a step the
    whole allocation); ``--gres=none`` keeps a job that asked for no GPU from taking all
    of them.  The step writes ``<job id>.<step id>`` to ``step_file`` before the job
    starts, so the runner can cancel it through Slurm and name it in the result.
    """
    call = ["srun", "--exact", "--nodes=1", "--ntasks=1", "--cpus-per-task=%d" % request.cpus,
            "--nodelist=" + node, "--job-name=" + job_id, "--quiet",
            "--gres=gpu:%d" % request.gpus if request.gpus else "--gres=none"]
    if request.memory_mb:
        call.append("--mem=%dM" % request.memory_mb)
    record = 'echo "$SLURM_JOB_ID.$SLURM_STEP_ID" > %s && exec "$@"' % shlex.quote(step_file)
    return call + ["/bin/sh", "-c", record, "dbr-step"] + list(argv)


def scancel_steps_argv(step_ids):
    return ["scancel", "--quiet"] + [str(step) for step in step_ids]


def allocation_layout(environ, resources, hostnames=None):
    """The nodes of this allocation, each with its CPUs, memory and GPUs.

    Names from ``SLURM_JOB_NODELIST`` (``hostnames`` expands a compressed list), CPUs from
    ``SLURM_JOB_CPUS_PER_NODE`` when jobs run as steps (what Slurm will let them use),
    memory from ``SLURM_MEM_PER_NODE`` or the class.  Plain processes can only run on the
    batch node, with the class's CPUs (or its slots) and the GPUs Slurm gave that node.
    """
    batch_node = environ.get("SLURMD_NODENAME") or os.uname().nodename
    gpus = allocated_gpus(environ)
    memory = memory_mb(environ.get("SLURM_MEM_PER_NODE")) or memory_mb(resources.get("memory"))
    if not launches_steps(resources):
        return [Node(batch_node, node_cpus(resources), memory, gpus)]
    listed = environ.get("SLURM_JOB_NODELIST") or batch_node
    names = (hostnames or _plain_hostnames)(listed) or [batch_node]
    cpus = parse_cpus_per_node(environ.get("SLURM_JOB_CPUS_PER_NODE"))
    if len(cpus) != len(names):
        cpus = [node_cpus(resources)] * len(names)
    per_node_gpus = len(gpus) or gres_gpus(resources.get("gres"))
    return [Node(name, cpus[index], memory,
                 gpus if name == batch_node and gpus else [str(n) for n in range(per_node_gpus)])
            for index, name in enumerate(names)]


def _plain_hostnames(listed):
    """A node list with no ranges in it (``a,b``); None when it has some (``a[1-2]``)."""
    return None if "[" in listed else [name for name in listed.split(",") if name]


def scontrol_hostnames(listed):
    """``scontrol show hostnames`` expands Slurm's compressed node lists."""
    plain = _plain_hostnames(listed)
    if plain is not None:
        return plain
    try:
        return commands.run(["scontrol", "show", "hostnames", listed], SQUEUE_TIMEOUT_SECONDS).split()
    except (commands.CommandUnavailable, commands.CommandFailed):
        return None


def slurm_minutes(seconds):
    """Slurm counts time limits in whole minutes: round up, never below one."""
    return str(max(1, (int(seconds) + 59) // 60))


def parse_sbatch(stdout):
    """``--parsable`` prints ``jobid`` or ``jobid;cluster`` (after any warnings)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    job_id = lines[-1].split(";")[0].strip() if lines else ""
    if not job_id.isdigit():
        raise ValueError("sbatch printed no job id: %r" % stdout)
    return job_id


def squeue_argv(user=None):
    """One listing of this account's jobs (every state squeue shows by default)."""
    user = os.getuid() if user is None else user
    return ["squeue", "--noheader", "--user=%s" % user, "--format=" + SQUEUE_FORMAT]


def time_left_argv(sched_id):
    return ["squeue", "--noheader", "--jobs=" + str(sched_id), "--format=%L"]


def parse_squeue(stdout, tag, limits=None):
    """Runners of this workspace, by runner id, from the one squeue listing.

    ``limits`` maps runner ids to their time limit in seconds, used when squeue cannot
    say how much time a runner has (``NOT_SET``: a pending job's limit not established).
    """
    prefix = JOB_NAME_PREFIX + tag + "."
    limits = limits or {}
    found = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) not in (4, 5) or not parts[1].startswith(prefix):
            continue
        sched_id, name, state, left = (part.strip() for part in parts[:4])
        reason = parts[4].strip() if len(parts) == 5 and state == "PENDING" else ""
        runner_id = name[len(prefix):]
        try:
            seconds = parse_time_left(left)
        except ValueError:
            seconds = limits.get(runner_id)
        found[runner_id] = RunnerInfo(runner_id, sched_id, STATE_MAP.get(state, ENDING), seconds, reason)
    return found


def parse_time_left(text):
    """Seconds from squeue's ``%L``: ``[days-][hours:]minutes:seconds``.

    None for ``UNLIMITED``; 0 for ``INVALID`` (what Slurm shows for a job past its
    limit); ValueError for ``NOT_SET`` and anything else it cannot read.
    """
    text = text.strip()
    if text == "UNLIMITED":
        return None
    if text == "INVALID":
        return 0
    seconds = parse_clock(text)
    if seconds is None:
        # "1-00" (days-hours) is a valid Slurm time but squeue's %L never prints it.
        raise ValueError("not a time left: %r" % text)
    return seconds


def scancel_argv(sched_ids):
    return ["scancel"] + [str(sched_id) for sched_id in sched_ids]


def scancel_pending_argv(sched_ids):
    """Cancel only those of the jobs that are still pending: Slurm checks the state as it
    cancels, so a runner that starts meanwhile is left running."""
    return ["scancel", "--state=PENDING"] + [str(sched_id) for sched_id in sched_ids]


def allocated_gpus(environ):
    """The GPUs of this allocation, as the jobs started in it must name them.

    ``SLURM_JOB_GPUS`` (or ``SLURM_STEP_GPUS``) says whether the allocation has GPUs at
    all; ``CUDA_VISIBLE_DEVICES`` says how CUDA numbers them here (with device cgroups,
    0..n-1 rather than the node's numbers), so it is preferred when it lists as many.
    """
    allocated = environ.get("SLURM_STEP_GPUS") or environ.get("SLURM_JOB_GPUS") or ""
    allocated = [gpu for gpu in allocated.split(",") if gpu]
    if not allocated:
        return []
    visible = [gpu for gpu in environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if gpu]
    return visible if len(visible) == len(allocated) else allocated


class SlurmConnector(BatchConnector):
    name = "slurm"
    listing_cache = "squeue-last.json"

    def submit(self, spec, spec_path, argv, env):
        log_path = os.path.join(self.store.runners_dir(), spec["id"] + ".log")
        call = sbatch_argv(job_name(self.tag, spec["id"]), log_path, self.store.root,
                           spec["resources"], argv)
        try:
            stdout = commands.run(call, SBATCH_TIMEOUT_SECONDS, env=env, cwd=self.store.root)
            return parse_sbatch(stdout)
        except commands.CommandUnavailable as error:
            raise SubmitFailed(str(error), uncertain=error.timed_out) from error
        except (commands.CommandFailed, ValueError) as error:
            raise SubmitFailed(str(error)) from error

    def list_runners(self):
        try:
            stdout = commands.run(squeue_argv(), SQUEUE_TIMEOUT_SECONDS)
        except (commands.CommandUnavailable, commands.CommandFailed) as error:
            raise SchedulerUnavailable(str(error)) from error
        limits = self._limits() if "NOT_SET" in stdout else {}
        runners = parse_squeue(stdout, self.tag, limits)
        self.remember_listing(runners)
        return runners

    def cancel(self, sched_ids):
        if sched_ids:
            try:
                commands.run(scancel_argv(sched_ids), SQUEUE_TIMEOUT_SECONDS)
            except (commands.CommandUnavailable, commands.CommandFailed):
                pass    # the runner is requeued anyway; a later cycle tries again

    def cancel_pending(self, sched_ids):
        """Cancel runners that are still pending; returns the ids Slurm was asked to cancel
        (none when scancel could not be run: a later cycle decides again).  scancel exits
        non-zero when one of them was no longer pending; the others are cancelled all the
        same, and the next listing says which."""
        if not sched_ids:
            return []
        try:
            commands.run(scancel_pending_argv(sched_ids), SQUEUE_TIMEOUT_SECONDS)
        except commands.CommandUnavailable:
            return []
        except commands.CommandFailed:
            pass
        return list(sched_ids)

    def allocation_seconds(self, spec):
        """The allocation's time left, read once (one squeue call per runner)."""
        sched_id = os.environ.get("SLURM_JOB_ID")
        if not sched_id:
            return spec.get("time_limit")
        try:
            return parse_time_left(commands.run(time_left_argv(sched_id), SQUEUE_TIMEOUT_SECONDS))
        except (commands.CommandUnavailable, commands.CommandFailed, ValueError):
            return spec.get("time_limit")

    def allocation_gpus(self):
        return allocated_gpus(os.environ)

    def allocation_id(self):
        return os.environ.get("SLURM_JOB_ID")

    def allocation_nodes(self, resources):
        return allocation_layout(os.environ, resources, scontrol_hostnames)

    def launches_steps(self, resources):
        return launches_steps(resources)

    def step_argv(self, argv, job_id, request, placement, step_file):
        return srun_argv(argv, job_id, request, placement.node, step_file)

    def cancel_steps(self, step_ids):
        """End job steps through Slurm (what their process group does not hold too)."""
        step_ids = [step for step in step_ids if step]
        if step_ids:
            try:
                commands.run(scancel_steps_argv(step_ids), SQUEUE_TIMEOUT_SECONDS)
            except (commands.CommandUnavailable, commands.CommandFailed):
                pass    # the step ends with the allocation at the latest

    def _limits(self):
        """Time limits of the runners this workspace recorded, by runner id."""
        limits = {}
        for name in os.listdir(self.store.runners_dir()):
            if name.endswith(".json") and not name.endswith(".alive.json"):
                record = read_json(os.path.join(self.store.runners_dir(), name), {})
                if record.get("id"):
                    limits[record["id"]] = record.get("time_limit")
        return limits
