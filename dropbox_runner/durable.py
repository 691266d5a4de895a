"""Durable batches: a cycle's many small files made durable together, not one fsync each.

Every dropbox file is written whole under a temporary name and renamed into place, so a
process killed at any instant leaves each file whole or absent.  Surviving a power loss
also needs the data on disk before the rename, and the rename on disk before any step
that depends on it (removing the ``.job`` a ``.submitted`` replaces, the ``.submitted`` a
``.finished`` answers).  One ``fsync`` per file does that at the price of one journal
commit per file: with a thousand jobs a cycle, most of the cycle.

A batch keeps the order and pays once: its writes go to temporary files, its removals
wait; at the end of the batch one ``syncfs`` per filesystem makes every written byte
durable, the renames are done, one more ``syncfs`` makes them durable, and only then
are the removals made.  Killed before the end, the batch has renamed nothing and removed
nothing: the next cycle finds the state before it, which every step already handles.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from .faults import fault_point
from .on_hpc.files import sync_files, sync_folders


class DurableBatch:
    """Writes and removals of one step of a cycle, made durable in one go by ``commit``."""

    def __init__(self, prefix: str = ".tmp-") -> None:
        self.prefix = prefix
        self.writes: list[tuple[str, str]] = []      # (temporary file, final path), in order
        self.removals: list[Path] = []

    def write(self, path: str, data: str | bytes) -> None:
        """Write ``data`` beside ``path`` under a hidden temporary name; renamed at commit."""
        fd, temporary = tempfile.mkstemp(prefix=self.prefix, dir=os.path.dirname(path) or ".")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data.encode("utf-8") if isinstance(data, str) else data)
        except BaseException:
            _unlink(temporary)
            raise
        self.writes.append((temporary, path))

    def remove(self, path: Path) -> None:
        """Remove ``path`` once everything written before it is durable."""
        self.removals.append(path)

    def commit(self) -> None:
        writes, removals = self.writes, self.removals
        self.writes, self.removals = [], []
        if writes:
            sync_files([temporary for temporary, _ in writes])
            fault_point("in_batch")
            for temporary, path in writes:
                os.replace(temporary, path)
            sync_folders({os.path.dirname(path) or "." for _, path in writes})
        for path in removals:
            _unlink(path)

    def abandon(self) -> None:
        """Drop what was written and not committed (the state before the batch stays)."""
        for temporary, _ in self.writes:
            _unlink(temporary)
        self.writes, self.removals = [], []


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
