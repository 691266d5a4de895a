"""Sizes as people write them in configs: "500M", "10G" (durations: ``on_hpc.durations``)."""
from __future__ import annotations

import re

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
