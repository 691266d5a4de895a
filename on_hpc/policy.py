"""The runner policy: how many runners a class submits now, which pending ones it cancels,
and how long an idle runner lingers.

One pure decision, called by the head node's ensure step (``headnode.ensure_runner``) and by
the queue-wait simulation (``bench/simulate.py``), so what the simulation measures is what
runs.  Everything is in seconds; nothing here reads a file or calls a scheduler.

Why speculative: with several runners pending, the work goes to whichever starts first, so
a backlog waits for the shortest of several queue waits instead of each job for its own.
Pending runners cost the user nothing until they start, so the policy keeps enough of them
to cover the backlog (and at least ``speculate`` for any backlog at all), and cancels the
ones still pending once the backlog is gone, before they start and hold resources idle.

What bounds it (lessons of HyperQueue's autoalloc, which over-submitted when it counted
work no allocation could serve, and when allocations kept failing): only work a fresh
runner can run is counted (the head node refuses the rest first); live runners' free slots
count before anything is submitted; a hard cap per cycle (``submit_cap``) and per hour
(``submit_per_hour``), so runners that die at start, a scheduler that lists nothing or a
flood of jobs can never flood the queue; and never more live runners than ``max_runners``
or the site's per-user limit (``user_limit``, counted across every class).
"""
import math
from collections import namedtuple

from . import protocol
from .protocol import RunnerState, class_setting

PENDING, ENDING = RunnerState.PENDING, RunnerState.ENDING
HOUR = 3600.0

# The class defaults (protocol.py), chosen with bench/simulate.py; the simulation reads them here.
SPECULATE = protocol.DEFAULT_SPECULATE
SUBMIT_CAP = protocol.DEFAULT_SUBMIT_CAP
SUBMIT_PER_HOUR = protocol.DEFAULT_SUBMIT_PER_HOUR

ARRIVAL_WINDOW = 600.0      # seconds of arrivals the recent rate is taken over
QUEUE_WAIT_GUESS = HOUR     # expected queue wait before any runner has been seen to start
QUEUE_WAIT_WEIGHT = 0.2     # weight of a newly observed queue wait in the running estimate
# Ready work the started runners get through within this fraction of the expected queue
# wait is theirs: a new runner would most likely start after it is done.  Less than the
# whole wait, because the first of several pending runners starts well before the median.
COVER_FRACTION = 0.5
# An adaptive linger is never shorter than this, unless idle_timeout or the queue wait is:
# jobs reach runners a submitter cycle at a time (cron: a minute), so the rest of a
# collection that the next cycle brings finds the runner that took the first part still
# there.  Never longer than a queue wait: a runner that starts sooner than that is cheaper.
CYCLE_LINGER = 60.0

# A class's settings as the policy reads them.  ``idle_timeout``: the fixed linger, or with
# ``adaptive_linger`` the most a runner lingers.  ``user_limit``: the site's limit on the
# user's scheduler jobs (0: none stated).
Settings = namedtuple("Settings", "slots max_runners user_limit speculate submit_cap submit_per_hour "
                                  "idle_timeout adaptive_linger")

# What the policy knows of one live runner of the class.  ``claimed``: jobs it holds now
# (a pending runner holds none); ``usable``: seconds it can still give a job (None: no limit).
Runner = namedtuple("Runner", "runner_id state claimed usable")

# The decision: how many runners to submit now, and which pending runners to cancel.
Decision = namedtuple("Decision", "submit cancel wanted")


def settings_from(request_settings):
    """Policy settings from a class's settings as the cycle request carries them; ``slots``
    here is the whole allocation's (``slots`` per node times ``nodes``)."""
    def get(name):
        return class_setting(request_settings, name)

    return Settings(
        # Jobs one runner takes at once when they ask for nothing: ``slots`` on each node.
        # Jobs that ask for their own cpus, memory or gpus may fit more or fewer; the
        # policy counts in these default-sized places.
        slots=max(1, int(get("slots"))) * max(1, int(get("nodes") or 1)),
        max_runners=max(1, int(get("max_runners"))),
        user_limit=max(0, int(get("user_limit"))),
        speculate=max(1, int(get("speculate"))),
        submit_cap=max(1, int(get("submit_cap"))),
        submit_per_hour=max(1, int(get("submit_per_hour"))),
        idle_timeout=float(get("idle_timeout")),
        adaptive_linger=bool(get("adaptive_linger")),
    )


