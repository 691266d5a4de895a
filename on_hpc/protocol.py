"""The words the submitter and the cluster side share, spelled once.

Both halves import this module: ``on_hpc`` on the cluster and ``dropbox_runner`` through
its ``dropbox_runner.on_hpc`` copy.  The deployed folder is named after the hash of this
code, so the two sides of one cycle always speak the same version of it.

It holds three things:

- one vocabulary of job states, used by the dropbox, the history store and the cluster's
  job queue alike (each layer sees the part of the life it can see);
- the request and answer of ``python3 -m on_hpc cycle``, and the finished record a runner
  writes for each job, as small message classes with tolerant ``from_json`` readers (an
  older file with fewer keys, or a newer one with more, still reads);
- the defaults of a resource class, so a missing setting means the same on both sides.

Standard library only, Python 3.8.
"""

class JobState(object):
    """Where a job is in its life; each moves only forward (a requeue is RUNNING -> QUEUED).

    ======================  ==================  ================  =======================
    state                   dropbox             history           cluster (jobstore)
    ======================  ==================  ================  =======================
    WAITING                 ``x.job``           waiting
    SUBMITTED               ``x.job.submitted`` submitted         staged in ``jobs/<id>``
    QUEUED                  ``x.job.submitted`` queued            marker in ``ready/``
    RUNNING                 ``x.job.submitted`` running           marker in ``claimed/``
    DONE                    ``x.job.submitted`` (not recorded)    marker in ``done/``
    FINISHED                ``x.job.finished``  finished          removed
    ======================  ==================  ================  =======================

    ABSENT is not a state a job is in but an answer: the cluster has no trace of a job the
    submitter holds (lost workspace), and the submitter sends it again.
    """

    WAITING = "waiting"
    SUBMITTED = "submitted"
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FINISHED = "finished"
    ABSENT = "absent"

    # The states the history store records while the job is on the cluster.
    IN_FLIGHT = (SUBMITTED, QUEUED, RUNNING)


class RunnerState(object):
    """A runner as the scheduler lists it."""

    PENDING = "pending"      # waiting in the scheduler's queue (or just submitted)
    RUNNING = "running"      # has its allocation and takes work
    ENDING = "ending"        # leaving: takes no work; its claims are settled once it is gone


class Release(object):
    """What became of a job handed back by (or taken from) its runner."""

    REQUEUED = "requeued"    # ready again for another runner
    FAILED = "failed"        # interrupted max_attempts times: ended with an error record
    DONE = "done"            # it had finished after all: never run twice
    GONE = "gone"            # its claim was no longer this runner's: already handed back


# ------------------------------------------------------------------------------ classes
# A resource class's settings as the cycle request carries them; a setting left out (or
# None) means this.  The submitter's config builds its dataclass from the same values.
DEFAULT_SLOTS = 1
DEFAULT_MAX_RUNNERS = 1
DEFAULT_IDLE_TIMEOUT = 60        # seconds a runner waits for work before leaving
DEFAULT_WARN_SECONDS = 60        # how long before its limit a runner stops and hands back
DEFAULT_MAX_ATTEMPTS = 3         # runs a job may start before an interruption fails it
DEFAULT_HEARTBEAT_TIMEOUT = 300  # a runner silent this long is taken for lost
# The runner policy (on_hpc/policy.py), chosen with bench/simulate.py (README, "Runner policy").
DEFAULT_USER_LIMIT = 0           # the site's per-user job limit, all classes together; 0: none stated
DEFAULT_SPECULATE = 1            # runners kept pending for any backlog at all
DEFAULT_SUBMIT_CAP = 8           # most runner submissions per class per cycle
DEFAULT_SUBMIT_PER_HOUR = 24     # most runner submissions per class in any hour
# How every on_hpc process starts: ``-S`` leaves out the ``site`` module, whose
# site-packages (a venv's, a user's ``.pth`` files) on_hpc, stdlib only, never needs: some
# 10 ms of each command's start here, paid by every cycle and every runner, and a broken
# ``.pth`` in a user's site-packages cannot stop a cycle.
ON_HPC_ARGV = ("-S", "-m", "on_hpc")
# A deployed version's folder is complete once it holds this file; a command whose folder
# lacks it exits with DEPLOY_NEEDED (the shell line checks it, ``serve`` before each request).
STAMP_FILE = "STAMP"
DEPLOY_NEEDED = 99
START_ERROR_SUFFIX = ".start-error"  # beside a runner's spec: why it could not start (runner, head node)
DEFAULT_ADAPTIVE_LINGER = False  # linger only while recent arrivals pay for it (idle_timeout: the most)

