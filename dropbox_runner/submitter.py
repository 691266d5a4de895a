"""One submitter cycle: intake, stage, queue, collect.

The cycle records its intent before every remote action and every remote action is
idempotent, so a submitter killed at any instant and started again loses no job, runs
none twice and leaves no half-written result:

1. intake   ``x.job`` is validated and rendered into the outbox, then ``x.job.submitted``
            is written (the job id, derived from the job), then ``x.job`` is removed;
2. stage    the whole outbox goes to the cluster in one transfer;
3. queue    one remote command queues what was sent, requeues work of lost runners,
            submits runners where work waits, and reports which held jobs are done;
4. collect  one transfer brings the done jobs back; outputs go into place, then
            ``x.job.finished`` is written, then ``x.job.submitted`` removed.

Network failures raise TransportError out of the cycle and leave every job waiting.
"""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any, Iterable

from .boundaries import boundaries_for
from .boundary import Boundary
from .cache import ResultCache
from .cluster import ClusterSide
from .collect import Collector
from .config import Config
from .dropbox import Dropbox, HeldJob, HeldSummary, HoldIdentity
from .early import EarlyStart
from .faults import fault_point
from .history import History
from .intake import Intake
from .jobs import JobInvalid, echoable
from .lock import cycle_lock
from .metrics import record_cycle
from .on_hpc.protocol import CycleAnswer, CycleRequest, JobState
from .outcome import CACHED, CANCELLED, FAILED, REJECTED, Finisher, Outcome
from .rendering import TemplateProblem
from .report import CycleReport
from .results import error_block
from .seal import SEAL, HoldSeal
from .slices import MAX_GATHER_SECONDS, ONCE_GATHER_LIMIT_SECONDS, IntakeSlices
from .space import (
    entry_bytes,
    format_size,
    is_out_of_space,
    known_free,
    remember_free,
    split_by_room,
    too_big_message,
)
from .staging import JOBS_FOLDER, prepare, prune_outbox, write_outbox_entry
from .transport import Transport, TransportError
from .unusable import note_unusable

log = logging.getLogger(__name__)

# Whole holds kept in memory for collection (about 3 KB each): a burst's first jobs are
# collected without reading their holds back; past this, holds are read again.
WHOLE_HOLDS_KEPT = 4096


