#!/usr/bin/env python3
"""Queue-wait simulation: what sharing allocations between jobs saves.

The real cost of a batch queue is hours of waiting for each allocation, which no test on a
one-node cluster can show.  This discrete-event simulation replays one arrival trace (one-off
jobs minutes to days apart, bulk collections seconds apart, as hpc_batch's README describes)
under three policies:

* ``1:1``: one scheduler job per dropped job, each waiting its own queue wait;
* ``hpc_batch``: the original, one sequential runner for every job, kept in the queue while
  jobs wait and gone as soon as none remain;
* ``dropbox-runner``: this project's runners, submitted and cancelled by the head node's own
  decision function (``on_hpc/policy.py``, called here, not copied): a runner per resource
  class with slots, enough runners pending to cover the backlog (the first to start takes
  the work), surplus pending runners cancelled when the backlog is gone, caps per cycle and
  per hour, no job started that would outlast the walltime, and an idle linger (fixed, or
  only while recent arrivals pay for it).

All three face the same cluster, which limits one user's allocations roughly as real sites
do (``Cluster``):

* **Per-user running limit** (``--max-running-per-user``, default 10): at most N of the user's
  allocations run at once, as a Slurm QOS's ``MaxJobsPerUser`` enforces.  An allocation starts
  when its drawn queue wait has passed *and* fewer than N of the user's allocations run;
  otherwise it waits, first come first served, for one of them to end.  Site limits are
  typically somewhere around 8 to 50 running jobs per user; 10 is toward the strict end.
  0 lifts the limit.
* **Fairshare, as a proxy** (``--fairshare-hours-per-pending``, default 0.05 h = 3 min): each
  allocation's drawn queue wait grows by that much per allocation of the user already pending
  (submitted, not started) when it is submitted.  Slurm's fairshare lowers the priority of a
  user who has been using, or is about to use, much of the cluster; without some such term a
  user submitting hundreds of allocations at once would see each one wait only as long as a
  lone job, which no shared cluster allows.  The real factor follows decayed past usage, not
  the pending count; this linear term is the simplest stand-in that grows with how much a user
  asks for at once.  At 0.05 h a handful of pending allocations hardly matters (10 add half an
  hour to a 4 h median wait), while a collection of 100 submitted 1:1 gives its last
  allocation 5 h more, about doubling the median wait.  0 turns it off.

Neither term was in the first version of this model, which let ``1:1`` run every job of a
burst at once, each after an independent wait, and so made it look better than any batching.
``MaxSubmitJobsPerUser`` (a cap on pending plus running, past which ``sbatch`` fails) is not
modelled: it would only make ``1:1`` worse.

Which term matters: on the default trace the running limit alone hardly slows ``1:1`` (its
median turnaround goes from 4.3 h to 4.7 h), because the spread of queue waits already
staggers a burst's allocations (without a limit at most 26 ran at once).  The fairshare term
is what makes ``1:1`` pay for asking for hundreds of allocations at once.  The first runner
policy (one submission per class per cycle, two runners at most) lost to ``1:1`` at fairshare
0; the backlog-proportional one beats it at every percentile, fairshare 0 included, as long
as the running limit holds (``--sweep``, README "The queue-wait simulation").

It prints turnaround percentiles, scheduler submissions, the most allocations that ran at once
and allocation-hours per policy, and draws the turnaround distributions; ``--sweep`` does so
over a grid of fairshare terms, queue waits and running limits, and says at each point
whether ours met the bar against ``1:1``.  Times are in hours
throughout.  Only the plot needs a package outside the standard library (matplotlib, imported
when the plot is drawn).
"""
from __future__ import annotations

import argparse
import heapq
import itertools
import json
import math
import random
import sys
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from dropbox_runner.on_hpc import policy as runner_policy  # the head node's own decision function
from dropbox_runner.on_hpc import protocol  # ... and the defaults a config's classes get

DEFAULT_PLOT = Path(__file__).resolve().parent / "results" / "simulate.png"
HOURS_PER_SECOND = 1 / 3600
ONE_OFF, BULK = "one-off", "bulk"
GPU, CPU = "gpu", "cpu"
CLASSES = (GPU, CPU)


@dataclass(frozen=True)
class Workload:
    """What the dropbox receives: the two arrival patterns of hpc_batch's README."""

    days: float = 30.0
    oneoff_mean_gap_hours: float = 6.0       # exponential gaps: minutes to days
    collection_mean_gap_days: float = 4.0
    collection_size: tuple[int, int] = (50, 300)
    burst_mean_gap_seconds: float = 5.0
    gpu_fraction: float = 0.7
    run_median_minutes: float = 10.0
    run_sigma: float = 1.0
    run_max_hours: float = 4.0               # below the walltime, so every job can run


@dataclass(frozen=True)
class QueueWait:
    """Hours from submitting an allocation to its start: lognormal, clipped at max_hours."""

    median_hours: float = 4.0
    sigma: float = 0.8
    max_hours: float = 24.0

    def draw(self, rng: random.Random) -> float:
        return min(self.median_hours * math.exp(self.sigma * rng.gauss(0.0, 1.0)), self.max_hours)


@dataclass(frozen=True)
class Job:
    id: int
    kind: str          # ONE_OFF or BULK
    job_class: str     # GPU or CPU
    drop: float        # hour it was dropped, from the start of the trace
    run: float         # hours; its expected time is taken to be exact


