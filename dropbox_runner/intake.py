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
from typing import Any

from . import __version__
from .boundaries import boundaries_for
from .cache import ResultCache, cache_key
from .config import Config
from .dropbox import Dropbox, HeldJob, Listing
from .faults import fault_point
from .history import History
from .jobs import JobInvalid, echoable, read_job
from .rendering import TemplateProblem
from .results import OutputProblem, error_block, place_outputs
from .safefs import FileRefused, open_checked
from .seal import HoldSeal
from .staging import PreparedJob, prepare, write_outbox_entry

log = logging.getLogger(__name__)

CANCELLED = "cancelled"


@dataclass
class IntakeCounts:
    names: list[str] = field(default_factory=list)   # the jobs taken this cycle
    rejected: int = 0
    cached: int = 0
    cancelled: int = 0


class Intake:
    def __init__(self, config: Config, dropbox: Dropbox, history: History, cache: ResultCache, seal: HoldSeal):
        self.config = config
        self.seal = seal
        self.boundaries = boundaries_for(config)
        self.dropbox = dropbox
        self.history = history
        self.cache = cache
        self.outbox = config.state_dir / "outbox"

    def take_new_jobs(self, listing: Listing, keys_in_flight: set[str]) -> IntakeCounts:
        counts = IntakeCounts()
        held_names = set(listing.submitted)
        for name in listing.new:
            if name in held_names or name in listing.finished:
                self._settle_duplicate(name, name in held_names)
                continue
            if name in listing.cancel:
                self._finish_untaken(name, CANCELLED, "cancelled before it was sent to the cluster")
                counts.cancelled += 1
                continue
            raw = digest = None
            try:
                raw, digest = read_job(self.dropbox.path(name))
                job = prepare(self.config, name, raw)
                provenance = self._provenance(job)
            except FileNotFoundError:
                continue            # taken back by its tool
            except (JobInvalid, TemplateProblem) as problem:
                problems = getattr(problem, "problems", [str(problem)])
                digest = digest or getattr(problem, "digest", None)
                if self.dropbox.age(name) < self.config.grace_seconds:
                    log.debug("%s: not valid yet, may still be being written: %s", name, problems)
                    continue
                self._reject(name, raw, problems, digest)
                counts.rejected += 1
                continue
            key = provenance.get("cache_key")
            if key and self._serve_from_cache(name, raw, key, digest, provenance):
                counts.cached += 1
                continue
            if key and key in keys_in_flight:
                log.debug("%s: an identical job is running; waiting for its result", name)
                continue
            try:
                provenance = self._take(name, raw, job, digest, provenance)
            except JobInvalid as problem:
                self._reject(name, raw, problem.problems, digest)
                counts.rejected += 1
                continue
            except OSError as error:        # the state folder's disk, not the job: it waits
                shutil.rmtree(self.outbox / job.job_id, ignore_errors=True)
                log.error("%s: could not copy its inputs into %s (%s); it waits for the next cycle",
                          name, self.outbox, error)
                continue
            key = provenance.get("cache_key")
            if key:
                keys_in_flight.add(key)
            counts.names.append(name)
        return counts

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
        since the check is refused, never read (nor waited on)."""
        try:
            with os.fdopen(open_checked(path, self.boundaries), "rb") as handle:
                return self.history.file_digest(path, handle)
        except FileRefused as refused:
            raise JobInvalid([f"input_map.{key}: {path} {refused}"]) from None

    def _keyed(self, job: PreparedJob, provenance: dict[str, Any]) -> dict[str, Any]:
        provenance.pop("cache_key", None)
        if self.cache.enabled and job.cacheable:
            provenance["cache_key"] = cache_key(job.template.digest, job.neutral_script, job.description.args,
                                                {key: value["sha256"] for key, value in provenance["inputs"].items()})
        return provenance

    def _take(self, name: str, raw: dict[str, Any], job: PreparedJob, digest: str,
              provenance: dict[str, Any]) -> dict[str, Any]:
        """Stage the inputs, hold the job, drop its ``.job``; the provenance returned
        describes the inputs as copied, which is what runs and what the cache key names."""
        staged = write_outbox_entry(self.outbox, job, self.config.submitter_id, self.boundaries)
        if any(provenance["inputs"][key]["sha256"] != sha for key, sha in staged.items()):
            log.warning("%s: an input changed while the job was being taken; its digests are those of the copy",
                        name)
            for key, sha in staged.items():
                provenance["inputs"][key]["sha256"] = sha
            provenance = self._keyed(job, provenance)
        fault_point("after_outbox")
        self.dropbox.hold(HeldJob(name, job.job_id, raw, job.fingerprint, job.job_class, time.time(),
                                  digest, provenance), self.seal)
        fault_point("after_hold")
        self.dropbox.discard(name, "")
        self.history.record(name, "submitted", job.job_id, detail=f"class {job.job_class}",
                            **{"class": job.job_class})
        log.info("%s: taken as %s (class %s)", name, job.job_id, job.job_class)
        return provenance

    def _serve_from_cache(self, name: str, raw: dict[str, Any], key: str, digest: str,
                          provenance: dict[str, Any]) -> bool:
        entry = self.cache.lookup(key)
        if entry is None:
            return False
        outputs = raw.get("output_map") or {}
        try:
            place_outputs({k: entry["outputs"] / k for k in outputs}, outputs, self.boundaries)
        except OutputProblem as problem:
            log.warning("%s: cache entry %s unusable (%s); running the job", name, key[:12], problem)
            return False
        original = entry["block"]
        block = dict(original, cached=True, message="processed OK (from cache)", job_digest=digest,
                     provenance=dict(provenance, original_run=original.get("provenance")))
        self.dropbox.write_result(name, raw, block)
        self.dropbox.discard(name, "")
        self.history.record(name, "finished", original.get("id"), detail="from cache", status="ok",
                            message=block["message"])
        log.info("%s: finished ok from cache (key %s)", name, key[:12])
        return True

    def _settle_duplicate(self, name: str, is_held: bool) -> None:
        """A ``.job`` beside the ``.submitted`` or ``.finished`` made from it (same bytes,
        and not newer) is a crash's leftover: it is removed.  Any other ``.job`` of that
        name is a new job: it waits for the one in flight, or replaces an old result."""
        try:
            digest = self.dropbox.digest(name)
        except FileNotFoundError:
            return
        except FileRefused:
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
        self.dropbox.write_result(name, echoable(raw), error_block(message, job_digest=digest))
        fault_point("after_reject_result")
        self.dropbox.discard(name, "")
        self.history.record(name, "finished", detail=message, status="error", message=message)
        log.warning("%s: rejected: %s", name, "; ".join(problems))

    def _finish_untaken(self, name: str, message: str, detail: str) -> None:
        try:
            raw, digest = read_job(self.dropbox.path(name))
        except JobInvalid as problem:
            raw, digest = None, problem.digest
        except OSError:
            raw, digest = None, None
        self.dropbox.write_result(name, echoable(raw), error_block(message, job_digest=digest))
        self.dropbox.discard(name, "")
        self.dropbox.discard(name, ".cancel")
        self.history.record(name, "finished", detail=detail, status="error", message=message)
        log.info("%s: %s", name, detail)
