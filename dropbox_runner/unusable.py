"""Dropbox entries no result can be written for, said once rather than every cycle.

A folder named ``x.job``, a FIFO or a name too long for its suffixes cannot be given a
result file; it is skipped, logged once when first seen (the list is kept in the state
folder, so cron's one-cycle processes agree), and listed by ``status``.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from .on_hpc.files import write_atomic

log = logging.getLogger(__name__)


def note_unusable(state_dir: Path, unusable: dict[str, str]) -> None:
    """Log the entries not seen in the last cycle; remember this cycle's."""
    path = state_dir / "unusable.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if not isinstance(known, dict):
        known = {}
    for name, why in sorted(unusable.items()):
        if known.get(name) != why:
            log.warning("%r in the dropbox is unusable: %s; it is left alone (no result can be written)",
                        name, why)
    if unusable != known:
        try:
            write_atomic(str(path), json.dumps(unusable, indent=1, sort_keys=True))
        except OSError as error:     # only costs a repeated log line next cycle
            log.warning("cannot remember the unusable entries in %s: %s", path, error)