@dataclass(frozen=True)
class UserLimits:
    """What the cluster does to one user's many allocations; see the module docstring."""

    max_running: int = 10                     # allocations running at once; 0: no limit
    fairshare_hours_per_pending: float = 0.05  # queue wait added per allocation already pending


@dataclass(frozen=True)
class RunnerClass:
    """A resource class as the config declares it (``config.ResourceClass``), in hours.

    The submission settings (``speculate`` and after) default to ``on_hpc/policy.py``'s."""

    slots: int
    max_runners: int
    idle_timeout: float
    walltime: float
    gpu: bool          # each slot holds one GPU; otherwise one CPU core
    adaptive_linger: bool = True
    user_limit: int = 0
    speculate: int = runner_policy.SPECULATE
    submit_cap: int = runner_policy.SUBMIT_CAP
    submit_per_hour: int = runner_policy.SUBMIT_PER_HOUR

    def settings(self) -> runner_policy.Settings:
        """What ``on_hpc/policy.py`` reads, in its seconds."""
        return runner_policy.Settings(self.slots, self.max_runners, self.user_limit, self.speculate, self.submit_cap,
                               self.submit_per_hour, self.idle_timeout * 3600, self.adaptive_linger)


@dataclass(frozen=True)
class RunnerPolicy:
    name: str
    classes: dict[str, RunnerClass]
    route: dict[str, str]   # job class -> the runner class that runs it


@dataclass
class Outcome:
    """What one policy made of the trace."""

    policy: str
    jobs: Sequence[Job]
    turnaround: list[float]   # hours from drop to collected result, in the order of jobs
    submissions: int
    gpu_hours: float          # GPUs held by allocations x hours, from start to end
    core_hours: float
    allocations: list[tuple[float, float]]   # (start, end) of every allocation, in start order
    cancelled: int = 0        # allocations cancelled while still pending


def cycle_index(hour: float, tick: float) -> int:
    """The first submitter cycle at or after ``hour``: when a drop is staged or a result collected."""
    return math.ceil(hour / tick - 1e-9)


def cycle_time(hour: float, tick: float) -> float:
    return cycle_index(hour, tick) * tick


# -- the trace ---------------------------------------------------------------------------

def make_trace(workload: Workload, rng: random.Random) -> list[Job]:
    """One-off jobs as a Poisson process, collections as Poisson-spaced bursts; by drop time."""
    horizon = workload.days * 24
    arrivals = [(hour, ONE_OFF) for hour in poisson_times(rng, workload.oneoff_mean_gap_hours, horizon)]
    for start in poisson_times(rng, workload.collection_mean_gap_days * 24, horizon):
        hour = start
        for _ in range(rng.randint(*workload.collection_size)):
            hour += rng.expovariate(1 / (workload.burst_mean_gap_seconds * HOURS_PER_SECOND))
            arrivals.append((hour, BULK))
    arrivals.sort()
    median = workload.run_median_minutes / 60
    return [Job(number, kind, GPU if rng.random() < workload.gpu_fraction else CPU, hour,
                min(rng.lognormvariate(math.log(median), workload.run_sigma), workload.run_max_hours))
            for number, (hour, kind) in enumerate(arrivals)]


def poisson_times(rng: random.Random, mean_gap: float, horizon: float) -> list[float]:
    times, hour = [], rng.expovariate(1 / mean_gap)
    while hour < horizon:
        times.append(hour)
        hour += rng.expovariate(1 / mean_gap)
    return times


# -- the cluster ---------------------------------------------------------------------------

class EventLoop:
    """Events in time order; those at the same hour in the order they were scheduled."""

    def __init__(self) -> None:
        self.events: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.order = itertools.count()

    def _at(self, hour: float, action: Callable[..., None], *args: Any) -> None:
        heapq.heappush(self.events, (hour, next(self.order), action, args))

    def _drain(self) -> None:
        while self.events:
            now, _, action, args = heapq.heappop(self.events)
            action(now, *args)


class Ticket:
    """One submitted allocation until it starts: what ``Cluster.cancel`` takes back."""

    def __init__(self, on_start: Callable[[float, int], None]):
        self.on_start = on_start
        self.cancelled = False
        self.started = False