class Submitter:
    def __init__(self, config: Config, transport: Transport):
        self.config = config
        self.transport = transport
        self.dropbox = Dropbox(config.dropbox, config.state_dir / "staging")
        self.cluster = ClusterSide(config, transport, keep_open=True)
        self.outbox = config.state_dir / "outbox"
        self.cleanup_pending = config.state_dir / "cleanup-pending"
        self.seal = HoldSeal(config.state_dir)     # first: it makes the state folder, private
        self.history = History(config.state_dir / "history.sqlite", config.dropbox)
        self.cache = ResultCache(Path(config.cache_dir), config.cache_max_bytes, self.history)
        # Where inputs may be read and outputs written: worked out once (``boundaries_for``
        # costs some 30 µs) for the intake, the finisher and a resend alike.
        self.boundaries = boundaries_for(config)
        self.finisher = Finisher(self.dropbox, self.history, self.cache, self.boundaries)
        self.boundary = Boundary()
        self.intake = Intake(config, self.dropbox, self.history, self.cache, self.finisher, self.boundary,
                             self.seal, self.boundaries)
        self.collector = Collector(config, transport, self.dropbox, self.history, self.finisher, self.boundary)
        self.early = EarlyStart(config, self.cluster)
        # How many new jobs each cycle takes (None: all); the caller runs the next cycle
        # at once while more wait (``run_burst``, the watch daemon).
        self.slices: IntakeSlices | None = None
        # Each held name's hold as last verified, while its file stays the same one: a
        # later cycle neither parses nor re-seals it (``_held_jobs``).
        self._known: dict[str, tuple[HoldIdentity, HeldSummary]] = {}
        # Whole holds this process wrote, at most WHOLE_HOLDS_KEPT, by name: trusted in
        # place of the file while ``_known`` says the file is still the one written.
        self._kept_whole: dict[str, HeldJob] = {}
        # The size of each outbox entry this process staged, by job id, while it waits to
        # be sent: the outbox is the submitter's alone, so an entry stays as written.
        self._staged_bytes: dict[str, int] = {}

    def close(self) -> None:
        self.cluster.close()
        self.history.close()

    def cycle(self) -> CycleReport:
        """Run one cycle; the caller holds the dropbox lock."""
        started = time.monotonic()
        report = CycleReport()
        self.boundary.environment_errors = report.environment_errors
        self.unread_holds = 0      # holds this cycle could not read: their jobs are not in_flight
        listing = self.dropbox.scan()
        self.finisher.begin_cycle()
        self.dropbox.remove_batch_leftovers(listing)
        note_unusable(self.config.state_dir, listing.unusable)
        held = self._held_jobs(listing.submitted, listing.finished)
        self.intake.on_take = self.early if self.early.begin(held, len(listing.new)) else None
        new = listing.new if self.slices is None else listing.new[:self.slices.size]
        report.more_new = len(new) < len(listing.new)
        if self.slices is not None:
            self.slices.after(report.more_new, len(held) + len(new))
        with self.history.batch(), self.dropbox.durable_batch():
            taken = self.intake.take_new_jobs(listing, {job.cache_key for job in held.values() if job.cache_key},
                                              new, leave_unsettled=self.slices is not None,
                                              keep_whole=WHOLE_HOLDS_KEPT - len(self._kept_whole))
        report.more_new = report.more_new or taken.unsettled > 0
        self._remember_taken(taken.held.values())
        self._kept_whole.update(taken.whole)
        self._staged_bytes.update(taken.staged_bytes)
        tally = self.finisher.tally
        report.taken, report.rejected, report.cached, report.cancelled = (
            len(taken.names), tally[REJECTED], tally[CACHED], tally[CANCELLED])
        held.update(taken.held)
        report.held = len(held)
        report.runners_submitted = len(self.early.submitted)
        self._drop_stray_cancels(listing, held)
        fault_point("after_intake")

        waiting = self._fitting(prune_outbox(self.outbox, set(held)), held, report)
        if waiting:
            try:
                self.transport.push(self.outbox, f"{self.config.workspace}/{JOBS_FOLDER}")
                report.sent = len(waiting)
            except (TransportError, OSError) as error:
                if not is_out_of_space(error):
                    raise
                report.environment_errors.append(f"the push ran out of space: {error}")
                log.warning("the push ran out of space on the cluster; %d job(s) wait: %s", len(waiting), error)
                report.unsent, waiting = waiting, []
            fault_point("after_push")

        if not held and not waiting and not report.abandoned and not self.cleanup_pending.exists():
            report.finished_error = tally[FAILED]
            report.dropbox_counts = _dropbox_counts(listing, report, collected=0)   # idle cycles count too
            report.seconds = time.monotonic() - started
            return report      # nothing on the cluster is ours: no connection at all
        answer = self.cluster.cycle(CycleRequest(
            root=self.config.workspace, scheduler=self.config.scheduler, submitter=self.config.submitter_id,
            in_flight=sorted(held),
            cancel=sorted([job.job_id for job in held.values() if job.name in listing.cancel] + report.abandoned),
            unsent=report.unsent,
            # A hold that could not be read names a job the cluster must not forget: nothing
            # collected is removed in such a cycle.
            remove_collected=not self.unread_holds,
            classes={name: cls.to_request() for name, cls in self.config.classes.items()},
            max_attempts=self.config.max_attempts, heartbeat_timeout=self.config.heartbeat_timeout))
        fault_point("after_queue")
        remember_free(self.config.state_dir, answer.workspace_free_bytes)
        with self.history.batch():
            self._note_queue_states(held, answer, waiting, report)
        if not self.unread_holds:
            self.cleanup_pending.unlink(missing_ok=True)    # the call removed every collected job
        with self.history.batch(), self.dropbox.durable_batch():
            if any(item["id"] in held for item in answer.finished):
                self.cleanup_pending.touch()      # the next cycle removes them on the cluster
            done, ended = self._done_jobs(held, answer.finished)
            collected = self.collector.collect(done, answer.finished) + ended
        report.finished_ok = tally["ran_ok"]
        report.finished_error = tally[FAILED] + tally["ran_error"]
        report.collected_ids = collected
        report.held_ids = sorted(set(held) - set(collected))
        report.dropbox_counts = _dropbox_counts(listing, report, len(collected))
        report.seconds = time.monotonic() - started
        return report

    def _fitting(self, waiting: list[str], held: dict[str, HeldSummary], report: CycleReport) -> list[str]:
        """Only what fits in the cluster's free space (as last reported) is sent; a job
        that alone exceeds it fails, so it cannot fail every other job's push.  An entry
        this process staged is not walked again to be measured (``_staged_bytes``)."""
        staged = self._staged_bytes
        self._staged_bytes = {job_id_: staged[job_id_] for job_id_ in waiting if job_id_ in staged}
        free = known_free(self.config.state_dir)
        if free is None or not waiting:
            return waiting
        sizes = {job_id_: self._staged_bytes.get(job_id_) or entry_bytes(self.outbox / job_id_)
                 for job_id_ in waiting}
        send, wait, never = split_by_room(sizes, free)
        for job_id_ in never:
            report.abandoned.append(job_id_)     # what a push may have left of it goes too
            job = self._whole(held.pop(job_id_))
            if job is not None:
                self._fail(job, too_big_message(sizes[job_id_], free), scratch=[self.outbox / job_id_])
        if wait:
            report.environment_errors.append(f"{len(wait)} job(s) wait for room in the cluster workspace")
            log.warning("the cluster workspace has %s free: %d job(s) wait for room", format_size(free), len(wait))
        return send

    # -- what the submitter holds ----------------------------------------------------------
    def _held_jobs(self, names: list[str], finished: set[str]) -> dict[str, HeldSummary]:
        """Read the named ``.submitted`` files (one scan of the dropbox per cycle names them;
        ``finished``: the names whose ``.finished`` that scan saw)."""
        held: dict[str, HeldSummary] = {}
        still = set(names)
        self._known = {name: known for name, known in self._known.items() if name in still}
        self._kept_whole = {name: job for name, job in self._kept_whole.items() if name in still}
        for name in names:
            if not self.boundary.contain(name, "reading its .submitted file",
                                         lambda name=name: self._read_hold(name, held, name in finished),
                                         lambda message, name=name: self._drop_broken_hold(name, message)):
                self.unread_holds += 1
        return held

    def _read_hold(self, name: str, held: dict[str, HeldSummary], has_result: bool) -> None:
        identity = self.dropbox.hold_identity(name)
        known = self._known.get(name)
        if known is not None and known[0] == identity:
            self._note_held(name, known[1], held, has_result)
            return
        self._kept_whole.pop(name, None)         # not the file written any more
        job = self._verified_hold(name)
        if job is not None:
            summary = job.summary()
            self._known[name] = (identity, summary)
            self._note_held(name, summary, held, has_result)

    def _verified_hold(self, name: str) -> HeldJob | None:
        """The hold as its file says now, its seal checked; None when it cannot be trusted
        (the job then has its error result)."""
        try:
            document = self.dropbox.read_held(name)
            job = HeldJob.from_document(name, document)
        except (ValueError, KeyError, TypeError) as error:
            self._drop_broken_hold(name, f"its .submitted file cannot be read ({error})")
            return None
        if not self.seal.verify(document):
            self._drop_broken_hold(name, ".submitted was edited after the job was taken (its seal does not match)"
                                   if SEAL in document else ".submitted has no seal (edited, or written by a "
                                   "version before seals): resubmit the job")
            return None
        return job

    def _remember_taken(self, taken: Iterable[HeldSummary]) -> None:
        """Intake wrote these holds itself: the next cycle need not read them back."""
        for job in taken:
            self._known[job.name] = (self.dropbox.hold_identity(job.name), job)

    def _whole(self, summary: HeldSummary) -> HeldJob | None:
        """The whole hold of a job about to be finished or sent again, read now and its seal
        checked (what a tool wrote since is caught here, when it is used); None when it
        cannot be trusted any longer, and the job has its error result.  A hold this
        process wrote is used as written while its file is the same one (one ``lstat``,
        not a read, a parse and a seal)."""
        kept, known = self._kept_whole.get(summary.name), self._known.get(summary.name)
        if (kept is not None and known is not None and known[0] is not None and kept.job_id == summary.job_id
                and known[0] == self.dropbox.hold_identity(summary.name)):
            return kept
        job = self._verified_hold(summary.name)
        if job is not None and job.job_id != summary.job_id:
            self._drop_broken_hold(summary.name, f".submitted now names job {job.job_id}, not {summary.job_id}")
            return None
        return job

    def _done_jobs(self, held: dict[str, HeldSummary],
                   finished: list[dict[str, Any]]) -> tuple[dict[str, HeldJob], list[str]]:
        """The done jobs this submitter holds, whole; and the ids of those whose hold could
        no longer be trusted (they ended with their error result)."""
        done: dict[str, HeldJob] = {}
        ended: list[str] = []
        for item in finished:
            summary = held.get(item["id"])
            if summary is None:
                continue

            def read(summary=summary) -> None:
                job = self._whole(summary)
                if job is None:
                    ended.append(summary.job_id)
                else:
                    done[summary.job_id] = job

            self.boundary.contain(summary.name, "reading its .submitted file", read,
                                  lambda message, name=summary.name: self._drop_broken_hold(name, message))
        return done, ended

    def _note_held(self, name: str, job: HeldSummary, held: dict[str, HeldSummary], has_result: bool) -> None:
        """Hold the job, unless its result was written and a crash came before its
        ``.submitted`` was removed (looked for only where the scan saw a result: a read
        that fails for every held job of every cycle cost more than the rest of it)."""
        finished = self.dropbox.read_result(name) if has_result else None
        if finished and (finished.get("job") or {}).get("id") == job.job_id:
            self.dropbox.discard(name, ".submitted")    # result written, crash before cleanup
            return
        held[job.job_id] = job

    def _drop_broken_hold(self, name: str, why: str) -> None:
        try:
            document = self.dropbox.read_held(name)
        except ValueError:
            document = {}
        digest = document.get("job_digest")
        self.finisher.finish(Outcome(name, echoable(document.get("description")),
                                     error_block(f"cannot continue this job: {why}",
                                                 job_digest=digest if isinstance(digest, str) else None),
                                     detail=why, log_level=logging.ERROR))

    def _drop_stray_cancels(self, listing, held: dict[str, HeldSummary]) -> None:
        held_names = {job.name for job in held.values()}
        for name in listing.cancel - held_names - set(listing.new):
            log.info("%s: nothing to cancel (no such job waiting or running)", name)
            self.boundary.contain(name, "removing its .cancel", lambda name=name: self.dropbox.discard(name, ".cancel"),
                                  None)

    # -- 3. queue states ----------------------------------------------------------------------
    def _note_queue_states(self, held: dict[str, HeldSummary], answer: CycleAnswer,
                           sent: list[str], report: CycleReport) -> None:
        """Each held job's state as the cluster answered.  The cycle's sent and unsent ids
        are looked up as sets: a slice of a large burst sends thousands (a quarter of
        what is held), and a list's lookup for every held job grew with their product."""
        known = self.history.in_flight()
        sent_ids, unsent = _left_in(self.outbox, sent), set(report.unsent)
        for job_id_, state in answer.states.items():
            job = held.get(job_id_)
            if job is not None and job_id_ not in unsent:
                self.boundary.contain(
                    job.name, "noting its state on the cluster",
                    lambda job=job, state=state: self._note_state(job, state, answer, sent_ids, known.get(job.name)),
                    None)
        names = {job_id_: job.name for job_id_, job in held.items()}
        for item in answer.requeued:
            report.requeued += 1
            name = names.get(item["id"], item["id"])
            self.history.record(name, JobState.QUEUED, item["id"], detail=f"{item['outcome']}: {item['reason']}")
            log.warning("%s: %s (%s)", name, item["outcome"], item["reason"])
        for item in answer.refused:
            log.warning("%s: not run: %s", names.get(item["id"], item["id"]), item["reason"])
        for error in answer.errors:
            report.cluster_errors.append(error)
            log.warning("cluster: %s", error)
        for runner in answer.submitted:
            report.runners_submitted += 1
            log.info("runner %s submitted for class %s (scheduler id %s)",
                     runner["runner"], runner["class"], runner["sched_id"])
        for runner in answer.cancelled_runners:
            report.runners_cancelled += 1
            log.info("runner %s cancelled while pending: no work left for it (scheduler id %s)",
                     runner["runner"], runner["sched_id"])
        report.states = answer.counts
        report.runners = answer.runners

    def _note_state(self, job: HeldSummary, state: str, answer: CycleAnswer, sent: set[str],
                    last: tuple[str, str | None] | None) -> None:
        """``last``: the state and runner the history has for the job."""
        runner = answer.claimed_by.get(job.job_id)
        if state == JobState.ABSENT:
            log.warning("%s: the cluster has no trace of %s; sending it again", job.name, job.job_id)
            whole = self._whole(job)
            if whole is not None:
                self._rebuild_outbox_entry(whole)
            return
        if job.job_id in sent:
            shutil.rmtree(self.outbox / job.job_id, ignore_errors=True)
        if state == JobState.QUEUED and (last is None or last[0] != JobState.QUEUED):
            self.history.record(job.name, JobState.QUEUED, job.job_id)
            log.info("%s: staged and queued as %s", job.name, job.job_id)
        elif state == JobState.RUNNING and last != (JobState.RUNNING, runner):
            self.history.record(job.name, JobState.RUNNING, job.job_id, detail=runner, runner=runner)
            log.info("%s: running on runner %s", job.name, runner)

    def _rebuild_outbox_entry(self, job: HeldJob) -> None:
        try:
            try:
                prepared = prepare(self.config, job.name, job.description, job.fingerprint, self.boundaries)
            except OSError as error:
                raise JobInvalid([str(error)]) from None
            staged = write_outbox_entry(self.outbox, prepared, self.config.submitter_id, self.boundaries)
            changed = sorted(key for key, sha in staged.digests.items()
                             if job.provenance["inputs"][key]["sha256"] != sha)
            if changed:
                shutil.rmtree(self.outbox / job.job_id, ignore_errors=True)
                raise JobInvalid([f"input(s) changed since the job was taken: {', '.join(changed)}"])
            self._staged_bytes[job.job_id] = staged.size
        except (JobInvalid, TemplateProblem) as problem:
            self._fail(job, f"the job was lost on the cluster and cannot be sent again: {problem}")

    def _fail(self, job: HeldJob, message: str, scratch: list[Path] | None = None) -> None:
        """End a held job with an error result (its script did not run)."""
        self.finisher.finish(Outcome(job.name, job.description,
                                     error_block(message, job.job_id, job_digest=job.job_digest),
                                     scratch=scratch or [], log_level=logging.WARNING))