# Where runners wait in a queue (Slurm, Grid Engine), a class the config says nothing more
# of gets the settings the simulation chose (README, "Runner policy"): runners enough for
# QUEUED_RUNNER_PLACES jobs at once (14 one-GPU runners, 4 of 4 slots), pending ones racing
# for a backlog, and a linger that pays for itself, up to half an hour.  The defaults above
# are for the local scheduler, whose runners share one machine and never wait: one runner,
# a fixed minute's linger.
QUEUED_RUNNER_PLACES = 14
QUEUED_IDLE_TIMEOUT = 1800
QUEUED_ADAPTIVE_LINGER = True

CLASS_DEFAULTS = {
    "slots": DEFAULT_SLOTS,
    "max_runners": DEFAULT_MAX_RUNNERS,
    "idle_timeout": DEFAULT_IDLE_TIMEOUT,
    "warn_seconds": DEFAULT_WARN_SECONDS,
    "user_limit": DEFAULT_USER_LIMIT,
    "speculate": DEFAULT_SPECULATE,
    "submit_cap": DEFAULT_SUBMIT_CAP,
    "submit_per_hour": DEFAULT_SUBMIT_PER_HOUR,
    "adaptive_linger": DEFAULT_ADAPTIVE_LINGER,
}


def runner_defaults(queued, slots=DEFAULT_SLOTS, nodes=1):
    """``max_runners``, ``idle_timeout`` and ``adaptive_linger`` for a class that does not
    set them, of ``slots`` jobs per node on ``nodes`` nodes; ``queued``: its scheduler keeps
    runners waiting in a queue."""
    if not queued:
        return {"max_runners": DEFAULT_MAX_RUNNERS, "idle_timeout": DEFAULT_IDLE_TIMEOUT,
                "adaptive_linger": DEFAULT_ADAPTIVE_LINGER}
    places = max(1, slots) * max(1, nodes)
    return {"max_runners": max(1, -(-QUEUED_RUNNER_PLACES // places)), "idle_timeout": QUEUED_IDLE_TIMEOUT,
            "adaptive_linger": QUEUED_ADAPTIVE_LINGER}


def class_setting(settings, name):
    """One setting of a class as sent in a request, with the shared default."""
    value = settings.get(name)
    if value is None:
        return CLASS_DEFAULTS.get(name)
    return value


# ------------------------------------------------------------------------------ messages
REQUIRED = object()     # a field's default: none, the message must be given it


class Message(object):
    """A flat record of JSON values, declared as class attributes holding each field's
    default (``REQUIRED`` for none; a list or dict is copied for each message).

    Not a ``dataclass``: every on_hpc command is a fresh interpreter (each cycle, each wait,
    each runner and sweep), and ``dataclasses`` with the ``inspect``, ``ast`` and
    ``typing`` it imports was a quarter of such a command's start (8.5 of 36 ms, measured
    as in bench/OVERHEAD.md, "fourteenth round")."""

    FIELDS = ()     # the field names in order, filled in for each direct subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.FIELDS = tuple(name for name, value in vars(cls).items()
                           if not name.startswith("_") and name != "FIELDS" and not callable(value)
                           and not isinstance(value, (classmethod, staticmethod, property)))

    def __init__(self, **values):
        for name in self.FIELDS:
            if name in values:
                value = values.pop(name)
            else:
                value = getattr(type(self), name)
                if value is REQUIRED:
                    raise TypeError("%s needs %s" % (type(self).__name__, name))
                if isinstance(value, (list, dict)):
                    value = type(value)(value)
            setattr(self, name, value)
        if values:
            raise TypeError("%s has no field %s" % (type(self).__name__, ", ".join(sorted(values))))

    @classmethod
    def from_json(cls, data):
        """Build the message from a JSON object, ignoring keys this version does not know."""
        return cls(**{key: value for key, value in (data or {}).items() if key in cls.FIELDS})

    def to_json(self):
        """The fields as a JSON object.  Shallow: the values are already plain JSON values
        (a deep copy was a quarter of a 250-job ``on_hpc cycle``)."""
        return {name: getattr(self, name) for name in self.FIELDS}

    def __eq__(self, other):
        return type(other) is type(self) and self.to_json() == other.to_json()

    __hash__ = None     # mutable, as a dataclass is

    def __repr__(self):
        return "%s(%s)" % (type(self).__name__, ", ".join("%s=%r" % (name, getattr(self, name))
                                                          for name in self.FIELDS))


class CycleRequest(Message):
    """What the submitter sends to ``on_hpc cycle``: everything the cluster side needs to
    do a whole cycle's work in one command."""

    root = REQUIRED                 # the workspace
    scheduler = REQUIRED            # a connector's name (schedulers.CONNECTORS)
    submitter = REQUIRED            # the submitter id: the prefix of its job ids
    pythonpath = ""                 # the deployed on_hpc folder, for runners
    python = ""                     # the interpreter runners start with
    in_flight = []                  # every job id the submitter holds
    cancel = []
    unsent = []                     # held, but their push failed: not to be queued
    remove_collected = True         # False when the submitter could not read all its holds
    classes = {}                    # class -> its settings
    max_attempts = DEFAULT_MAX_ATTEMPTS
    heartbeat_timeout = DEFAULT_HEARTBEAT_TIMEOUT


class CycleAnswer(Message):
    """What ``on_hpc cycle`` answers about the submitter's jobs and the runners."""

    states = {}                     # held job id -> JobState
    claimed_by = {}                 # running job id -> runner id
    finished = []                   # {"id", "record"} of DONE jobs
    removed = []                    # collected jobs deleted now
    requeued = []                   # {"id", "outcome", "reason"}
    refused = []                    # {"id", "reason"}
    submitted = []                  # {"runner", "class", "sched_id"}
    cancelled_runners = []          # {"runner", "sched_id"}, were pending
    scheduler_ok = True
    errors = []
    runners = []                    # headnode.describe_runner rows
    counts = {}                     # JobState -> jobs on the cluster
    workspace_free_bytes = None     # room left where jobs are sent


class StatusRequest(Message):
    """What ``dropbox-runner status`` sends to ``on_hpc status``."""

    root = REQUIRED
    scheduler = REQUIRED


class EarlyRequest(Message):
    """What the submitter sends to ``on_hpc early`` when a cycle's intake first meets work
    of a class, before that work is staged: the class's runners are asked for now, so the
    scheduler's queue wait runs while the burst is rendered and sent (``on_hpc/early.py``)."""

    root = REQUIRED
    scheduler = REQUIRED
    submitter = REQUIRED
    pythonpath = ""
    python = ""
    coming = {}                     # class -> new jobs of the cycle, at most
    expected_seconds = {}           # class -> what its first job expects
    classes = {}
    max_attempts = DEFAULT_MAX_ATTEMPTS


class WaitRequest(Message):
    """What the watch daemon sends to ``on_hpc wait``: return once a job of this
    submitter not in ``ignore`` is done (once every job of ``every`` is, when given; or,
    with ``gather`` too, once one is done and ``gather`` seconds have passed since the
    call), or after ``timeout`` seconds."""

    root = REQUIRED
    submitter = REQUIRED
    ignore = []
    timeout = 30
    every = []
    gather = None


class FinishedRecord(Message):
    """``finished.json``: how one run of a job ended, written once by whoever ended it
    (its runner, or the head node for a job it refused, cancelled or gave up on).

    ``rc`` is -1 when the script never ran and 128+n when a signal n killed it (``signal``
    names it); ``error`` is set when the job ended for a reason other than its script's
    exit (refused, cancelled, interrupted too often).
    """

    rc = -1
    signal = None
    error = None
    cancelled = False
    interrupted = None              # interruptions, when they ended the job
    attempt = None
    start = None
    end = None
    host = None
    runner = None
    sched_id = None
    node = None                     # where it ran (multi-node runners)
    resources = None                # the CPUs, memory and GPUs it was given
    step_id = None                  # its Slurm job step, when run as one

    def to_json(self):
        """Only the keys that say something, so the file stays readable by eye."""
        return {key: value for key, value in Message.to_json(self).items() if value is not None and value is not False}


CANCELLED_MESSAGE = "cancelled"


def cancelled_record(rc=-1, **details):
    return FinishedRecord(rc=rc, error=CANCELLED_MESSAGE, cancelled=True, **details)