class Cluster:
    """The batch scheduler as one user sees it: queue waits, the fairshare term, the running limit.

    ``submit`` draws the allocation's queue wait, adds the fairshare term for the user's
    allocations pending at that moment, and calls ``on_start(hour, token)`` once the wait has
    passed and a place under the running limit is free; the owner hands ``token`` back to
    ``end`` when the allocation leaves.  Allocations held by the limit start first come (first
    eligible) first served.  ``cancel`` takes back one that has not started (``scancel`` of a
    pending job), which then no longer counts as pending.
    """

    def __init__(self, loop: EventLoop, queue: QueueWait, limits: UserLimits, rng: random.Random):
        self.loop, self.queue, self.limits, self.rng = loop, queue, limits, rng
        self.pending = 0      # submitted and not started, whether still waiting or held by the limit
        self.running = 0
        self.held: deque[Ticket] = deque()
        self.allocations: list[list[float]] = []   # [start, end] per started allocation
        self.cancelled = 0

    def submit(self, now: float, on_start: Callable[[float, int], None]) -> Ticket:
        wait = self.queue.draw(self.rng) + self.limits.fairshare_hours_per_pending * self.pending
        self.pending += 1
        ticket = Ticket(on_start)
        self.loop._at(now + wait, self._eligible, ticket)
        return ticket

    def cancel(self, ticket: Ticket) -> None:
        if ticket.started or ticket.cancelled:
            raise ValueError("only a pending allocation can be cancelled")
        ticket.cancelled = True
        self.pending -= 1
        self.cancelled += 1
        if ticket in self.held:
            self.held.remove(ticket)

    def _room(self) -> bool:
        return not self.limits.max_running or self.running < self.limits.max_running

    def _eligible(self, now: float, ticket: Ticket) -> None:
        if ticket.cancelled:
            return
        if self._room() and not self.held:
            self._start(now, ticket)
        else:
            self.held.append(ticket)

    def _start(self, now: float, ticket: Ticket) -> None:
        self.pending -= 1
        self.running += 1
        ticket.started = True
        self.allocations.append([now, math.nan])
        ticket.on_start(now, len(self.allocations) - 1)

    def end(self, now: float, token: int) -> None:
        self.running -= 1
        self.allocations[token][1] = now
        while self.held and self._room():
            self._start(now, self.held.popleft())

    def intervals(self) -> list[tuple[float, float]]:
        return [(start, end) for start, end in self.allocations]


def peak_running(allocations: Sequence[tuple[float, float]]) -> int:
    """The most allocations running at one moment; one ending as another starts is not overlap."""
    changes = sorted([(end, -1) for _, end in allocations] + [(start, 1) for start, _ in allocations])
    peak = running = 0
    for _, change in changes:
        running += change
        peak = max(peak, running)
    return peak


# -- 1:1 -----------------------------------------------------------------------------------

class OneToOne(EventLoop):
    """Each job is its own allocation, submitted at the first cycle after its drop and ending with it."""

    def __init__(self, jobs: Sequence[Job], queue: QueueWait, tick: float, rng: random.Random,
                 limits: UserLimits):
        super().__init__()
        self.jobs, self.tick = jobs, tick
        self.cluster = Cluster(self, queue, limits, rng)
        self.done: dict[int, float] = {}

    def run(self) -> Outcome:
        for job in sorted(self.jobs, key=lambda job: job.drop):
            self._at(cycle_time(job.drop, self.tick), self._submit, job)
        self._drain()
        jobs = self.jobs
        return Outcome("1:1", jobs, [self.done[job.id] - job.drop for job in jobs], len(jobs),
                       gpu_hours=math.fsum(job.run for job in jobs if job.job_class == GPU),
                       core_hours=math.fsum(job.run for job in jobs if job.job_class == CPU),
                       allocations=self.cluster.intervals())

    def _submit(self, now: float, job: Job) -> None:
        self.cluster.submit(now, lambda start, token: self._at(start + job.run, self._end, job, token))

    def _end(self, now: float, job: Job, token: int) -> None:
        self.done[job.id] = cycle_time(now, self.tick)   # collected by the next cycle
        self.cluster.end(now, token)


def one_to_one(jobs: Sequence[Job], queue: QueueWait, tick: float, rng: random.Random,
               limits: UserLimits = UserLimits()) -> Outcome:
    return OneToOne(jobs, queue, tick, rng, limits).run()


# -- runners -------------------------------------------------------------------------------

@dataclass(eq=False)
class Runner:
    """One allocation of a runner class, from its submission until it leaves."""

    class_name: str
    settings: RunnerClass
    submitted: float = 0.0
    start: float | None = None     # None while it waits in the queue
    deadline: float = math.inf
    running: int = 0
    idle_since: float | None = None
    token: int = -1                # the cluster's handle on the allocation, once started
    ticket: Ticket | None = None

    def free_slots(self) -> int:
        return self.settings.slots - self.running

    def time_left(self, now: float) -> float:
        """A pending runner will have its whole walltime, as headnode counts it."""
        return self.settings.walltime if self.start is None else self.deadline - now

    def view(self, now: float) -> runner_policy.Runner:
        """The runner as ``on_hpc/policy.py`` sees it, in seconds."""
        state = runner_policy.PENDING if self.start is None else "running"
        return runner_policy.Runner(id(self), state, self.running, self.time_left(now) * 3600)


