"""Step 1 of a cycle: new ``.job`` files become held jobs, error results or cache hits.

A job is taken in three atomic steps, so a crash between any two is harmless: its
outbox entry is written, then ``x.job.submitted`` (the job id and what the result's
provenance will need), then ``x.job`` is removed.  A ``.job`` found beside the
``.submitted`` or ``.finished`` made from it is such a crash's leftover and is dropped.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from . import __version__
from .boundary import Boundary
from .cache import ResultCache, cache_key
from .config import Config
from .dropbox import Dropbox, HeldJob, HeldSummary, Listing
from .entries import UnusableEntry
from .faults import fault_point
from .history import History
from .jobs import JobInvalid, echoable, read_job
from .on_hpc.batchfile import BatchFile
from .on_hpc.protocol import JobState
from .outcome import CACHED, CANCELLED, FAILED, REJECTED, Finisher, Outcome
from .rendering import TemplateProblem
from .results import error_block
from .safefs import Boundaries, FileRefused, open_checked
from .seal import HoldSeal
from .staging import PreparedJob, prepare, write_outbox_entry

log = logging.getLogger(__name__)

SETTLE_POLL_SECONDS = 0.1
PEEK_AT_MOST = 8      # unsettled jobs read for the early start's guess at a class


@dataclass
class IntakeCounts:
    names: list[str] = field(default_factory=list)   # the jobs taken this cycle (the others' ends are
                                                     # counted by the Finisher)
    held: dict[str, HeldSummary] = field(default_factory=dict)  # their holds by job id, as written (not read back)
    whole: dict[str, HeldJob] = field(default_factory=dict)     # the first ``keep_whole`` of those whole, by name
    staged_bytes: dict[str, int] = field(default_factory=dict)  # their outbox entries' sizes, by job id
    unsettled: int = 0          # still being written, left for the next cycle (``leave_unsettled``)


class Intake:
    def __init__(self, config: Config, dropbox: Dropbox, history: History, cache: ResultCache,
                 finisher: Finisher, boundary: Boundary, seal: HoldSeal, boundaries: Boundaries):
        self.config = config
        self.seal = seal
        self.boundaries = boundaries
        self.dropbox = dropbox
        self.history = history
        self.cache = cache
        self.finisher = finisher
        self.boundary = boundary
        self.closed: set[str] = set()    # known complete: seen closed or renamed in (watch), or stable
        self.outbox = config.state_dir / "outbox"
        # Told of each job before it is taken, until it answers False (the early start, ``early.py``).
        self.on_take: Callable[[PreparedJob], bool] | None = None
        self.metas: BatchFile | None = None     # the job.json of every job this cycle takes
        self.keep_whole = 0                     # how many of this cycle's holds to return whole

    def take_new_jobs(self, listing: Listing, keys_in_flight: set[str], names: list[str] | None = None,
                      leave_unsettled: bool = False, keep_whole: int = 0) -> IntakeCounts:
        """Take every new job (or only ``names`` of them); files changed in the last
        ``settle_seconds`` are waited for once, within this cycle (at most that long), so
        a job dropped just before a cron cycle does not wait for the next one.

        With ``leave_unsettled`` (a caller that runs the next cycle at once while jobs are
        left: ``run_burst``, the watch daemon), a cycle that took other jobs leaves those
        files to the next cycle instead: the jobs taken are staged and queued first, not
        held back up to ``settle_seconds`` for one file (a 1000-job burst took 2.7 s
        instead of 2.0 when its last file was renamed in within the tick of its write).

        The first ``keep_whole`` holds written are returned whole too (``IntakeCounts.whole``),
        so their collection need not read them back; the rest only as summaries, which keeps
        a 100,000-job cycle's memory bounded."""
        counts = IntakeCounts()
        self.keep_whole = keep_whole
        held_names = set(listing.submitted)
        unsettled: list[str] = []
        self.metas = BatchFile(str(self.outbox))
        try:
            self._take_all(listing.new if names is None else names, listing, held_names, keys_in_flight, counts,
                           unsettled)
            if unsettled:
                self._peek(unsettled)
                if leave_unsettled and counts.names:
                    counts.unsettled = len(unsettled)
                else:
                    self._wait_to_settle(unsettled)
                    self._take_all(unsettled, listing, held_names, keys_in_flight, counts, None)
        finally:
            self.metas.close()
            self.metas = None
        return counts

    def _take_all(self, names: list[str], listing: Listing, held_names: set[str], keys_in_flight: set[str],
                  counts: IntakeCounts, unsettled: list[str] | None) -> None:
        for name in names:
            self.boundary.contain(
                name, "taking in the job",
                lambda name=name: self._take_one(name, listing, held_names, keys_in_flight, counts, unsettled),
                None if name in held_names else lambda message, name=name: self._fail_untaken(name, message))

    def _peek(self, names: list[str]) -> None:
        """Tell ``on_take`` of the first of these jobs that reads as valid now, before the
        wait for them to settle: the early start only needs a likely class (a wrong guess
        is a pending runner that the cycle's own call cancels)."""
        told: list[str] = []

        def peek(name: str) -> None:
            try:
                job = prepare(self.config, name, read_job(self.dropbox.path(name))[0], boundaries=self.boundaries)
            except (JobInvalid, TemplateProblem, OSError):
                return
            self._tell(job)
            told.append(name)

        for name in names[:PEEK_AT_MOST] if self.on_take is not None else []:
            self.boundary.contain(name, "reading it before it settled", lambda name=name: peek(name), None)
            if told:
                return

    def _tell(self, job: PreparedJob) -> None:
        if not self.on_take(job):
            self.on_take = None     # nothing left to start early: no job is read ahead for it

    def _wait_to_settle(self, names: list[str]) -> None:
        """Until every name has settled (or was seen closed), at most ``settle_seconds``.
        A file whose size and mtime did not move during the whole wait has settled too,
        whatever its mtime says (a file server whose clock runs ahead)."""
        seen = {name: self._stamp(name) for name in names}
        deadline = time.monotonic() + self.config.settle_seconds
        while True:
            pending = [name for name in names
                       if name not in self.closed and not self.dropbox.settled(name, self.config.settle_seconds)]
            if not pending:
                return
            if time.monotonic() >= deadline:
                self.closed.update(name for name in pending if seen[name] and self._stamp(name) == seen[name])
                return
            time.sleep(SETTLE_POLL_SECONDS)

    def _stamp(self, name: str) -> tuple[int, int] | None:
        try:
            info = os.lstat(self.dropbox.path(name))
        except OSError:
            return None
        return info.st_size, info.st_mtime_ns

    def _take_one(self, name: str, listing: Listing, held_names: set[str], keys_in_flight: set[str],
                  counts: IntakeCounts, unsettled: list[str] | None) -> None:
        if name in held_names or name in listing.finished:
            self._settle_duplicate(name, name in held_names)
            return
        if name in listing.cancel:
            self._finish_untaken(name, "cancelled", "cancelled before it was sent to the cluster")
            return
        if not self._settled(name):
            log.debug("%s: changed in the last %ss; taken once it settles", name, self.config.settle_seconds)
            if unsettled is not None:
                unsettled.append(name)
            return
        raw, digest = None, None
        try:
            raw, digest = read_job(self.dropbox.path(name))
            job = prepare(self.config, name, raw, boundaries=self.boundaries)
            provenance = self._provenance(job)
        except FileNotFoundError:
            return              # taken back by its tool
        except (JobInvalid, TemplateProblem) as problem:
            problems = getattr(problem, "problems", [str(problem)])
            digest = digest or getattr(problem, "digest", None)
            if getattr(problem, "incomplete", False) and self.dropbox.age(name) < self.config.grace_seconds:
                log.debug("%s: does not parse yet, may still be being written: %s", name, problems)
                return
            self._reject(name, raw, problems, digest)
            return
        key = provenance.get("cache_key")
        if key and self._serve_from_cache(name, raw, key, digest, provenance):
            return
        if key and key in keys_in_flight:
            log.debug("%s: an identical job is running; waiting for its result", name)
            return
        if self.on_take is not None:
            self._tell(job)        # the submitter's early start: the runner is asked for before staging
        try:
            hold, size = self._take(name, raw, job, digest, provenance)
        except JobInvalid as problem:
            self._reject(name, raw, problem.problems, digest)
            return
        except OSError:     # the state folder's disk, not the job: it waits, and the boundary says so
            shutil.rmtree(self.outbox / job.job_id, ignore_errors=True)
            raise
        if hold.cache_key:
            keys_in_flight.add(hold.cache_key)
        counts.names.append(name)
        counts.held[hold.job_id] = hold.summary()
        counts.staged_bytes[hold.job_id] = size
        if len(counts.whole) < self.keep_whole:
            counts.whole[name] = hold

    def _settled(self, name: str) -> bool:
        """A job file written in place (not renamed) must not be taken half-written: it is
        taken once closed or renamed in (watch mode sees those events; ``once`` sees the
        rename in its ctime, ``Dropbox.settled``), or once its mtime, which every write
        moves, is ``settle_seconds`` old."""
        if name in self.closed:
            self.closed.discard(name)
            return True
        return self.dropbox.settled(name, self.config.settle_seconds)

    def _provenance(self, job: PreparedJob) -> dict[str, Any]:
        inputs = {key: {"path": path, "sha256": self._input_digest(key, path)}
                  for key, path in sorted(job.description.input_map.items())}
        provenance = {
            "inputs": inputs,
            "template": {"name": job.template.name, "sha256": job.template.digest},
            "script_sha256": hashlib.sha256(job.script.encode()).hexdigest(),
            "submitter": self.config.submitter_id,
            "version": __version__,
        }
        return self._keyed(job, provenance)

    def _input_digest(self, key: str, path: str) -> str:
        """Read through a checked descriptor: a FIFO or a file out of bounds swapped in
        since the check is refused, never read (nor waited on).  A read error is the
        job's input's, whatever the errno: its fault."""
        try:
            with os.fdopen(open_checked(path, self.boundaries), "rb") as handle:
                return self.history.file_digest(path, handle)
        except FileRefused as refused:
            raise JobInvalid([f"input_map.{key}: {path} {refused}"]) from None
        except OSError as error:
            raise JobInvalid([f"input_map.{key}: {path} cannot be read: {error.strerror or error}"]) from None

    def _keyed(self, job: PreparedJob, provenance: dict[str, Any]) -> dict[str, Any]:
        provenance.pop("cache_key", None)
        if self.cache.enabled and job.cacheable:
            provenance["cache_key"] = cache_key(job.template.digest, job.neutral_script, job.description.args,
                                                {key: value["sha256"] for key, value in provenance["inputs"].items()})
        return provenance

    def _take(self, name: str, raw: dict[str, Any], job: PreparedJob, digest: str,
              provenance: dict[str, Any]) -> tuple[HeldJob, int]:
        """Stage the inputs, hold the job, drop its ``.job``; the hold's provenance
        describes the inputs as copied, which is what runs and what the cache key names.
        Returns the hold and the size of the outbox entry staged."""
        staged = write_outbox_entry(self.outbox, job, self.config.submitter_id, self.boundaries, self.metas)
        if any(provenance["inputs"][key]["sha256"] != sha for key, sha in staged.digests.items()):
            log.warning("%s: an input changed while the job was being taken; its digests are those of the copy",
                        name)
            for key, sha in staged.digests.items():
                provenance["inputs"][key]["sha256"] = sha
            provenance = self._keyed(job, provenance)
        fault_point("after_outbox")
        hold = HeldJob(name, job.job_id, raw, job.fingerprint, job.job_class, time.time(), digest, provenance)
        self.dropbox.hold(hold, self.seal)
        fault_point("after_hold")
        self.dropbox.discard(name, "")
        self.history.record(name, JobState.SUBMITTED, job.job_id, detail=f"class {job.job_class}",
                            **{"class": job.job_class})
        log.info("%s: taken as %s (class %s)", name, job.job_id, job.job_class)
        return hold, staged.size

    def _serve_from_cache(self, name: str, raw: dict[str, Any], key: str, digest: str,
                          provenance: dict[str, Any]) -> bool:
        entry = self.cache.lookup(key)
        if entry is None:
            return False
        original = entry["block"]
        block = dict(original, cached=True, message="processed OK (from cache)", job_digest=digest,
                     provenance=dict(provenance, original_run=original.get("provenance")))
        outputs = raw.get("output_map") or {}
        return self.finisher.finish(Outcome(
            name, raw, block, kind=CACHED, held=False, produced={k: entry["outputs"] / k for k in outputs},
            cache_key=key, detail="from cache"))

    def _settle_duplicate(self, name: str, is_held: bool) -> None:
        """A ``.job`` beside the ``.submitted`` or ``.finished`` made from it (same bytes,
        and not newer) is a crash's leftover: it is removed.  Any other ``.job`` of that
        name is a new job: it waits for the one in flight, or replaces an old result."""
        try:
            digest = self.dropbox.digest(name)
        except FileNotFoundError:
            return
        except UnusableEntry:
            digest = None           # a link or a non-file is never one of ours
        sibling = ".submitted" if is_held else ".finished"
        if is_held:
            try:
                recorded = self.dropbox.read_held(name).get("job_digest")
            except ValueError:
                recorded = None
        else:
            recorded = ((self.dropbox.read_result(name) or {}).get("job") or {}).get("job_digest")
        if recorded == digest and self.dropbox.mtime(name, sibling) >= self.dropbox.mtime(name):
            self.dropbox.discard(name, "")
        elif is_held:
            log.warning("%s: a new job with the name of one still running; it waits", name)
        else:
            self.dropbox.discard(name, ".finished")

    def _reject(self, name: str, raw: Any, problems: list[str], digest: str) -> None:
        message = "invalid job: " + "; ".join(problems)
        self.finisher.finish(Outcome(name, echoable(raw),
                                     error_block(message, job_digest=digest), kind=REJECTED, held=False,
                                     log_level=logging.WARNING))

    def _fail_untaken(self, name: str, message: str) -> None:
        """An error result for a job whose intake raised; a hold this intake may already
        have written goes too (no other hold of this name existed, or it would not be here)."""
        self.dropbox.discard(name, ".submitted")
        self._finish_untaken(name, message, message, kind=FAILED)

    def _finish_untaken(self, name: str, message: str, detail: str, kind: str = CANCELLED) -> None:
        try:
            raw, digest = read_job(self.dropbox.path(name))
        except JobInvalid as problem:
            raw, digest = None, problem.digest
        except OSError:
            raw, digest = None, None
        self.finisher.finish(Outcome(name, echoable(raw), error_block(message, job_digest=digest), kind=kind,
                                     held=False, detail=detail))
