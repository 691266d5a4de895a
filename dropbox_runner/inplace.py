"""A done job's files read where they lie, for a transport whose cluster side is this machine.

The local pull made two folders and a link per file in the inbox, only for the collector
to read them once and remove them again: most of the files a collection made (issue 18).
Here the job's folder is opened once and each file under it is opened relative to that
descriptor, one component at a time, never following a link (a job may leave its
``output/``, a sub-folder or a file as a link to what it should not see) and never
blocking (``O_NONBLOCK``: a FIFO).  Only regular files are kept, by descriptor, so what
was checked is what is read: readers are given ``/proc/self/fd/N``, and opening that opens
the held file itself, whatever the job has put at its name since.  What the job left that
is not a regular file is treated as absent, as the pull skipped it.  Each file's folder
stays open too (``held``), so an output can be linked into place from exactly where it
was checked (``safefs.HeldFile``) rather than copied.
"""
from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from .safefs import HeldFile

FOLDER_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
# Nothing there, a link, or a file where a folder should be: the job left nothing usable.
ABSENT = (errno.ENOENT, errno.ELOOP, errno.ENOTDIR)


class JobFolder:
    """The named files of a done job's folder on this machine, opened at once and held
    open until ``close``: ``files`` maps each name (``stdout``, ``output/x.txt``) the job
    left as a regular file to a path that opens it.  An ``OSError`` (a file the job made
    unreadable, a failing disk) names the file, and leaves nothing open; whose fault it is
    stays the caller's to sort.  ``held`` gives the same files with their folders."""

    def __init__(self, jobs: Path, job_id: str, relatives: list[str]):
        self.path = jobs / job_id
        self.files: dict[str, Path] = {}
        self.held: dict[str, HeldFile] = {}
        self._held: list[int] = []
        self._folder: int | None = None
        self._folders: dict[str, int | None] = {}      # "output" -> its descriptor (None: unusable)
        try:
            where = str(jobs)       # the operator's: followed
            parent = self._open(where, None, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, where)
            if parent is None:
                return
            try:
                self._folder = self._open(job_id, parent, FOLDER_FLAGS, str(self.path))
            finally:
                os.close(parent)
            for relative in relatives:
                found = self._file(relative)
                if found is not None:
                    self.files[relative] = found
        except BaseException:
            self.close()
            raise

    def _file(self, relative: str) -> Path | None:
        *folders, name = relative.split("/")
        shown = f"{self.path}/{relative}"       # for an error message only: a string, not a Path a file
        folder = self._folder
        if folder is None:
            return None         # the job's folder itself is not one (a link, say)
        for depth, part in enumerate(folders):
            key = "/".join(folders[:depth + 1])
            if key not in self._folders:
                opened = self._open(part, folder, FOLDER_FLAGS, shown)
                self._folders[key] = opened
                if opened is not None:
                    self._held.append(opened)
            folder = self._folders[key]
            if folder is None:
                return None
        fd = self._open(name, folder, FILE_FLAGS, shown)
        if fd is None:
            return None
        self._held.append(fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None         # a FIFO, a device, a folder: closed with the rest
        self.held[relative] = HeldFile(folder, name, fd)
        return Path(f"/proc/self/fd/{fd}")

    def close(self) -> None:
        for fd in self._held:
            os.close(fd)
        self._held.clear()
        self._folders.clear()
        self.held.clear()
        if self._folder is not None:
            os.close(self._folder)
            self._folder = None

    def __enter__(self) -> JobFolder:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    @staticmethod
    def _open(name: str, folder: int | None, flags: int, shown: str) -> int | None:
        """``name`` opened in ``folder``; None where the job left nothing it may be read as."""
        try:
            return os.open(name, flags, dir_fd=folder)
        except OSError as error:
            if error.errno in ABSENT or not _regular_or_folder(name, folder):
                return None     # a socket, say, which cannot be opened: skipped like a FIFO
            raise OSError(error.errno, f"cannot read {shown}: {error.strerror}") from None


def _regular_or_folder(name: str, folder: int | None) -> bool:
    try:
        mode = os.stat(name, dir_fd=folder, follow_symlinks=False).st_mode
    except OSError:
        return True         # cannot tell: the open's error stands
    return stat.S_ISREG(mode) or stat.S_ISDIR(mode)
