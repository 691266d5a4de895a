"""The embedded backend's transport: the cluster side is this machine."""
from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import CommandResult


class LocalTransport:
    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        done = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def push(self, local_dir: Path, remote_dir: str) -> None:
        """Like rsync: ``local_dir``'s content ends up in ``remote_dir``.  A folder not there
        yet is moved, not copied (a job's outbox entry: two folders and two files fewer to
        make and remove per job); what its symlinks point at is copied into it first, so
        the cluster side never holds a link to a file of the submitter's side."""
        target = Path(remote_dir)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in os.scandir(local_dir):
            destination = target / entry.name
            if entry.is_dir(follow_symlinks=False) and not os.path.lexists(destination):
                try:
                    _resolve_links(Path(entry.path))
                    os.rename(entry.path, destination)
                    continue
                except OSError:
                    pass        # another filesystem, or a race: copy as below
            if entry.is_dir():
                _copy_tree(Path(entry.path), destination)
            else:
                _place(Path(entry.path), destination)

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        for relative in relative_paths:
            source = Path(remote_dir) / relative
            target = local_dir / relative
            if source.is_dir():
                _copy_tree(source, target)
            elif source.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                _place(source, target)

    def local_folder(self, remote_dir: str) -> Path:
        """The cluster's folder is this machine's: collection reads done jobs in place."""
        return Path(remote_dir)

    def close(self) -> None:
        pass


def _copy_tree(source: Path, target: Path) -> None:
    """Like ``rsync -rL``: follow symlinks, skip files already there unchanged."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in os.scandir(source):
        destination = target / entry.name
        if entry.is_dir():
            _copy_tree(Path(entry.path), destination)
            continue
        stat = os.stat(entry.path)
        try:
            there = os.stat(destination)
            if there.st_size == stat.st_size and int(there.st_mtime) == int(stat.st_mtime):
                continue
        except FileNotFoundError:
            pass
        _place(Path(entry.path), destination, regular=entry.is_file(follow_symlinks=False))


def _resolve_links(folder: Path) -> None:
    """Replace every symlink under ``folder`` by a copy of what it points at."""
    for parent, folders, files in os.walk(folder):
        for name in folders + files:
            path = Path(parent, name)
            if path.is_symlink():
                _place(path, path, regular=False)


def _place(source: Path, destination: Path, regular: bool | None = None) -> None:
    """Put a copy of ``source`` at ``destination`` atomically.  A regular file on the same
    filesystem is hard-linked: one metadata operation instead of a create, a copy, a
    ``utime``, a ``chmod`` and a rename, per file and twice per job (staged, collected).
    Neither side rewrites such a file in place (a job's output folder is made anew for
    each run), so sharing the inode is safe; a symlink (a job's input) is followed and
    copied, as ``rsync -L`` would."""
    partial = destination.with_name(f".{destination.name}.partial")
    if regular is None:
        regular = source.is_file() and not source.is_symlink()
    if regular:
        try:
            os.link(source, partial, follow_symlinks=False)
            os.replace(partial, destination)
            return
        except FileExistsError:
            os.unlink(partial)
            return _place(source, destination, regular)
        except OSError:
            pass                # another filesystem, or links not allowed: copy
    try:
        shutil.copy2(source, partial)
    except OSError:
        partial.unlink(missing_ok=True)     # as rsync does: no half file left on a full disk
        raise
    os.replace(partial, destination)
