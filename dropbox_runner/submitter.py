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
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import ResultCache
from .cluster import ClusterSide
from .collect import Collector
from .config import Config
from .dropbox import Dropbox, HeldJob
from .faults import fault_point
from .history import History
from .intake import Intake
from .jobs import JobInvalid, job_id
from .lock import cycle_lock
from .metrics import record_cycle
from .on_hpc.protocol import CycleAnswer, CycleRequest, JobState
from .rendering import TemplateProblem
from .results import error_block
from .staging import JOBS_FOLDER, prepare, prune_outbox, vanished_inputs, write_outbox_entry
from .transport import Transport, TransportError

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    taken: int = 0
    rejected: int = 0
    cached: int = 0
    cancelled: int = 0
    sent: int = 0
    finished_ok: int = 0
    finished_error: int = 0
    requeued: int = 0
    runners_submitted: int = 0
    runners_cancelled: int = 0
    held: int = 0
    held_ids: list[str] = field(default_factory=list)
    collected_ids: list[str] = field(default_factory=list)
    dropbox_counts: dict[str, int] = field(default_factory=dict)
    cluster_errors: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    runners: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class Submitter:
    def __init__(self, config: Config, transport: Transport):
        self.config = config
        self.transport = transport
        self.dropbox = Dropbox(config.dropbox)
        self.cluster = ClusterSide(config, transport)
        self.outbox = config.state_dir / "outbox"
        self.cleanup_pending = config.state_dir / "cleanup-pending"
        self.history = History(config.state_dir / "history.sqlite")
        self.cache = ResultCache(Path(config.cache_dir), config.cache_max_bytes, self.history)
        self.intake = Intake(config, self.dropbox, self.history, self.cache)
        self.collector = Collector(config, transport, self.dropbox, self.history, self.cache)

    def close(self) -> None:
        self.history.close()

    def cycle(self) -> CycleReport:
        """Run one cycle; the caller holds the dropbox lock."""
        started = time.monotonic()
        report = CycleReport()
        listing = self.dropbox.scan()
        held = self._held_jobs(listing.submitted, report)
        with self.history.batch():
            taken = self.intake.take_new_jobs(listing, {job.cache_key for job in held.values() if job.cache_key})
        report.taken, report.rejected, report.cached, report.cancelled = (
            len(taken.names), taken.rejected, taken.cached, taken.cancelled)
        held.update(self._held_jobs(taken.names, report))
        report.held = len(held)
        self._drop_stray_cancels(listing, held)
        fault_point("after_intake")

        waiting = self._sendable(prune_outbox(self.outbox, set(held)), held, report)
        if waiting:
            self.transport.push(self.outbox, f"{self.config.workspace}/{JOBS_FOLDER}")
            report.sent = len(waiting)
            fault_point("after_push")

        if not held and not waiting and not self.cleanup_pending.exists():
            report.dropbox_counts = _dropbox_counts(listing, report, collected=0)   # idle cycles count too
            report.seconds = time.monotonic() - started
            return report      # nothing on the cluster is ours: no connection at all
        answer = self.cluster.cycle(CycleRequest(
            root=self.config.workspace, scheduler=self.config.scheduler, submitter=self.config.submitter_id,
            in_flight=sorted(held),
            cancel=sorted(job.job_id for job in held.values() if job.name in listing.cancel),
            classes={name: cls.to_request() for name, cls in self.config.classes.items()},
            max_attempts=self.config.max_attempts, heartbeat_timeout=self.config.heartbeat_timeout))
        fault_point("after_queue")
        with self.history.batch():
            self._note_queue_states(held, answer, waiting, report)
        self.cleanup_pending.unlink(missing_ok=True)    # the call removed every collected job
        with self.history.batch():
            if any(item["id"] in held for item in answer.finished):
                self.cleanup_pending.touch()      # the next cycle removes them on the cluster
            collected = self.collector.collect(held, answer.finished)
        report.finished_ok += collected.ok
        report.finished_error += collected.error
        report.collected_ids = collected.job_ids
        report.held_ids = sorted(set(held) - set(collected.job_ids))
        report.dropbox_counts = _dropbox_counts(listing, report, len(collected.job_ids))
        report.seconds = time.monotonic() - started
        return report

    def _sendable(self, waiting: list[str], held: dict[str, HeldJob], report: CycleReport) -> list[str]:
        """Fail the jobs whose inputs vanished, so they cannot block the others' transfer."""
        sendable = []
        for job_id_ in waiting:
            vanished = vanished_inputs(self.outbox, job_id_)
            if not vanished:
                sendable.append(job_id_)
                continue
            job = held.pop(job_id_)
            message = f"input file(s) removed before the job could be sent: {', '.join(vanished)}"
            self.dropbox.write_result(job.name, job.description,
                                      error_block(message, job_id_, job_digest=job.job_digest))
            self.dropbox.discard(job.name, ".submitted")
            shutil.rmtree(self.outbox / job_id_, ignore_errors=True)
            self.history.record(job.name, "finished", job_id_, detail=message, status="error", message=message)
            report.finished_error += 1
            log.warning("%s: %s", job.name, message)
        return sendable

    # -- what the submitter holds ----------------------------------------------------------
    def _held_jobs(self, names: list[str], report: CycleReport) -> dict[str, HeldJob]:
        """Read the named ``.submitted`` files (one scan of the dropbox per cycle names them)."""
        held: dict[str, HeldJob] = {}
        for name in names:
            try:
                job = HeldJob.from_document(name, self.dropbox.read_held(name))
            except (ValueError, KeyError, TypeError) as error:
                self._drop_broken_hold(name, f"its .submitted file cannot be read ({error})", report)
                continue
            finished = self.dropbox.read_result(name)
            if finished and (finished.get("job") or {}).get("id") == job.job_id:
                self.dropbox.discard(name, ".submitted")    # result written, crash before cleanup
                continue
            if job_id(self.config.submitter_id, job.name, job.description, job.fingerprint) != job.job_id:
                self._drop_broken_hold(name, ".submitted was edited after the job was taken", report)
                continue
            held[job.job_id] = job
        return held

    def _drop_broken_hold(self, name: str, why: str, report: CycleReport) -> None:
        try:
            document = self.dropbox.read_held(name)
        except ValueError:
            document = {}
        description = document.get("description")
        self.dropbox.write_result(name, description if isinstance(description, dict) else None,
                                  error_block(f"cannot continue this job: {why}",
                                              job_digest=document.get("job_digest")))
        self.dropbox.discard(name, ".submitted")
        self.history.record(name, "finished", detail=why, status="error", message=why)
        report.finished_error += 1
        log.error("%s: %s; wrote an error result", name, why)

    def _drop_stray_cancels(self, listing, held: dict[str, HeldJob]) -> None:
        held_names = {job.name for job in held.values()}
        for name in listing.cancel - held_names - set(listing.new):
            log.info("%s: nothing to cancel (no such job waiting or running)", name)
            self.dropbox.discard(name, ".cancel")

    # -- 3. queue states ----------------------------------------------------------------------
    def _note_queue_states(self, held: dict[str, HeldJob], answer: CycleAnswer,
                           sent: list[str], report: CycleReport) -> None:
        known = {row.name: row for row in self.history.jobs(states=list(JobState.IN_FLIGHT),
                                                             limit=len(held) + 1000)}
        for job_id_, state in answer.states.items():
            job = held.get(job_id_)
            if job is None:
                continue
            last = known.get(job.name)
            runner = answer.claimed_by.get(job_id_)
            if state == JobState.ABSENT:
                log.warning("%s: the cluster has no trace of %s; sending it again", job.name, job_id_)
                self._rebuild_outbox_entry(job, report)
                continue
            if job_id_ in sent:
                shutil.rmtree(self.outbox / job_id_, ignore_errors=True)
            if state == JobState.QUEUED and (last is None or last.state != JobState.QUEUED):
                self.history.record(job.name, JobState.QUEUED, job_id_)
                log.info("%s: staged and queued as %s", job.name, job_id_)
            elif state == JobState.RUNNING and (last is None or last.state != JobState.RUNNING
                                                or last.runner != runner):
                self.history.record(job.name, JobState.RUNNING, job_id_, detail=runner, runner=runner)
                log.info("%s: running on runner %s", job.name, runner)
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

    def _rebuild_outbox_entry(self, job: HeldJob, report: CycleReport) -> None:
        try:
            prepared = prepare(self.config, job.name, job.description, job.fingerprint)
        except (JobInvalid, TemplateProblem, OSError) as problem:
            message = f"the job was lost on the cluster and cannot be sent again: {problem}"
            self.dropbox.write_result(job.name, job.description, error_block(
                message, job.job_id, job_digest=job.job_digest))
            self.dropbox.discard(job.name, ".submitted")
            self.history.record(job.name, "finished", job.job_id, detail=message, status="error", message=message)
            report.finished_error += 1
            return
        write_outbox_entry(self.outbox, prepared, self.config.submitter_id)


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


def run_cycle(config: Config, submitter: Submitter) -> CycleReport:
    """A cycle under a lock the caller holds (the watch daemon holds it for its lifetime)."""
    try:
        report = submitter.cycle()
    except TransportError:
        record_cycle(config, None)
        raise
    record_cycle(config, report)
    return report
