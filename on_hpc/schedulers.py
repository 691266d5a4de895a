"""What every scheduler connector offers, and how one is picked by name.

A connector differs from another only in how a runner is submitted, listed and cancelled,
in what a runner learns about its own allocation, and in how a job is started inside it;
the queue logic lives once, in ``headnode`` and ``runner``.  Adding a scheduler is one
module with a ``Connector`` subclass and one line in ``CONNECTORS``.
"""
import collections
import importlib
import os
import signal

from .durations import format_duration
from .files import read_json, write_json
from .resources import Node, memory_mb, node_cpus

# One line of the scheduler's view of a runner.  ``state`` is a RunnerState; ``time_left``
# is seconds, or None when the allocation has no limit; ``reason`` is why the scheduler
# keeps a pending runner waiting (squeue's %r), shown by status.
RunnerInfo = collections.namedtuple("RunnerInfo", "runner_id sched_id state time_left reason", defaults=("",))

# Connector classes by scheduler name, imported only when chosen.
CONNECTORS = {
    "local": "sched_local.LocalConnector",
    "slurm": "sched_slurm.SlurmConnector",
    "sge": "sched_sge.GridEngineConnector",
}


class SchedulerUnavailable(Exception):
    """The scheduler did not answer: keep the last known state, fail nothing."""


class SubmitFailed(Exception):
    """The scheduler refused or did not take a runner; the jobs wait, nothing fails.

    ``uncertain`` when the runner may have been submitted all the same (a timeout): its
    record is kept, and the scheduler's listing settles it.
    """

    def __init__(self, message, uncertain=False):
        super(SubmitFailed, self).__init__(message)
        self.uncertain = uncertain


class Connector(object):
    """A batch scheduler as the queue logic needs it.

    The head node calls ``submit``, ``list_runners`` (once per cycle), ``cancel``,
    ``cancel_pending`` and ``kill_leftovers``; a runner calls the ``allocation_*`` methods from inside its
    allocation to learn its id, time, nodes and GPUs, and, where the scheduler runs jobs as
    steps of the allocation (``launches_steps``), ``step_argv`` and ``cancel_steps``.
    Listing failures raise SchedulerUnavailable and the head node falls back on
    ``last_known_runners``: a scheduler's hiccup never fails or requeues a job.
    """

    name = ""
    # True when a runner shows in ``list_runners`` from the moment ``submit`` returns, so
    # a recorded runner that a good listing lacks has ended (Slurm).  False when it shows
    # only once it has started (local processes): the record then counts as pending.
    lists_at_submission = False
    # True when runners wait in a queue before they start: a class then gets the queued
    # defaults (protocol.runner_defaults), and pending runners are worth racing.
    queues_runners = False
    # True when a stop of the allocation (a cancel, the time limit) signals every process
    # in it at once, the runner and its jobs alike: a job may then end of it, in whatever
    # way it makes of the signal, before the runner hears of its own stop.
    signals_whole_allocation = False

    def __init__(self, store):
        self.store = store
        # What the operator should hear of from a listing (a runner the scheduler could not
        # start and the connector deleted): the head node adds it to the cycle's errors.
        self.problems = []

    def submit(self, spec, spec_path, argv, env):
        """Start or queue a runner that runs ``argv``; return its scheduler id.
        Raise SubmitFailed (``uncertain`` when it may have been queued all the same)."""
        raise NotImplementedError

    def list_runners(self):
        """This workspace's runners by runner id (RunnerInfo); SchedulerUnavailable when
        the scheduler does not answer."""
        raise NotImplementedError

    def last_known_runners(self):
        """The last good listing, for a cycle whose listing failed."""
        raise NotImplementedError

    def cancel(self, sched_ids):
        """Ask the scheduler to end these runners; a failure is left to a later cycle."""
        raise NotImplementedError

    def cancel_pending(self, sched_ids):
        """Cancel those of these runners that are still waiting in the scheduler's queue,
        leaving any that has started; return the ids the scheduler was asked to cancel.
        By default nothing: local runners never wait in a queue (one counted as pending is
        a process still starting), and a scheduler that cannot cancel by state keeps its
        surplus runners until they start and leave idle."""
        return []

    def kill_leftovers(self, job_id, claim):
        """End what a runner that died outright left of a job (``claim``: its runner's
        record of the job's start, see ``claims``).  By default nothing: the scheduler ends
        an allocation's processes."""

    def allocation_seconds(self, spec):
        """Inside a runner: the seconds its allocation has left, or None for no limit."""
        return spec.get("time_limit")

    def allocation_gpus(self):
        """Inside a runner: the GPU ids its jobs may be given."""
        return []

    def allocation_id(self):
        """Inside a runner: its allocation's scheduler id, or None where the runner's own
        pid is the only id (local processes)."""
        return None

    def allocation_nodes(self, resources):
        """Inside a runner: the nodes of its allocation (``resources.Node``), which the
        runner's ledger packs jobs onto.  By default one: this host, with the class's CPUs
        and memory and the allocation's GPUs."""
        return [Node(os.uname().nodename, node_cpus(resources), memory_mb(resources.get("memory")),
                     self.allocation_gpus())]

    def launches_steps(self, resources):
        """Whether jobs run as the scheduler's own steps (``step_argv``) rather than as
        plain process groups of the runner."""
        return False

    def step_argv(self, argv, job_id, request, placement, step_file):
        """The command that runs ``argv`` as a step with the job's resources on its node."""
        raise NotImplementedError

    def cancel_steps(self, step_ids):
        """End job steps through the scheduler; nothing to do where there are none."""


