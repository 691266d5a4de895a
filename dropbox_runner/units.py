"""Durations and sizes as people write them in configs and templates: durations like 90,
"90s", "30m", "2h", "1d" or Slurm's "[days-]hours:minutes:seconds"; sizes like "10G"."""
from __future__ import annotations

import math
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The two written forms of a duration (lower-cased, stripped): also the JSON Schema's.
DURATION_SUFFIXED = r"(\d+(?:\.\d+)?)\s*([smhd]?)"
DURATION_CLOCK = r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)"


def parse_duration(value: object) -> int:
    """Seconds in ``value``; raises ValueError with the text when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:   # .inf in YAML; a negative time means nothing
            raise ValueError(f"{value!r} is not a duration (a number of seconds, 0 or more)")
        return int(value)
    text = str(value).strip().lower()
    match = re.fullmatch(DURATION_SUFFIXED, text)
    if match:
        return int(float(match.group(1)) * _UNITS[match.group(2) or "s"])
    match = re.fullmatch(DURATION_CLOCK, text)
    if match:
        days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
        return ((days * 24 + hours) * 60 + minutes) * 60 + seconds
    raise ValueError(f"{value!r} is not a duration (like 90, 90s, 30m, 2h, 1d or 1-02:00:00)")


_SIZES = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def parse_size(value: object) -> int:
    """Bytes in ``value``: a number, or "500M", "10G", "1.5T" (binary units)."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, (int, float)):
        return int(value)
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", str(value).strip().lower())
    if not match:
        raise ValueError(f"{value!r} is not a size (like 500M, 10G)")
    return int(float(match.group(1)) * _SIZES[match.group(2)])


def format_duration(seconds: int | float | None) -> str:
    """The shortest exact way to write a duration: 45s, 2m, 1h30m, 1d2h."""
    if seconds is None:
        return "none"
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            count, seconds = divmod(seconds, size)
            if count or unit == "s":
                parts.append(f"{count}{unit}")
    return "".join(parts)
