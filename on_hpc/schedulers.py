"""What every scheduler connector offers, and how one is picked by name.

A connector differs from another only in how a runner is submitted, listed and cancelled
and in what a runner learns about its own allocation; the queue logic lives once, in
``headnode`` and ``runner``.
"""
import collections
import hashlib
import os
import signal

PENDING, RUNNING, ENDING = "pending", "running", "ending"

# One line of the scheduler's view of a runner.  ``time_left`` is seconds, or None when
# the allocation has no limit.
# reason: why the scheduler keeps a pending runner waiting (squeue's %r), for status.
RunnerInfo = collections.namedtuple("RunnerInfo", "runner_id sched_id state time_left reason", defaults=("",))


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


def connector(name, store):
    if name == "local":
        from .sched_local import LocalConnector
        return LocalConnector(store)
    if name == "slurm":
        from .sched_slurm import SlurmConnector
        return SlurmConnector(store)
    raise ValueError("unknown scheduler %r (known: local, slurm)" % name)


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


def store_tag(root):
    """A short, stable tag of the workspace, so two installations on one account never
    mistake each other's runners."""
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
