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

The temporary files are made in a private staging folder of the submitter's when it is
on the same filesystem, and renamed from there: the watch daemon's inotify watch on the
dropbox then sees one event per file (its arrival) instead of four (made, closed, moved
from, moved to), and watchdog held every "moved from" in a queue that it searched for
each later event (0.4 ms of the daemon's CPU a job, a 1000-job burst on tmpfs).
"""
from __future__ import annotations

import os
import secrets
import stat
from pathlib import Path

from .faults import fault_point
from .on_hpc.files import sync_files, sync_folders, write_all
from .safefs import CREATE_FLAGS


class DurableBatch:
    """Writes and removals of one step of a cycle, made durable in one go by ``commit``.

    Written as ``safefs.write_atomic`` writes (a fresh unguessable temporary created with
    ``O_EXCL|O_NOFOLLOW`` inside the opened folder, renamed there, ``mode`` masked by the
    umask), less the fsync of each file.  Folders are kept as strings: a burst writes two
    files a job, and pathlib's parse of each name cost more than the write's Python."""

    def __init__(self, prefix: str = ".tmp-", staging: Path | None = None) -> None:
        self.prefix = prefix
        self.staging = None if staging is None else os.fspath(staging)   # where temporaries are made,
                                                                         # if on the targets' filesystem
        self._made_in: dict[str, str] = {}      # target folder -> where its temporaries go, once a batch
        self._opened: dict[str, int] = {}       # folders opened by this batch, until its commit
        self.writes: list[tuple[str, str, str]] = []       # (folder made in, temporary name, final name)
        self.targets: list[str] = []                        # the final names' folders, in the same order
        self.removals: list[str | Path] = []

    def write(self, path: str | Path, data: bytes, mode: int = 0o666) -> None:
        """Write ``data`` under a hidden temporary name, in the staging folder or beside
        ``path``; renamed to ``path`` at commit."""
        target, name = os.path.split(os.fspath(path))
        made_in = self._folder_for(target)
        folder = self._open(made_in)
        while True:
            temporary = f"{self.prefix}{name[:64]}.{secrets.token_hex(8)}"
            try:
                fd = os.open(temporary, CREATE_FLAGS, mode, dir_fd=folder)
                break
            except FileExistsError:
                continue
        try:
            write_all(fd, data)
        except BaseException:
            _unlink(temporary, folder)
            raise
        finally:
            os.close(fd)
        self.writes.append((made_in, temporary, name))
        self.targets.append(target)

    def _folder_for(self, target: str) -> str:
        """The staging folder when a rename from it into ``target`` works (same
        filesystem), else ``target`` itself; asked once a batch for each target folder."""
        if target not in self._made_in:
            self._made_in[target] = self.staging if self._stages_for(target) else target
        return self._made_in[target]

    def _stages_for(self, target: str) -> bool:
        if self.staging is None:
            return False
        try:
            staging = _private_folder(self.staging)
            return staging is not None and _private_folder(os.path.dirname(self.staging)) is not None and (
                staging.st_dev == os.stat(target).st_dev)
        except OSError:
            return False

    def remove(self, path: str | Path) -> None:
        """Remove ``path`` once everything written before it is durable."""
        self.removals.append(path)

    def _open(self, folder: str, follow: bool = False) -> int:
        """The folder's descriptor, opened once a batch.  Where temporaries are made it is
        opened without following a link, and they are made in it and renamed from it; a
        target folder only (the dropbox, which the operator may name through a link) is
        opened as named."""
        if folder not in self._opened:
            flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow else os.O_NOFOLLOW)
            self._opened[folder] = os.open(folder, flags)
        return self._opened[folder]

    def commit(self) -> None:
        writes, targets, removals = self.writes, self.targets, self.removals
        self.writes, self.targets, self.removals, self._made_in = [], [], [], {}
        try:
            if writes:
                sync_files([f"{folder}/{temporary}" for folder, temporary, _ in writes])
                fault_point("in_batch")
                for (made_in, temporary, name), target in zip(writes, targets):
                    os.rename(temporary, name, src_dir_fd=self._open(made_in),
                              dst_dir_fd=self._open(target, follow=True))
                sync_folders({folder for folder, _, _ in writes} | set(targets))
        finally:
            opened, self._opened = self._opened, {}
            for fd in opened.values():
                os.close(fd)
        for path in removals:
            _unlink(path)


def _private_folder(folder: str) -> os.stat_result | None:
    """The folder's stat when it is a folder (not a link) of this account's that no one
    else may write into (what is made there stays as made until renamed out), else None."""
    info = os.stat(folder, follow_symlinks=False)
    private = stat.S_ISDIR(info.st_mode) and info.st_uid == os.geteuid() and not info.st_mode & 0o022
    return info if private else None


def _unlink(path: str | Path, folder: int | None = None) -> None:
    try:
        os.unlink(path, dir_fd=folder)
    except FileNotFoundError:
        pass
