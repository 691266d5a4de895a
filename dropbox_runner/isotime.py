"""Local times in ISO 8601 with the zone's offset, as results and log lines show them.

``datetime.fromtimestamp(...).astimezone().isoformat()`` builds a timezone object for each
call; collecting a burst formats two times a job, and that was 2% of a cycle's CPU.  The
text is the same, from ``time.localtime`` and its ``tm_gmtoff``.
"""
from __future__ import annotations

import math
import time


def split_seconds(created: float) -> tuple[int, int]:
    """Whole seconds and microseconds, rounded as ``datetime.fromtimestamp`` rounds, so a
    time reads exactly as it did when each was formatted through a datetime."""
    fraction, whole = math.modf(created)
    micro = round(fraction * 1_000_000)
    if micro >= 1_000_000:
        return int(whole) + 1, micro - 1_000_000
    if micro < 0:       # before 1970: modf's parts are both negative
        return int(whole) - 1, micro + 1_000_000
    return int(whole), micro


def local_iso_seconds(seconds: float) -> str:
    """``2026-11-22T14:03:07+01:00``: what ``isoformat(timespec="seconds")`` of the
    local, zone-aware datetime says."""
    local = time.localtime(split_seconds(seconds)[0])
    offset = local.tm_gmtoff
    sign = "-" if offset < 0 else "+"
    hours, rest = divmod(abs(offset), 3600)
    minutes, rest_seconds = divmod(rest, 60)
    zone = f"{sign}{hours:02d}:{minutes:02d}" + (f":{rest_seconds:02d}" if rest_seconds else "")
    return time.strftime("%Y-%m-%dT%H:%M:%S", local) + zone
