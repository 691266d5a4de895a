"""The embedded backend's transport: the cluster side is this machine."""
from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

from . import CommandResult


class LocalTransport:
    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        done = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def push(self, local_dir: Path, remote_dir: str) -> None:
        """Like rsync: ``local_dir``'s content ends up in ``remote_dir``.  A folder not there
        yet is moved, not copied: a job's outbox entry (the submitter's own files, its
        inputs already copies) costs two folders and two files fewer to make and remove."""
        target = Path(remote_dir)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in os.scandir(local_dir):
            destination = target / entry.name
            if entry.is_dir(follow_symlinks=False) and not os.path.lexists(destination):
                try:
                    os.rename(entry.path, destination)
                    continue
                except OSError:
                    pass        # another filesystem, or a race: copied below
            if entry.is_dir():
                _copy_tree(Path(entry.path), destination)
            elif entry.is_file():
                shutil.copy2(entry.path, destination)

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        """As the rsync pull: links a job left (a tar it unpacked, say) are never followed
        back, and only regular files come (a FIFO would block the cycle)."""
        for relative in relative_paths:
            source = Path(remote_dir) / relative
            target = local_dir / relative
            if source.is_dir() and not source.is_symlink():
                _pull_tree(source, target)
            elif source.is_file() and not source.is_symlink():
                target.parent.mkdir(parents=True, exist_ok=True)
                _pull_file(str(source), target)

    def close(self) -> None:
        pass


def _copy_tree(source: Path, target: Path) -> None:
    """Like ``rsync -rL``; files already there unchanged are skipped."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in os.scandir(source):
        destination = target / entry.name
        if entry.is_dir():
            _copy_tree(Path(entry.path), destination)
            continue
        if not entry.is_file():
            continue
        info = os.stat(entry.path)
        try:
            there = os.stat(destination)
            if there.st_size == info.st_size and int(there.st_mtime) == int(info.st_mtime):
                continue
        except FileNotFoundError:
            pass
        partial = destination.with_name(f".{entry.name}.partial")
        try:
            shutil.copy2(entry.path, partial)
        except OSError:
            partial.unlink(missing_ok=True)     # as rsync does: no half file left on a full disk
            raise
        os.replace(partial, destination)


def _pull_tree(source: Path, target: Path) -> None:
    """``rsync -r`` of what a job left: folders and regular files; links and other non-files skipped."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in os.scandir(source):
        if entry.is_dir(follow_symlinks=False):
            _pull_tree(Path(entry.path), target / entry.name)
        elif entry.is_file(follow_symlinks=False):
            _pull_file(entry.path, target / entry.name)


def _pull_file(source: str, target: Path) -> None:
    """A hard link to the job's file where one can be made, else a copy: a link makes no
    new file, and making a file is the dearest step of collecting a small job on most
    filesystems (issue 18).  The link is made to the descriptor opened here (never
    following a link, never blocking on a FIFO) and checked to be a regular file we may
    read, so a job that swaps its file for a link or a FIFO meanwhile gets what the copy
    gave it: the file skipped.  The pulled file is only read (outputs are copied into
    place from it), so sharing its inode with the cluster side costs nothing."""
    try:
        fd = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as error:
        if os.path.islink(source):
            return          # swapped for a link since it was listed: skipped, as rsync -r does
        raise OSError(error.errno, f"cannot read {source}: {error.strerror}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return
        target.unlink(missing_ok=True)      # an earlier pull's (the inbox is the submitter's own)
        try:
            _link_descriptor(fd, target)    # whole at once: no partial file to rename
            return
        except OSError:         # another filesystem, links refused (protected_hardlinks), no /proc
            pass
        partial = target.with_name(f".{target.name}.partial")
        try:
            with os.fdopen(os.dup(fd), "rb") as data, open(partial, "wb") as copy:
                shutil.copyfileobj(data, copy)
        except OSError:
            partial.unlink(missing_ok=True)     # as rsync does: no half file left on a full disk
            raise
        os.replace(partial, target)
    finally:
        os.close(fd)


def _link_descriptor(fd: int, path: Path) -> None:
    """``linkat`` of the open file itself through ``/proc``, so what is linked is what was
    checked (Python calls plain ``link``, which would not follow the ``/proc`` entry,
    unless a folder descriptor is given)."""
    descriptors = os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.link(str(fd), path, src_dir_fd=descriptors, follow_symlinks=True)
    finally:
        os.close(descriptors)
