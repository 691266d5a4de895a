"""Durable batches: a cycle's many small files made durable together, not one fsync each.

Every dropbox file is written whole under a temporary name and renamed into place, so a
process killed at any instant leaves each file whole or absent.  Surviving a power loss
also needs the data on disk before the rename, and the rename on disk before any step
that depends on it (removing the ``.job`` a ``.submitted`` replaces, the ``.submitted`` a
``.finished`` answers).  One ``fsync`` per file does that at the price of one journal
commit per file: with a thousand jobs a cycle, most of the cycle.

A batch keeps the order and pays once: its writes go to temporary files, its removals
wait; at the end of the batch one ``syncfs`` per filesystem makes every written byte
durable, the renames are done, one ``fsync`` per folder makes them durable, and only then
are the removals made.  Killed before the end, the batch has renamed nothing and removed
nothing: the next cycle finds the state before it, which every step already handles.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import tempfile
from pathlib import Path

from .faults import fault_point

log = logging.getLogger(__name__)


def _syncfs_call():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.syncfs
    except (OSError, AttributeError):
        return None


_SYNCFS = _syncfs_call()


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


def sync_files(paths: list[str]) -> None:
    """Make the files' data durable: one ``syncfs`` per filesystem where Linux has it,
    else one ``fsync`` per file."""
    if _SYNCFS is not None:
        devices: dict[int, str] = {}
        for path in paths:
            devices.setdefault(os.stat(path).st_dev, path)
        if all(_syncfs(path) for path in devices.values()):
            return
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sync_folders(folders: set[str]) -> None:
    """Make renames into these folders durable (one ``fsync`` of each folder)."""
    for folder in sorted(folders):
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(path: str) -> bool:
    fd = os.open(path, os.O_RDONLY)
    try:
        if _SYNCFS(fd) == 0:
            return True
        log.debug("syncfs failed on %s (errno %d); falling back to fsync", path, ctypes.get_errno())
        return False
    finally:
        os.close(fd)


def _unlink(path: str | Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