class RunnerSimulation(EventLoop):
    """The event loop of a runner policy: submitter cycles, runner starts, job ends, idle exits.

    Within a cycle the submitter decides before runners claim what it just staged, as in
    headnode's ``cycle``; runners claim the moment a job is ready or a slot frees, since the
    real runner polls every fraction of a second.  What to submit and cancel, and how long
    an idle runner lingers, is ``on_hpc/policy.py``'s decision, fed what the head node
    would know: ready jobs, live runners, recent arrivals and submissions, and queue waits
    seen so far.
    """

    def __init__(self, jobs: Sequence[Job], policy: RunnerPolicy, queue: QueueWait, tick: float,
                 rng: random.Random, limits: UserLimits = UserLimits()):
        super().__init__()
        for job in jobs:
            if job.run > policy.classes[policy.route[job.job_class]].walltime:
                raise ValueError("job %d runs %.1f h, longer than its class's walltime" % (job.id, job.run))
        self.jobs = jobs
        self.by_drop = sorted(jobs, key=lambda job: job.drop)
        self.policy, self.tick = policy, tick
        self.cluster = Cluster(self, queue, limits, rng)
        self.staged = 0
        self.ready: dict[str, deque[Job]] = {name: deque() for name in policy.classes}
        self.live: dict[str, list[Runner]] = {name: [] for name in policy.classes}
        self.done: dict[int, float] = {}
        self.submissions = 0
        self.held: dict[bool, list[float]] = {True: [], False: []}   # gpu? -> unit-hours per allocation
        self.arrivals: dict[str, deque[float]] = {name: deque() for name in policy.classes}   # seconds
        self.submitted: dict[str, deque[float]] = {name: deque() for name in policy.classes}  # seconds
        self.queue_wait: dict[str, float | None] = dict.fromkeys(policy.classes)            # seconds

    def run(self) -> Outcome:
        if self.by_drop:
            self._cycle_at(cycle_index(self.by_drop[0].drop, self.tick))
        self._drain()
        return Outcome(self.policy.name, self.jobs, [self.done[job.id] - job.drop for job in self.jobs],
                       self.submissions, math.fsum(self.held[True]), math.fsum(self.held[False]),
                       self.cluster.intervals(), self.cluster.cancelled)

    def _cycle_at(self, index: int) -> None:
        self._at(index * self.tick, self._cycle, index)

    # -- the submitter ---------------------------------------------------------------------
    def _cycle(self, now: float, index: int) -> None:
        self._stage(index, now)
        for name in sorted(self.policy.classes):
            self._ensure(name, now)
        for name in sorted(self.policy.classes):
            for runner in list(self.live[name]):
                if runner.start is not None:
                    self._claim_and_settle(runner, now)
        # Cycles that would find nothing to stage, no waiting job and no pending runner to
        # cancel change nothing: skip them.
        if any(self.ready.values()) or self._surplus_pending():
            self._cycle_at(index + 1)
        elif self.staged < len(self.by_drop):
            self._cycle_at(cycle_index(self.by_drop[self.staged].drop, self.tick))

    def _surplus_pending(self) -> bool:
        return any(runner.start is None for runners in self.live.values() for runner in runners)

    def _stage(self, index: int, now: float) -> None:
        """Make ready every job dropped since the last cycle, in drop order."""
        while self.staged < len(self.by_drop):
            job = self.by_drop[self.staged]
            if cycle_index(job.drop, self.tick) > index:
                return
            name = self.policy.route[job.job_class]
            self.ready[name].append(job)
            self.arrivals[name].append(now * 3600)
            self.staged += 1

    def _ensure(self, name: str, now: float) -> None:
        """headnode's ensure step: ``runner_policy.decide``, then the cancels and the submissions."""
        live = self.live[name]
        if not any(runner.start is None for runner in live) and (
                not self.ready[name] or len(live) >= self.policy.classes[name].max_runners):
            return     # what decide would say (nothing to submit, none pending to cancel), sooner
        seconds = now * 3600
        settings = self.policy.classes[name].settings()
        submitted = self.submitted[name]
        while submitted and seconds - submitted[0] >= runner_policy.HOUR:
            submitted.popleft()
        others = sum(len(runners) for other, runners in self.live.items() if other != name)
        decision = runner_policy.decide(settings, [job.run * 3600 for job in self.ready[name]],
                                        [runner.view(now) for runner in live], others, len(submitted),
                                        self.queue_wait[name])
        cancel = set(decision.cancel)
        for runner in [runner for runner in self.live[name] if id(runner) in cancel]:
            self.cluster.cancel(runner.ticket)
            self.live[name].remove(runner)
        for _ in range(decision.submit):
            self._submit(name, now)
            submitted.append(seconds)

    def _submit(self, name: str, now: float) -> None:
        runner = Runner(name, self.policy.classes[name], submitted=now)
        self.live[name].append(runner)
        self.submissions += 1
        runner.ticket = self.cluster.submit(now, lambda start, token: self._start(start, runner, token))

    # -- the runner ------------------------------------------------------------------------
    def _start(self, now: float, runner: Runner, token: int) -> None:
        runner.start, runner.deadline, runner.token = now, now + runner.settings.walltime, token
        name = runner.class_name
        waited = (now - runner.submitted) * 3600
        self.queue_wait[name] = runner_policy.queue_wait_estimate(self.queue_wait[name], waited)
        self._claim_and_settle(runner, now)

    def _end_job(self, now: float, runner: Runner, job: Job) -> None:
        runner.running -= 1
        self.done[job.id] = cycle_time(now, self.tick)   # collected by the next cycle
        self._claim_and_settle(runner, now)

    def _claim_and_settle(self, runner: Runner, now: float) -> None:
        """Fill free slots; then keep working, start the idle clock, or leave for a fresh runner."""
        unfit = self._claim(runner, now)
        if runner.running:
            runner.idle_since = None
        elif unfit:
            self._leave(now, runner)
        elif runner.idle_since is None:
            runner.idle_since = now
            self._idle_check(now, runner, now)

    def _linger(self, runner: Runner, now: float) -> float:
        """``runner_policy.linger_seconds`` with the class's recent arrival rate, in hours."""
        name, seconds = runner.class_name, now * 3600
        arrivals = self.arrivals[name]
        while arrivals and seconds - arrivals[0] >= runner_policy.ARRIVAL_WINDOW:
            arrivals.popleft()
        wait = self.queue_wait[name]
        rate = runner_policy.arrival_rate(arrivals, seconds)
        return runner_policy.linger_seconds(runner.settings.settings(), rate,
                                     runner_policy.QUEUE_WAIT_GUESS if wait is None else wait) / 3600

    def _idle_check(self, now: float, runner: Runner, idle_since: float) -> None:
        """Leave once idle as long as the linger the policy gives now; else look again then
        (a real idle runner re-reads it every poll)."""
        if runner not in self.live[runner.class_name] or runner.idle_since != idle_since:
            return
        until = min(idle_since + self._linger(runner, now), runner.deadline)
        if now >= until - 1e-12:
            self._leave(now, runner)
        else:
            self._at(until, self._idle_check, runner, idle_since)

    def _claim(self, runner: Runner, now: float) -> bool:
        """Claim ready jobs oldest first, skipping those that would outlast the walltime."""
        waiting = self.ready[runner.class_name]
        skipped: list[Job] = []
        while waiting and runner.free_slots() > 0:
            job = waiting.popleft()
            if job.run > runner.deadline - now:
                skipped.append(job)
                continue
            runner.running += 1
            self._at(now + job.run, self._end_job, runner, job)
        waiting.extendleft(reversed(skipped))
        return bool(skipped)

    def _leave(self, now: float, runner: Runner) -> None:
        self.live[runner.class_name].remove(runner)
        self.held[runner.settings.gpu].append((now - runner.start) * runner.settings.slots)
        self.cluster.end(now, runner.token)


