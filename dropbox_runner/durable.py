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
import secrets
from pathlib import Path

from .faults import fault_point
from .on_hpc.files import sync_files, sync_folders
from .safefs import CREATE_FLAGS


class DurableBatch:
    """Writes and removals of one step of a cycle, made durable in one go by ``commit``.

    Written as ``safefs.write_atomic`` writes (a fresh unguessable temporary created with
    ``O_EXCL|O_NOFOLLOW`` inside the opened folder, renamed there, ``mode`` masked by the
    umask), less the fsync of each file."""

    def __init__(self, prefix: str = ".tmp-") -> None:
        self.prefix = prefix
        self.writes: list[tuple[Path, str, str]] = []      # (folder, temporary name, final name), in order
        self.removals: list[Path] = []

    def write(self, path: Path, data: bytes, mode: int = 0o666) -> None:
        """Write ``data`` beside ``path`` under a hidden temporary name; renamed at commit."""
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            while True:
                temporary = f"{self.prefix}{path.name[:64]}.{secrets.token_hex(8)}"
                try:
                    fd = os.open(temporary, CREATE_FLAGS, mode, dir_fd=folder)
                    break
                except FileExistsError:
                    continue
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
            except BaseException:
                _unlink(temporary, folder)
                raise
        finally:
            os.close(folder)
        self.writes.append((path.parent, temporary, path.name))

    def remove(self, path: Path) -> None:
        """Remove ``path`` once everything written before it is durable."""
        self.removals.append(path)

    def commit(self) -> None:
        writes, removals = self.writes, self.removals
        self.writes, self.removals = [], []
        if writes:
            sync_files([str(folder / temporary) for folder, temporary, _ in writes])
            fault_point("in_batch")
            for folder, temporary, name in writes:
                fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                try:
                    os.rename(temporary, name, src_dir_fd=fd, dst_dir_fd=fd)
                finally:
                    os.close(fd)
            sync_folders({str(folder) for folder, _, _ in writes})
        for path in removals:
            _unlink(path)


def _unlink(path: str | Path, folder: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=folder)
    except FileNotFoundError:
        pass