class BatchConnector(Connector):
    """A batch scheduler reached through its commands (Slurm, Grid Engine): it lists a job
    from the moment it is submitted, runners are recognised by a job name carrying this
    workspace's tag, and the last good listing is kept for a cycle whose listing fails."""

    lists_at_submission = True
    queues_runners = True
    signals_whole_allocation = True
    # File in runners/ for the last good listing; not a .json name other than this one's
    # own, since the head node reads runners/*.json as runner records.
    listing_cache = ""

    def __init__(self, store):
        super(BatchConnector, self).__init__(store)
        self.tag = store_tag(store.root)

    def remember_listing(self, runners):
        write_json(os.path.join(self.store.runners_dir(), self.listing_cache),
                   {key: list(value) for key, value in runners.items()})

    def last_known_runners(self):
        path = os.path.join(self.store.runners_dir(), self.listing_cache)
        return {key: RunnerInfo(*value) for key, value in read_json(path, {}).items()}

    def kill_leftovers(self, job_id, claim):
        """The scheduler ends what a lost allocation left running, except processes it does
        not track (a job's own session, where processes are tracked by group).  On the head
        node's own host those can be ended here, as the local scheduler does."""
        if claim.get("host") == os.uname().nodename:
            kill_job_group(claim.get("pgid"), job_id)


def connector_class(name):
    """The Connector subclass for a scheduler name (``scheduler:`` in the submitter's config)."""
    if name not in CONNECTORS:
        raise ValueError("unknown scheduler %r (known: %s)" % (name, ", ".join(sorted(CONNECTORS))))
    module_name, class_name = CONNECTORS[name].split(".")
    return getattr(importlib.import_module("." + module_name, __package__), class_name)


def connector(name, store):
    """The connector for a scheduler name, working in ``store``'s workspace."""
    return connector_class(name)(store)


def effective_warn_seconds(time_limit, warn_seconds):
    """How long before its time limit a runner stops taking and hands back its jobs.

    Never more than half the limit, so a short limit with the default warning still
    leaves a runner time to work; 0 when there is no limit or no warning wanted.
    """
    if not time_limit or not warn_seconds:
        return 0
    return int(min(int(warn_seconds), int(time_limit) // 2))


def usable_seconds(time_limit, warn_seconds):
    """The longest job a fresh runner of a class can finish before it is warned to
    stop; None when the class has no time limit."""
    if not time_limit:
        return None
    return int(time_limit) - effective_warn_seconds(time_limit, warn_seconds)


def too_long_message(expected, job_class, time_limit, usable):
    """The one wording of the rule that a job must fit what a fresh runner of its class
    can give it (its time limit less the warning), used at intake, on the head node and
    in the runner alike."""
    return ("expected_time %s exceeds what a runner of class %r can give a job: its time_limit %s less %s "
            "warning = %s" % (format_duration(expected), job_class, format_duration(time_limit),
                              format_duration(time_limit - usable), format_duration(usable)))


def store_tag(root):
    """A short, stable tag of the workspace, so two installations on one account never
    mistake each other's runners.  ``hashlib`` (OpenSSL) is imported here, by the
    connectors that name runners: 2 ms of every ``on_hpc`` start otherwise."""
    import hashlib
    return hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:6]


def kill_job_group(pgid, job_id):
    """End a job's process group left behind by a runner that died outright, after
    checking that the group still is that job (its leader carries ``DBR_JOB_ID``)."""
    if pgid and _has_env(pgid, "DBR_JOB_ID=" + job_id):
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _has_env(pid, entry):
    try:
        with open("/proc/%d/environ" % pid, "rb") as handle:
            return entry.encode() in handle.read().split(b"\0")
    except (OSError, ValueError, TypeError):
        return False
