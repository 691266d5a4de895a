"""What every scheduler connector offers, and how one is picked by name.

A connector differs from another only in how a runner is submitted, listed and cancelled
and in what a runner learns about its own allocation; the queue logic lives once, in
``headnode`` and ``runner``.
"""
import collections

PENDING, RUNNING, ENDING = "pending", "running", "ending"

# One line of the scheduler's view of a runner.  ``time_left`` is seconds, or None when
# the allocation has no limit.
RunnerInfo = collections.namedtuple("RunnerInfo", "runner_id sched_id state time_left")


class SchedulerUnavailable(Exception):
    """The scheduler did not answer: keep the last known state, fail nothing."""


def connector(name, store):
    if name == "local":
        from .sched_local import LocalConnector
        return LocalConnector(store)
    if name == "slurm":
        from .sched_slurm import SlurmConnector
        return SlurmConnector(store)
    raise ValueError("unknown scheduler %r (known: local, slurm)" % name)