def run_runners(jobs: Sequence[Job], policy: RunnerPolicy, queue: QueueWait, tick: float,
                rng: random.Random, limits: UserLimits = UserLimits()) -> Outcome:
    return RunnerSimulation(jobs, policy, queue, tick, rng, limits).run()


# -- the comparison ------------------------------------------------------------------------

def policies(classes: dict[str, RunnerClass]) -> list[RunnerPolicy]:
    """hpc_batch and ours; hpc_batch had one GPU runner for every job and no linger."""
    hpc_batch = RunnerClass(slots=1, max_runners=1, idle_timeout=0.0, walltime=classes[GPU].walltime, gpu=True,
                            adaptive_linger=False)
    return [RunnerPolicy("hpc_batch", {GPU: hpc_batch}, {GPU: GPU, CPU: GPU}),
            RunnerPolicy("dropbox-runner", classes, {GPU: GPU, CPU: CPU})]


def compare(jobs: Sequence[Job], classes: dict[str, RunnerClass], queue: QueueWait, tick: float,
            seed: int, limits: UserLimits = UserLimits()) -> list[Outcome]:
    """The three policies on one trace and one cluster, each drawing its queue waits from its own
    seeded stream."""
    outcomes = [one_to_one(jobs, queue, tick, random.Random("%d/1:1" % seed), limits)]
    for policy in policies(classes):
        outcomes.append(run_runners(jobs, policy, queue, tick, random.Random("%d/%s" % (seed, policy.name)),
                                    limits))
    return outcomes


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def summarize(outcome: Outcome) -> dict[str, Any]:
    gpu_busy = math.fsum(job.run for job in outcome.jobs if job.job_class == GPU)
    by_kind = {kind: [hours for job, hours in zip(outcome.jobs, outcome.turnaround) if job.kind == kind]
               for kind in (ONE_OFF, BULK)}
    return {
        "policy": outcome.policy,
        "jobs": len(outcome.jobs),
        "turnaround_hours": {name: round(percentile(outcome.turnaround, q), 3)
                             for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))},
        "p50_hours_by_kind": {kind: round(percentile(hours, 50), 3) if hours else None
                              for kind, hours in by_kind.items()},
        "submissions": outcome.submissions,
        "peak_running": peak_running(outcome.allocations),
        "gpu_hours_held": round(outcome.gpu_hours, 2),
        "gpu_hours_idle": round(outcome.gpu_hours - gpu_busy, 2) + 0.0,   # never -0.0
        "core_hours_held": round(outcome.core_hours, 2),
    }


COLUMNS = ("policy", "jobs", "p50 h", "p90 h", "p99 h", "max h", "one-off p50", "bulk p50",
           "submissions", "peak running", "GPU-h held", "GPU-h idle", "core-h held")


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    rows = [COLUMNS]
    for summary in summaries:
        turnaround, kinds = summary["turnaround_hours"], summary["p50_hours_by_kind"]
        rows.append((summary["policy"], str(summary["jobs"]),
                     *("%.2f" % turnaround[name] for name in ("p50", "p90", "p99", "max")),
                     *("-" if kinds[kind] is None else "%.2f" % kinds[kind] for kind in (ONE_OFF, BULK)),
                     str(summary["submissions"]), str(summary["peak_running"]),
                     "%.1f" % summary["gpu_hours_held"],
                     "%.1f" % summary["gpu_hours_idle"], "%.1f" % summary["core_hours_held"]))
    widths = [max(len(row[column]) for row in rows) for column in range(len(COLUMNS))]
    return "\n".join("  ".join(cell.ljust(width) if column == 0 else cell.rjust(width)
                               for column, (cell, width) in enumerate(zip(row, widths)))
                     for row in rows)