def decide(settings, ready, runners, others_live=0, submitted_last_hour=0, queue_wait=None):
    """How many runners to submit and which pending ones to cancel, for one class.

    ``ready``: the expected seconds of each ready job of the class (0 when not stated);
    ``runners``: the class's live runners (``Runner``); ``others_live``: live runners of
    other classes (they count against ``user_limit``); ``submitted_last_hour``: this class's
    submissions in the past hour; ``queue_wait``: the expected queue wait in seconds, when
    known: ready work the started runners will get through sooner needs no new runner.
    """
    live = [runner for runner in runners if runner.state != ENDING]
    started = [runner for runner in live if runner.state != PENDING or runner.claimed]
    # Newest last: the oldest pending runners are nearest the front of the queue.
    pending = [runner for runner in live if runner.state == PENDING and not runner.claimed]
    uncovered = _uncovered(settings.slots, ready, started, queue_wait)
    wanted = 0
    if uncovered:
        wanted = max(int(math.ceil(uncovered / float(settings.slots))), settings.speculate)
    ceiling = settings.max_runners
    if settings.user_limit:
        ceiling = min(ceiling, settings.user_limit - others_live)
    wanted = max(0, min(wanted, ceiling - len(started)))
    surplus = max(0, len(pending) - wanted)
    cancel = tuple(runner.runner_id for runner in pending[len(pending) - surplus:]) if surplus else ()
    submit = min(wanted - len(pending), settings.submit_cap,
                 settings.submit_per_hour - submitted_last_hour)
    return Decision(max(0, submit), cancel, wanted)


def _uncovered(slots, ready, started, queue_wait):
    """Ready jobs the started runners will not take in time: more than their free slots
    (or than they get through within one queue wait, when every job states its time), or
    expecting more time than any of them has left."""
    if not ready:
        return 0
    if not started:
        return len(ready)
    limits = [runner.usable for runner in started]
    best = None if None in limits else max(limits)
    fitting = [expected for expected in ready if best is None or expected <= best]
    covered = sum(max(0, slots - runner.claimed) for runner in started)
    if queue_wait and fitting and min(fitting) > 0:
        # The slots of the started runners, over part of a queue wait or the time each has
        # left if less, taken in queue order.
        horizon = queue_wait * COVER_FRACTION
        budget = sum(slots * (horizon if runner.usable is None else min(horizon, runner.usable))
                     for runner in started)
        through = 0
        for expected in fitting:
            budget -= expected
            if budget < 0:
                break
            through += 1
        covered = max(covered, through)
    return max(0, len(fitting) - covered) + (len(ready) - len(fitting))


def linger_seconds(settings, arrival_rate, queue_wait):
    """How long an idle runner of the class waits for work before it leaves.

    Fixed (``adaptive_linger`` off): ``idle_timeout``.  Adaptive: a runner idle for a
    moment more holds ``slots`` units idle for that moment and catches a job arriving in it
    with probability ``arrival_rate`` per second, saving that job a queue wait; with
    Poisson arrivals that trade is the same at every moment, so it lingers (up to
    ``idle_timeout``) exactly while ``arrival_rate * queue_wait >= slots``: while the jobs
    expected within one queue wait would at least fill the slots it holds; otherwise it
    waits one submitter cycle (``CYCLE_LINGER``), or one queue wait if that is shorter (on
    the local scheduler, none).  The rate is re-read while it waits, so it leaves when
    arrivals stop.
    """
    if not settings.adaptive_linger:
        return settings.idle_timeout
    if arrival_rate * queue_wait >= settings.slots:
        return settings.idle_timeout
    return max(0.0, min(settings.idle_timeout, CYCLE_LINGER, queue_wait))


def arrival_rate(arrivals, now, window=ARRIVAL_WINDOW):
    """Jobs per second over the last ``window`` seconds, from their arrival times."""
    return sum(1 for moment in arrivals if now - window < moment <= now) / float(window)


def recent(moments, now, window):
    """The moments within the last ``window`` seconds (what a state file keeps)."""
    return [moment for moment in moments if now - moment < window]


def queue_wait_estimate(previous, observed):
    """Running estimate of the queue wait from one more runner seen to start."""
    if previous is None:
        return float(observed)
    return (1 - QUEUE_WAIT_WEIGHT) * previous + QUEUE_WAIT_WEIGHT * float(observed)
