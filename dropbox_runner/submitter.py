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

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cluster import ClusterSide
from .config import Config
from .dropbox import Dropbox, HeldJob, Listing
from .faults import fault_point
from .jobs import JobInvalid, job_id, read_job_file, workspace_names
from .lock import cycle_lock
from .on_hpc.files import write_atomic
from .results import OutputProblem, error_block, place_outputs, read_stream, run_block
from .staging import JOBS_FOLDER, prepare, prune_outbox, write_outbox_entry
from .rendering import TemplateProblem
from .metrics import record_cycle
from .transport import Transport, TransportError

log = logging.getLogger(__name__)


@dataclass
class CycleReport:
    taken: int = 0
    rejected: int = 0
    sent: int = 0
    finished_ok: int = 0
    finished_error: int = 0
    requeued: int = 0
    runners_submitted: int = 0
    held: int = 0
    held_ids: list[str] = field(default_factory=list)
    dropbox_counts: dict[str, int] = field(default_factory=dict)
    collected_ids: list[str] = field(default_factory=list)
    states: dict[str, int] = field(default_factory=dict)
    runners: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0


class JsonFile:
    """A small JSON document in the state folder, rewritten only when it changes, so a
    cron run every minute logs each job's state change once, not once a minute."""

    def __init__(self, path: Path):
        self.path = path
        self._last: Any = None

    def load(self) -> dict[str, Any]:
        try:
            self._last = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self._last = {}
        return dict(self._last)

    def save(self, value: dict[str, Any]) -> None:
        if value != self._last:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(str(self.path), json.dumps(value))
            self._last = value


