"""The one way a job reaches its end in the dropbox.

Whatever ends a job (rejected at intake, answered from the cache, cancelled, a broken
hold, an input gone before sending, or a run collected from the cluster), the same steps
follow in the same order, so every crash-safety argument is made once, here:

1. outputs are placed, all or nothing (a run or a cache hit);
2. an ``ok`` run's outputs are kept in the result cache;
3. ``x.job.finished`` is written, atomically;
4. the hold is cleared: ``x.job`` (never taken) or ``x.job.submitted`` (taken), and any
   ``x.job.cancel``;
5. the job's scratch folders here are removed;
6. history records the end (with earlier runs of a resubmitted job folded into the result);
7. it is counted and logged, one line naming the job.

A crash between any two steps is redone whole by the next cycle: the hold still exists
until step 4, and the result file of step 3 is recognised by the job's digest or id.
"""
from __future__ import annotations

import logging
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cache import ResultCache
from .dropbox import Dropbox
from .entries import bounded_message
from .faults import fault_point
from .history import History
from .on_hpc.protocol import JobState
from .results import OutputProblem, place_outputs
from .safefs import Boundaries, HeldFile, current_umask

log = logging.getLogger(__name__)

# What ended the job; each is counted under its own name.
REJECTED, CACHED, CANCELLED, FAILED, RAN = "rejected", "cached", "cancelled", "failed", "ran"


@dataclass
class Outcome:
    """How one job ends: its result block and what must happen around writing it."""

    name: str                                   # the job file's name, ``x.job``
    description: dict[str, Any] | None          # what the result repeats (None: not a mapping)
    block: dict[str, Any]                       # the result's ``job:`` block
    kind: str = FAILED
    held: bool = True                           # cleared hold: ``.submitted`` (True) or ``.job``
    produced: dict[str, Path] = field(default_factory=dict)   # output key -> file to place
    linkable: dict[str, HeldFile] = field(default_factory=dict)   # those held where the job left them
    cache_key: str | None = None                # keep an ok run's outputs under this key
    scratch: list[Path] = field(default_factory=list)          # folders here to remove
    record: dict[str, Any] = field(default_factory=dict)       # extra history columns
    detail: str | None = None                   # history's detail (default: the message)
    log_level: int = logging.INFO

    @property
    def ok(self) -> bool:
        return self.block.get("status") == "ok"


class Finisher:
    """Writes outcomes; ``tally`` counts them by kind (``ran`` split into ok and error)."""

    def __init__(self, dropbox: Dropbox, history: History, cache: ResultCache, boundaries: Boundaries):
        self.dropbox = dropbox
        self.history = history
        self.cache = cache
        self.boundaries = boundaries     # where outputs may go, checked again as each is placed
        self.tally: Counter[str] = Counter()
        self.umask: int | None = None   # what linked outputs are masked by; read when not known
        self.earlier: set[str] = set()  # names with earlier runs (``resubmit``) to put in their result

    def begin_cycle(self) -> None:
        """A fresh tally, the umask read once for the cycle's outputs, and the names with
        earlier runs, asked once a cycle rather than twice a result (called after the
        cycle's scan: ``resubmit`` remembers a run before it puts its job back, so every
        job the scan saw is known by then)."""
        self.tally.clear()
        self.umask = current_umask()
        self.earlier = self.history.names_with_earlier_runs()

    def finish(self, outcome: Outcome) -> bool:
        """Write the outcome; False only for a cache hit whose outputs cannot be placed
        (nothing was written then: the job runs instead)."""
        block = outcome.block
        if outcome.ok and outcome.kind in (RAN, CACHED):
            outputs = (outcome.description or {}).get("output_map") or {}
            try:
                place_outputs(outcome.produced, outputs, self.boundaries, outcome.linkable, self.umask)
            except OutputProblem as problem:
                if outcome.kind == CACHED:
                    log.warning("%s: cache entry unusable (%s); running the job", outcome.name, problem)
                    return False
                block.update(status="error", message=str(problem))
            else:
                if outcome.cache_key:
                    self._keep_in_cache(outcome)
            fault_point("after_outputs")
        if isinstance(block.get("message"), str):
            block["message"] = bounded_message(block["message"])     # a result and a log line stay readable
        earlier = self.history.earlier_runs(outcome.name) if outcome.name in self.earlier else []
        if earlier:
            block["earlier_runs"] = earlier
        self.dropbox.write_result(outcome.name, outcome.description, block)
        fault_point("after_reject_result" if outcome.kind == REJECTED else "after_result")
        self.dropbox.discard(outcome.name, ".submitted" if outcome.held else "")
        self.dropbox.discard(outcome.name, ".cancel")
        for folder in outcome.scratch:
            shutil.rmtree(folder, ignore_errors=True)
        if earlier:
            self.history.forget_earlier_runs(outcome.name)
            self.earlier.discard(outcome.name)
        message = block.get("message")
        self.history.record(outcome.name, JobState.FINISHED, block.get("id"), detail=outcome.detail or message,
                            status=block.get("status"), message=message, **outcome.record)
        self.tally[outcome.kind if outcome.kind != RAN else f"ran_{block.get('status')}"] += 1
        log.log(outcome.log_level, "%s: %s: %s", outcome.name, _verb(outcome), message)
        return True

    def _keep_in_cache(self, outcome: Outcome) -> None:
        """The cache only saves later work: a cache that cannot take the outputs (its disk
        full) never holds back this job's result."""
        try:
            self.cache.store(outcome.cache_key, outcome.produced, outcome.block)
        except OSError as error:
            log.warning("%s: not kept in the result cache: %s", outcome.name, error)


def _verb(outcome: Outcome) -> str:
    return {REJECTED: "rejected", CACHED: "finished ok from cache",
            CANCELLED: "cancelled"}.get(outcome.kind, f"finished {outcome.block.get('status')}")