def plot(outcomes: Sequence[Outcome], summaries: Sequence[dict[str, Any]], path: Path, title: str) -> None:
    """Turnaround CDFs on a log axis beside the GPU-hours each policy held and left idle."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (cdf, bars) = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [2, 1]})
    for outcome in outcomes:
        hours = sorted(outcome.turnaround)
        cdf.step(hours, [(rank + 1) / len(hours) for rank in range(len(hours))], where="post",
                 label=outcome.policy)
    cdf.set_xscale("log")
    cdf.set_xlabel("turnaround, drop to result (hours, log scale)")
    cdf.set_ylabel("fraction of jobs")
    cdf.grid(True, which="both", alpha=0.3)
    cdf.legend(loc="upper left")
    names = [summary["policy"] for summary in summaries]
    busy = [summary["gpu_hours_held"] - summary["gpu_hours_idle"] for summary in summaries]
    idle = [summary["gpu_hours_idle"] for summary in summaries]
    bars.bar(names, busy, label="running GPU jobs")
    bars.bar(names, idle, bottom=busy, label="held idle")
    for position, summary in enumerate(summaries):
        bars.annotate("%d submissions" % summary["submissions"], (position, summary["gpu_hours_held"]),
                      ha="center", va="bottom", fontsize=8)
    bars.set_ylabel("GPU-hours of allocations")
    bars.set_ylim(0, 1.3 * max(summary["gpu_hours_held"] for summary in summaries))
    bars.legend(loc="upper left", ncol=2, fontsize=8)
    figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    plt.close(figure)


# -- the sweep -----------------------------------------------------------------------------

SWEEP_FAIRSHARE = (0.0, 0.02, 0.05, 0.1)
SWEEP_QUEUE_MEDIAN = (0.5, 1.0, 2.0, 4.0, 8.0, 12.0)
SWEEP_USER_LIMIT = (10, 0)


def sweep(jobs: Sequence[Job], args: argparse.Namespace, fairshares: Sequence[float] = SWEEP_FAIRSHARE,
          medians: Sequence[float] = SWEEP_QUEUE_MEDIAN,
          user_limits: Sequence[int] = SWEEP_USER_LIMIT) -> list[dict[str, Any]]:
    """The three policies at every grid point; each row says whether ours met the bar (p50, p90
    and p99 at or below 1:1's, GPU-hours at most 1:1's + 10%, at most a fifth of its submissions)."""
    rows = []
    for limit, fairshare, median in itertools.product(user_limits, fairshares, medians):
        point = argparse.Namespace(**dict(vars(args), max_running_per_user=limit))
        queue = QueueWait(median, args.queue_sigma, args.queue_max_hours)
        outcomes = compare(jobs, runner_classes(point), queue, args.tick * HOURS_PER_SECOND, args.seed,
                           UserLimits(limit, fairshare))
        summaries = {outcome.policy: summarize(outcome) for outcome in outcomes}
        rows.append({"user_limit": limit, "fairshare": fairshare, "queue_median": median,
                     "results": summaries, "misses": misses(summaries["dropbox-runner"], summaries["1:1"])})
    return rows


def misses(ours: dict[str, Any], one_to_one: dict[str, Any]) -> list[str]:
    """Where ours falls short of the bar against 1:1 (empty: it meets it)."""
    missed = [name for name in ("p50", "p90", "p99")
              if ours["turnaround_hours"][name] > one_to_one["turnaround_hours"][name]]
    if ours["gpu_hours_held"] > 1.1 * one_to_one["gpu_hours_held"]:
        missed.append("GPU-h")
    if 5 * ours["submissions"] > one_to_one["submissions"]:
        missed.append("submissions")
    return missed


def format_sweep(rows: Sequence[dict[str, Any]]) -> str:
    lines = ["limit  fairshare  queue  | ours p50/p90/p99 h    GPU-h  subm | 1:1 p50/p90/p99 h     GPU-h  subm"
             " | hpc_batch p50 h | misses"]
    for row in rows:
        ours, one, batch = (row["results"][name] for name in ("dropbox-runner", "1:1", "hpc_batch"))
        lines.append(("%5s  %9.2f  %5.1f  | %5.2f %5.2f %6.2f  %6.0f  %4d | %5.2f %5.2f %6.2f  %6.0f  %4d"
                      " | %15.1f | %s") % (
            row["user_limit"] or "none", row["fairshare"], row["queue_median"],
            *(ours["turnaround_hours"][name] for name in ("p50", "p90", "p99")), ours["gpu_hours_held"],
            ours["submissions"], *(one["turnaround_hours"][name] for name in ("p50", "p90", "p99")),
            one["gpu_hours_held"], one["submissions"], batch["turnaround_hours"]["p50"],
            ", ".join(row["misses"]) or "-"))
    return "\n".join(lines)


def plot_sweep(rows: Sequence[dict[str, Any]], path: Path) -> None:
    """Top: turnaround percentiles against GPU-hours held, one point per policy and grid point.
    Bottom: the same percentiles against the queue-wait median at fairshare 0, the hardest case
    for batching, with the per-user limit (solid) and without (dashed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = (("1:1", "o"), ("hpc_batch", "s"), ("dropbox-runner", "^"))
    figure, panels = plt.subplots(2, 3, figsize=(15, 8.5))
    for column, percentile_name in enumerate(("p50", "p90", "p99")):
        top, bottom = panels[0][column], panels[1][column]
        for number, (policy_name, marker) in enumerate(names):
            colour = "C%d" % number
            top.scatter([row["results"][policy_name]["gpu_hours_held"] for row in rows],
                        [row["results"][policy_name]["turnaround_hours"][percentile_name] for row in rows],
                        marker=marker, color=colour, label=policy_name, alpha=0.7)
            for limit, style in sorted({(row["user_limit"], "-" if row["user_limit"] else "--") for row in rows}):
                line = sorted((row["queue_median"], row["results"][policy_name]["turnaround_hours"][percentile_name])
                              for row in rows if row["fairshare"] == 0 and row["user_limit"] == limit)
                bottom.plot([x for x, _ in line], [y for _, y in line], style, marker=marker, color=colour,
                            label="%s, limit %s" % (policy_name, limit or "none"))
        top.set_xlabel("GPU-hours held")
        top.set_ylabel("turnaround %s (hours, log)" % percentile_name)
        bottom.set_xlabel("queue-wait median (hours, log), fairshare 0")
        bottom.set_ylabel("turnaround %s (hours, log)" % percentile_name)
        bottom.set_xscale("log")
        for panel in (top, bottom):
            panel.set_yscale("log")
            panel.grid(True, which="both", alpha=0.3)
    panels[0][0].legend(loc="center right", fontsize=8)
    panels[1][0].legend(loc="upper left", fontsize=7)
    figure.suptitle("sweep: fairshare %s h, queue-wait median %s h, per-user limit %s"
                    % (sorted({row["fairshare"] for row in rows}), sorted({row["queue_median"] for row in rows}),
                       sorted({row["user_limit"] or "none" for row in rows}, key=str)), fontsize=9)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


# -- the command ---------------------------------------------------------------------------

def per_class(cast: Callable[[str], Any]) -> Callable[[str], dict[str, Any]]:
    """An argparse type: ``N`` for every class, or ``gpu=N,cpu=M``."""
    def parse(text: str) -> dict[str, Any]:
        try:
            if "=" not in text:
                return dict.fromkeys(CLASSES, cast(text))
            values = {name.strip(): cast(value) for name, _, value in
                      (item.partition("=") for item in text.split(","))}
        except ValueError:
            raise argparse.ArgumentTypeError("%r: expected N or gpu=N,cpu=M" % text) from None
        if sorted(values) != sorted(CLASSES):
            raise argparse.ArgumentTypeError("%r: give a value for each of gpu and cpu" % text)
        return values
    return parse


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Simulate queue waits under 1:1 submission, hpc_batch's sequential runner and "
                    "dropbox-runner. Per-class options take N (both classes) or gpu=N,cpu=M.")
    parser.add_argument("--days", type=float, default=30.0, help="length of the arrival trace (default 30)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--queue-median-hours", type=float, default=4.0)
    parser.add_argument("--queue-sigma", type=float, default=0.8, help="lognormal sigma of the queue wait")
    parser.add_argument("--queue-max-hours", type=float, default=24.0, help="longest queue wait")
    parser.add_argument("--max-running-per-user", type=int, default=UserLimits.max_running,
                        help="allocations of the user running at once, for every policy; 0: no limit "
                             "(default %(default)s)")
    parser.add_argument("--fairshare-hours-per-pending", type=float,
                        default=UserLimits.fairshare_hours_per_pending,
                        help="hours added to an allocation's queue wait per allocation of the user already "
                             "pending when it is submitted; 0: none (default %(default)s)")
    parser.add_argument("--slots", type=per_class(int), default="gpu=1,cpu=4", help="jobs at once per runner")
    parser.add_argument("--max-runners", type=per_class(int),
                        help="default: a Slurm class's when its config leaves it out (%d job places: "
                             "ceil(%d / slots))" % (protocol.QUEUED_RUNNER_PLACES, protocol.QUEUED_RUNNER_PLACES))
    parser.add_argument("--user-limit", type=int, default=0,
                        help="the classes' user_limit: the most runners pending and running at once, all "
                             "classes together (default %(default)s: none stated)")
    parser.add_argument("--idle-timeout", type=per_class(float), default="%g" % (protocol.QUEUED_IDLE_TIMEOUT / 60),
                        help="idle linger, minutes: the most, or with --fixed-linger always (default: a Slurm "
                             "class's, %(default)s)")
    parser.add_argument("--speculate", type=int, default=runner_policy.SPECULATE,
                        help="runners kept pending for any backlog at all (default %(default)s)")
    parser.add_argument("--submit-cap", type=int, default=runner_policy.SUBMIT_CAP,
                        help="most submissions per class per cycle (default %(default)s)")
    parser.add_argument("--fixed-linger", action="store_true",
                        help="an idle runner always lingers --idle-timeout, instead of only while recent "
                             "arrivals pay for it")
    parser.add_argument("--walltime", type=per_class(float), default="8", help="runner time limit, hours")
    parser.add_argument("--tick", type=float, default=60.0, help="seconds between submitter cycles (cron: 60)")
    parser.add_argument("--plot", type=Path, default=DEFAULT_PLOT, help="PNG to write (default %(default)s)")
    parser.add_argument("--no-plot", action="store_true", help="skip the plot (no matplotlib needed)")
    parser.add_argument("--json", action="store_true", help="print the parameters and results as JSON")
    parser.add_argument("--sweep", action="store_true",
                        help="every fairshare %s h x queue-wait median %s h x per-user limit %s (0: none), "
                             "instead of the one cluster" % (SWEEP_FAIRSHARE, SWEEP_QUEUE_MEDIAN, SWEEP_USER_LIMIT))
    args = parser.parse_args(argv)
    if args.max_runners is None:
        args.max_runners = {name: protocol.runner_defaults(True, args.slots[name])["max_runners"] for name in CLASSES}
    longest = Workload().run_max_hours
    if min(args.slots.values()) < 1 or min(args.max_runners.values()) < 1 or min(args.speculate,
                                                                                  args.submit_cap) < 1:
        parser.error("--slots, --max-runners, --speculate and --submit-cap must be at least 1")
    if min(args.walltime.values()) < longest:
        parser.error("--walltime must be at least the longest job, %g h" % longest)
    if args.tick <= 0 or args.days <= 0:
        parser.error("--tick and --days must be positive")
    if args.max_running_per_user < 0 or args.fairshare_hours_per_pending < 0:
        parser.error("--max-running-per-user and --fairshare-hours-per-pending must not be negative")
    return args