class Submitter:
    def __init__(self, config: Config, transport: Transport):
        self.config = config
        self.transport = transport
        self.dropbox = Dropbox(config.dropbox)
        self.cluster = ClusterSide(config, transport)
        self.outbox = config.state_dir / "outbox"
        self.inbox = config.state_dir / "inbox"
        self.seen_states = JsonFile(config.state_dir / "seen-states.json")

    def cycle(self) -> CycleReport:
        """Run one cycle; the caller holds the dropbox lock."""
        started = time.monotonic()
        report = CycleReport()
        listing = self.dropbox.scan()
        self._intake(listing, report)
        held = self._held_jobs(report)
        report.held = len(held)
        fault_point("after_intake")

        waiting = prune_outbox(self.outbox, set(held))
        if waiting:
            self.transport.push(self.outbox, f"{self.config.workspace}/{JOBS_FOLDER}")
            report.sent = len(waiting)
            fault_point("after_push")

        answer = self.cluster.call("cycle", {
            "submitter": self.config.submitter_id,
            "in_flight": sorted(held),
            "classes": {name: cls.to_request() for name, cls in self.config.classes.items()},
            "max_attempts": self.config.max_attempts,
            "heartbeat_timeout": self.config.heartbeat_timeout,
        })
        fault_point("after_queue")
        self._note_queue_states(held, answer, waiting, report)
        self._collect(held, answer["finished"], report)
        report.held_ids = sorted(set(held) - set(report.collected_ids))
        report.dropbox_counts = {
            "waiting": len(listing.new) - report.taken - report.rejected,
            "submitted": len(report.held_ids),
            "finished": len(listing.finished) + report.rejected + len(report.collected_ids)}
        report.seconds = time.monotonic() - started
        return report

    # -- 1. intake ---------------------------------------------------------------------
    def _intake(self, listing: Listing, report: CycleReport) -> None:
        held_names = set(listing.submitted)
        for name in listing.new:
            raw = None
            if name in held_names or name in listing.finished:
                self._settle_duplicate(name, name in held_names)
                continue
            try:
                digest = self.dropbox.digest(name)
                raw = read_job_file(self.dropbox.path(name))
                job = prepare(self.config, name, raw)
            except FileNotFoundError:
                continue            # taken back by its tool
            except (JobInvalid, TemplateProblem) as problem:
                problems = getattr(problem, "problems", [str(problem)])
                if self.dropbox.age(name) < self.config.grace_seconds:
                    log.debug("%s: not valid yet, may still be being written: %s", name, problems)
                    continue
                self._reject(name, raw, problems, digest)
                report.rejected += 1
                continue
            write_outbox_entry(self.outbox, job, self.config.submitter_id)
            fault_point("after_outbox")
            self.dropbox.hold(HeldJob(name, job.job_id, raw, job.fingerprint, job.job_class, time.time(), digest))
            fault_point("after_hold")
            self.dropbox.discard(name, "")
            report.taken += 1
            log.info("%s: taken as %s (class %s)", name, job.job_id, job.job_class)

    def _settle_duplicate(self, name: str, is_held: bool) -> None:
        """A ``.job`` beside the ``.submitted`` or ``.finished`` made from it is what a
        crash between two steps leaves: it is removed.  A different ``.job`` of the same
        name is a new job: it waits for the one in flight, or replaces an old result."""
        try:
            digest = self.dropbox.digest(name)
        except FileNotFoundError:
            return
        if is_held:
            try:
                recorded = self.dropbox.read_held(name).get("job_digest")
            except ValueError:
                recorded = None
        else:
            recorded = ((self.dropbox.read_result(name) or {}).get("job") or {}).get("job_digest")
        if recorded == digest:
            self.dropbox.discard(name, "")
        elif is_held:
            log.warning("%s: a new job with the name of one still running; it waits", name)
        else:
            self.dropbox.discard(name, ".finished")

    def _reject(self, name: str, raw: Any, problems: list[str], digest: str) -> None:
        description = raw if isinstance(raw, dict) else None
        message = "invalid job: " + "; ".join(problems)
        self.dropbox.write_result(name, description, error_block(message, job_digest=digest))
        fault_point("after_reject_result")
        self.dropbox.discard(name, "")
        log.warning("%s: rejected: %s", name, "; ".join(problems))

    # -- what the submitter holds ----------------------------------------------------------
    def _held_jobs(self, report: CycleReport) -> dict[str, HeldJob]:
        held: dict[str, HeldJob] = {}
        for name in self.dropbox.scan().submitted:
            try:
                document = self.dropbox.read_held(name)
                job = HeldJob(name, document["id"], document["description"], document["fingerprint"],
                              document["class"], float(document["submitted_at"]), document["job_digest"])
                if not isinstance(job.description, dict):
                    raise ValueError("description is not a mapping")
            except (ValueError, KeyError, TypeError) as error:
                self._drop_broken_hold(name, f"its .submitted file cannot be read ({error})", report)
                continue
            finished = self.dropbox.read_result(name)
            if finished and (finished.get("job") or {}).get("id") == job.job_id:
                self.dropbox.discard(name, ".submitted")    # result written, crash before cleanup
                continue
            if not self._hold_is_intact(job):
                self._drop_broken_hold(name, ".submitted was edited after the job was taken", report)
                continue
            held[job.job_id] = job
        return held

    def _hold_is_intact(self, job: HeldJob) -> bool:
        return job_id(self.config.submitter_id, job.name, job.description, job.fingerprint) == job.job_id

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
        report.finished_error += 1
        log.error("%s: %s; wrote an error result", name, why)

    # -- 3. queue states ----------------------------------------------------------------------
    def _note_queue_states(self, held: dict[str, HeldJob], answer: dict[str, Any],
                           sent: list[str], report: CycleReport) -> None:
        seen = self.seen_states.load()
        for job_id, state in answer["states"].items():
            job = held.get(job_id)
            if job is None:
                continue
            runner = answer.get("claimed_by", {}).get(job_id)
            if state == "running" and seen.get(job_id) != runner:
                log.info("%s: running on runner %s", job.name, runner)
            seen[job_id] = runner if state == "running" else state
            if state == "absent":
                log.warning("%s: the cluster has no trace of %s; sending it again", job.name, job_id)
                self._rebuild_outbox_entry(job, report)
            elif job_id in sent:
                shutil.rmtree(self.outbox / job_id, ignore_errors=True)
                log.info("%s: staged and queued as %s", job.name, job_id)
        for item in answer.get("requeued", []):
            report.requeued += 1
            log.warning("%s: %s (%s)", item["id"], item["outcome"], item["reason"])
        for runner in answer.get("submitted", []):
            report.runners_submitted += 1
            log.info("runner %s submitted for class %s (scheduler id %s)",
                     runner["runner"], runner["class"], runner["sched_id"])
        self.seen_states.save({job_id: seen[job_id] for job_id in held if job_id in seen})
        report.states = answer.get("counts", {})
        report.runners = answer.get("runners", [])

    def _rebuild_outbox_entry(self, job: HeldJob, report: CycleReport) -> None:
        try:
            prepared = prepare(self.config, job.name, job.description, job.fingerprint)
        except (JobInvalid, TemplateProblem, OSError) as problem:
            self.dropbox.write_result(job.name, job.description, error_block(
                f"the job was lost on the cluster and cannot be sent again: {problem}", job.job_id,
                job_digest=job.job_digest))
            self.dropbox.discard(job.name, ".submitted")
            report.finished_error += 1
            return
        write_outbox_entry(self.outbox, prepared, self.config.submitter_id)

    # -- 4. collect ------------------------------------------------------------------------
    def _collect(self, held: dict[str, HeldJob], finished: list[dict[str, Any]], report: CycleReport) -> None:
        done = [item for item in finished if item["id"] in held]
        if not done:
            return
        self.inbox.mkdir(parents=True, exist_ok=True)
        wanted = [f"{item['id']}/{part}" for item in done for part in ("output", "stdout", "stderr")]
        self.transport.pull(f"{self.config.workspace}/{JOBS_FOLDER}", wanted, self.inbox)
        fault_point("after_pull")
        for item in done:
            self._finish(held[item["id"]], item["record"], report)

    def _finish(self, job: HeldJob, record: dict[str, Any], report: CycleReport) -> None:
        pulled = self.inbox / job.job_id
        block = run_block(job.job_id, record, read_stream(pulled / "stdout"),
                          read_stream(pulled / "stderr"), job.submitted_at)
        block["job_digest"] = job.job_digest
        if block["status"] == "ok":
            outputs = job.description.get("output_map") or {}
            names = workspace_names(outputs)
            produced = {key: pulled / "output" / names[key] for key in outputs}
            try:
                place_outputs(produced, outputs, job.job_id[-12:])
            except OutputProblem as problem:
                block.update(status="error", message=str(problem))
            fault_point("after_outputs")
        self.dropbox.write_result(job.name, job.description, block)
        fault_point("after_result")
        self.dropbox.discard(job.name, ".submitted")
        shutil.rmtree(pulled, ignore_errors=True)
        report.collected_ids.append(job.job_id)
        if block["status"] == "ok":
            report.finished_ok += 1
        else:
            report.finished_error += 1
        log.info("%s: finished %s: %s", job.name, block["status"], block["message"])


def run_once(config: Config, transport: Transport, submitter: Submitter | None = None) -> CycleReport | None:
    """One locked cycle, counted in the metrics; None when another process holds the lock."""
    with cycle_lock(Path(config.lockfile)) as locked:
        if not locked:
            log.info("another cycle is running on %s; nothing to do", config.dropbox)
            return None
        return run_cycle(config, submitter or Submitter(config, transport))


def run_cycle(config: Config, submitter: Submitter) -> CycleReport:
    """A cycle under a lock the caller holds (the watch daemon holds it for its lifetime)."""
    try:
        report = submitter.cycle()
    except TransportError:
        record_cycle(config, None)
        raise
    record_cycle(config, report)
    return report