def _left_in(outbox: Path, sent: list[str]) -> set[str]:
    """Which sent entries the push left in the outbox, to remove once their jobs are
    queued: rsync copies them, the local transport moves them away (and a removal that
    finds nothing still cost a job a ``Path`` and a failed lookup)."""
    if not sent:
        return set()
    try:
        return set(sent).intersection(os.listdir(outbox))
    except FileNotFoundError:
        return set()


def _dropbox_counts(listing, report: CycleReport, collected: int) -> dict[str, int]:
    """Jobs in the dropbox by state at the end of the cycle (the metrics' gauges)."""
    return {"waiting": len(listing.new) - report.taken - report.rejected - report.cached - report.cancelled,
            "submitted": len(report.held_ids),
            "finished": len(listing.finished) + report.rejected + report.cached + report.cancelled + collected}


def run_once(config: Config, transport: Transport, submitter: Submitter | None = None) -> CycleReport | None:
    """One locked cycle, counted in the metrics; None when another process holds the lock."""
    with cycle_lock(Path(config.lockfile)) as locked:
        if not locked:
            log.info("another cycle is running on %s; nothing to do", config.dropbox)
            return None
        own = submitter is None
        submitter = submitter or Submitter(config, transport)
        try:
            return run_cycle(config, submitter)
        finally:
            if own:
                submitter.close()


