"""Durations as people write them and as Slurm prints them, read and written in one place.

Configs, templates and job files say ``90``, ``90s``, ``30m``, ``2h``, ``1d`` or Slurm's
``[days-][hours:]minutes:seconds``; messages say ``1h30m``; tables of runners say
``[days-]hours:minutes:seconds`` as ``squeue`` does.  Standard library only, Python 3.8:
the cluster side parses squeue's time left with the same code.
"""
import math
import re

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
# The two written forms (lower-cased, stripped); the job's JSON Schema is built from them too.
DURATION_SUFFIXED = r"(\d+(?:\.\d+)?)\s*([smhd]?)"
DURATION_CLOCK = r"(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)"
_CLOCK = re.compile(DURATION_CLOCK)


def parse_duration(value):
    """Seconds in ``value``; ValueError naming the text when it is not a duration."""
    if isinstance(value, bool):
        raise ValueError("%r is not a duration" % (value,))
    if isinstance(value, (int, float)):
        if not math.isfinite(value) or value < 0:   # .inf in YAML; a negative time means nothing
            raise ValueError("%r is not a duration (a number of seconds, 0 or more)" % (value,))
        return int(value)
    text = str(value).strip().lower()
    match = re.fullmatch(DURATION_SUFFIXED, text)
    if match:
        return int(float(match.group(1)) * _UNITS[match.group(2) or "s"])
    seconds = parse_clock(text)
    if seconds is not None:
        return seconds
    raise ValueError("%r is not a duration (like 90, 90s, 30m, 2h, 1d or 1-02:00:00)" % (value,))


def parse_clock(text):
    """Seconds in ``[days-][hours:]minutes:seconds``, or None when ``text`` is not one."""
    match = _CLOCK.fullmatch(text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(part or 0) for part in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def format_duration(seconds):
    """The shortest exact way to write a duration: 45s, 2m, 1h30m, 1d2h; "none" for None."""
    if seconds is None:
        return "none"
    seconds = int(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            count, seconds = divmod(seconds, size)
            if count or unit == "s":
                parts.append("%d%s" % (count, unit))
    return "".join(parts)


def format_clock(seconds):
    """Like squeue's time left: ``[days-]hours:minutes:seconds``."""
    seconds = max(0, int(seconds))
    days, rest = divmod(seconds, 86400)
    clock = "%d:%02d:%02d" % (rest // 3600, rest // 60 % 60, rest % 60)
    return "%d-%s" % (days, clock) if days else clock
