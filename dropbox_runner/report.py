"""What one cycle did, for its log line, the metrics textfile and the watch daemon.

Its own module so that the submitter, which fills it in, and the metrics, which read it,
do not import each other.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class CycleReport:
    taken: int = 0
    more_new: bool = False      # new jobs left for the next cycle (``Submitter.intake_slice``)
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
    environment_errors: list[str] = field(default_factory=list)   # jobs that wait for this machine's fault
    abandoned: list[str] = field(default_factory=list)   # failed here; the cluster drops what it has of them
    unsent: list[str] = field(default_factory=list)      # their push ran out of space; sent again later
    states: dict[str, int] = field(default_factory=dict)
    runners: list[dict[str, Any]] = field(default_factory=list)
    seconds: float = 0.0