def run_burst(config: Config, transport: Transport) -> list[CycleReport] | None:
    """``once``: cycles back to back under one lock, each taking a slice of the new jobs
    (``slices.py``), until none is left, then more while the jobs still held keep ending
    (``_some_held_ended``), for at most ``ONCE_GATHER_LIMIT_SECONDS``; None when another
    process holds the lock."""
    with cycle_lock(Path(config.lockfile)) as locked:
        if not locked:
            log.info("another cycle is running on %s; nothing to do", config.dropbox)
            return None
        submitter = Submitter(config, transport)
        submitter.slices = IntakeSlices()
        reports: list[CycleReport] = []

        def burst() -> CycleReport:
            """Cycles until no new job is left (jobs dropped meanwhile are taken too)."""
            while True:
                reports.append(run_cycle(config, submitter))
                log_cycle(reports[-1])
                if not reports[-1].more_new:
                    return reports[-1]

        try:
            report, ends = burst(), time.monotonic() + ONCE_GATHER_LIMIT_SECONDS
            while time.monotonic() < ends and _some_held_ended(submitter, report):
                report = burst()
                if not report.collected_ids:    # a result that cannot be written waits for the next call
                    break
        finally:
            submitter.close()
        return reports


def _some_held_ended(submitter: Submitter, report: CycleReport) -> bool:
    """Whether a job the last cycle left held has ended, so that ``once`` collects it now
    instead of leaving it to the next call, a cron period and a process start later.

    The cluster answers once one has ended and as long again as that cycle took has
    passed (at once when every one has), or after ``MAX_GATHER_SECONDS`` without one.
    Collecting in such rounds while the runners drain, rather than all at the end, leaves
    the end of a burst only its last jobs to collect (1000 trivial jobs: 569 were collected
    after the last one ended, a third of a second on one core while the other idled)."""
    if not report.held_ids:
        return False
    try:
        done = submitter.cluster.wait(report.collected_ids, MAX_GATHER_SECONDS, every=report.held_ids,
                                      gather=min(report.seconds, MAX_GATHER_SECONDS))
    except TransportError as error:
        log.debug("no gathering after the burst: %s", error)
        return False
    return bool(set(done) & set(report.held_ids))


def log_cycle(report: CycleReport) -> None:
    """One line for a cycle that did something (with ``-v`` for one that did not)."""
    busy = (report.taken or report.rejected or report.cached or report.cancelled or report.sent
            or report.finished_ok or report.finished_error or report.requeued or report.runners_submitted)
    log.log(logging.INFO if busy else logging.DEBUG,
            "cycle: %d taken, %d rejected, %d sent, %d ok, %d error, %d held, %d runner(s) submitted, %.2fs",
            report.taken, report.rejected, report.sent, report.finished_ok, report.finished_error,
            report.held, report.runners_submitted, report.seconds)


def run_cycle(config: Config, submitter: Submitter) -> CycleReport:
    """A cycle under a lock the caller holds (the watch daemon holds it for its lifetime)."""
    try:
        report = submitter.cycle()
    except TransportError:
        record_cycle(config, None)
        raise
    record_cycle(config, report)
    if not report.held_ids and not report.more_new:
        submitter.cluster.close()       # nothing left to ask in this burst (``cluster.py``)
    return report