def runner_classes(args: argparse.Namespace) -> dict[str, RunnerClass]:
    return {name: RunnerClass(slots=args.slots[name], max_runners=args.max_runners[name],
                              idle_timeout=args.idle_timeout[name] / 60, walltime=args.walltime[name],
                              gpu=name == GPU, adaptive_linger=not args.fixed_linger, user_limit=args.user_limit,
                              speculate=args.speculate, submit_cap=args.submit_cap)
            for name in CLASSES}


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    workload = Workload(days=args.days)
    queue = QueueWait(args.queue_median_hours, args.queue_sigma, args.queue_max_hours)
    limits = UserLimits(args.max_running_per_user, args.fairshare_hours_per_pending)
    classes = runner_classes(args)
    tick = args.tick * HOURS_PER_SECOND
    jobs = make_trace(workload, random.Random("%d/trace" % args.seed))
    if args.sweep:
        rows = sweep(jobs, args)
        if args.json:
            json.dump(rows, sys.stdout, indent=2)
            sys.stdout.write("\n")
        else:
            print("%d jobs over %g days, seed %d; runners: slots %s, max runners %s, %s"
                  % (len(jobs), args.days, args.seed, _per_class_text(args.slots),
                     _per_class_text(args.max_runners), _linger_text(args)))
            print(format_sweep(rows))
        if not args.no_plot:
            path = args.plot.with_name(args.plot.stem + "-sweep.png")
            plot_sweep(rows, path)
            print("plot: %s" % path, file=sys.stderr)
        return 0
    outcomes = compare(jobs, classes, queue, tick, args.seed, limits)
    summaries = [summarize(outcome) for outcome in outcomes]
    if args.json:
        parameters = {"seed": args.seed, "tick_seconds": args.tick, "workload": asdict(workload),
                      "queue_wait": asdict(queue), "user_limits": asdict(limits),
                      "classes": {name: asdict(c) for name, c in classes.items()}}
        json.dump({"parameters": parameters, "results": summaries}, sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        print("%d jobs over %g days (%d one-off, %d in collections), seed %d"
              % (len(jobs), args.days, sum(job.kind == ONE_OFF for job in jobs),
                 sum(job.kind == BULK for job in jobs), args.seed))
        print("queue wait: lognormal, median %g h, sigma %g, max %g h, plus %s"
              % (queue.median_hours, queue.sigma, queue.max_hours, _fairshare_text(limits)))
        print("per user, for every policy: %s" % _limit_text(limits))
        print("runners: slots %s, max runners %s, walltime %s h, %s; cycle %g s"
              % (_per_class_text(args.slots), _per_class_text(args.max_runners),
                 _per_class_text(args.walltime), _linger_text(args), args.tick))
        print(format_table(summaries))
    if not args.no_plot:
        title = ("%d jobs over %g days, queue wait median %g h (sigma %g, max %g h), seed %d\n"
                 "per user: %s running at once, fairshare +%g h per allocation pending; "
                 "walltime %s h, slots %s"
                 % (len(jobs), args.days, queue.median_hours, queue.sigma, queue.max_hours, args.seed,
                    limits.max_running or "any number", limits.fairshare_hours_per_pending,
                    _per_class_text(args.walltime), _per_class_text(args.slots)))
        plot(outcomes, summaries, args.plot, title)
        print("plot: %s" % args.plot, file=sys.stderr)
    return 0


def _per_class_text(values: dict[str, Any]) -> str:
    return ",".join("%s=%g" % (name, values[name]) for name in CLASSES)


def _linger_text(args: argparse.Namespace) -> str:
    kind = "fixed" if args.fixed_linger else "adaptive, at most"
    return "idle linger %s %s min" % (kind, _per_class_text(args.idle_timeout))


def _limit_text(limits: UserLimits) -> str:
    if not limits.max_running:
        return "no running limit"
    return "at most %d allocations running; the rest held, first come first served" % limits.max_running


def _fairshare_text(limits: UserLimits) -> str:
    return "%g h per allocation of the user already pending (fairshare)" % limits.fairshare_hours_per_pending


if __name__ == "__main__":
    sys.exit(main())
