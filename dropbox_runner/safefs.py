"""File operations on paths a job author chose, in folders a job author can write.

A job author names its inputs and outputs and can write into the dropbox and the output
folders, possibly while the submitter works there; the submitter may run as a more
privileged account.  So, here:

- a file read on a job's word is opened once, without following a final symbolic link,
  checked through the open descriptor (a regular file, and where it really is), and what
  is used afterwards comes from that descriptor, never from the path again;
- a file written where a job author can write is first created under an unpredictable
  name with ``O_EXCL|O_NOFOLLOW`` (a link planted there is never followed) and then
  renamed, inside the folder that was opened and checked, over nothing or over a regular
  file only (never a device, FIFO, folder or symbolic link);
- where a path may go is decided on the resolved path (``Boundaries``), again at the
  moment of placing;
- a job's output read where it lies (``HeldFile``) is hard-linked, not copied, under the
  temporary name when that is clearly the same as a copy: see ``_link_in``.

Linux only: the real place of an open descriptor is read from ``/proc/self/fd``.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import secrets
import stat
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from .faults import fault_point
from .on_hpc.files import write_all

CHUNK = 1 << 20
FICLONE = 0x40049409     # linux/fs.h: share the source's blocks (btrfs, XFS): a copy at no cost
READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
# Never a job's input or output, whatever the roots say: kernel interfaces and devices.
SYSTEM_ZONES = (Path("/proc"), Path("/sys"), Path("/dev"))


class FileRefused(Exception):
    """The file is not one the submitter may use; the message says why (the job's fault)."""


@dataclass(frozen=True)
class Boundaries:
    """Where a job's inputs may be read and its outputs written (resolved paths).

    Empty roots allow everything outside the no-go zones; the zones (the submitter's own
    files, kernel interfaces) are refused whatever the roots say.
    """

    input_roots: tuple[Path, ...] = ()
    output_roots: tuple[Path, ...] = ()
    no_go: tuple[Path, ...] = SYSTEM_ZONES
    no_go_files: frozenset[tuple[int, int]] = frozenset()   # (device, inode): a hard link elsewhere is no way in

    def problem(self, real: str | Path, output: bool) -> str | None:
        """Why ``real`` (a resolved path) is out of bounds, or None."""
        text = os.fspath(real)
        zones, output_roots, input_roots = self._matchers
        if zones.matches(text):
            zone = next(zone for zone in self.no_go if inside(real, (zone,)))
            return f"is inside {zone}, which jobs may never use"
        roots = output_roots if output else input_roots
        if roots.exact and not roots.matches(text):      # no roots: anywhere outside the zones
            return f"is outside the allowed {'output' if output else 'input'} folders"
        return None

    @cached_property
    def _matchers(self) -> tuple[_RootMatcher, _RootMatcher, _RootMatcher]:
        """The zones and each kind of root as one matcher each, made once, not for every
        file of every job (a path was compared with each of some fifteen roots in turn:
        9 µs a check, three checks a job)."""
        return (_RootMatcher.of(self.no_go), _RootMatcher.of(self.output_roots),
                _RootMatcher.of(self.input_roots))


@dataclass(frozen=True)
class _RootMatcher:
    """Whether a path's text is one of some roots or below one, in two C-level tests.
    Paths and roots are resolved, absolute and normalised, so comparing their text is
    exact (walking ``path.parents`` made a Path object for each level of each root)."""

    exact: frozenset[str]
    below: tuple[str, ...]      # each root's text with one trailing slash

    @classmethod
    def of(cls, roots: tuple[Path, ...] | list[Path]) -> _RootMatcher:
        texts = [str(root) for root in roots]
        return cls(frozenset(texts), tuple(text.rstrip("/") + "/" for text in texts))

    def matches(self, text: str) -> bool:
        return text in self.exact or text.startswith(self.below)


def inside(path: str | Path, roots: tuple[Path, ...] | list[Path]) -> bool:
    """``path`` is a root or below one."""
    return _RootMatcher.of(roots).matches(os.fspath(path))


def descriptor_path(fd: int) -> str:
    """Where an open file or folder is now (the kernel's view, links resolved), as the
    resolved text that ``Boundaries.problem`` matches."""
    return os.readlink(f"/proc/self/fd/{fd}")


def open_checked(path: str, boundaries: Boundaries) -> int:
    """Open an input for reading: resolved inside the boundaries, a regular file, and
    really the file that was checked (a link swapped in between is caught by asking the
    kernel where the descriptor points).  Raises FileRefused, FileNotFoundError."""
    real = os.path.realpath(path)
    why = boundaries.problem(real, output=False)
    if why:
        raise FileRefused(why)
    try:
        fd = os.open(real, READ_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise FileRefused("was replaced by a symbolic link while being checked") from None
        if error.errno in (errno.EACCES, errno.EPERM):
            raise FileRefused("is not readable") from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise FileRefused("is not a regular file")
        if (info.st_dev, info.st_ino) in boundaries.no_go_files:
            raise FileRefused("is a hard link to one of the submitter's own files, which jobs may never use")
        now = descriptor_path(fd)
        if now != real or boundaries.problem(now, output=False):
            raise FileRefused(f"moved while being checked (now {now})")
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def stage_copy(path: str, boundaries: Boundaries, target: Path) -> tuple[str, int]:
    """Copy a checked input to ``target`` (a new file in the submitter's own folder) and
    return the copy's sha256 and size: what is sent and hashed is what was checked,
    whatever happens at ``path`` afterwards."""
    source = open_checked(path, boundaries)
    try:
        destination = os.open(target, CREATE_FLAGS & ~os.O_WRONLY | os.O_RDWR, 0o600)   # read back after a reflink
        try:
            copied = _clone_or_copy(source, destination)
        finally:
            os.close(destination)
    finally:
        os.close(source)
    return copied


def _clone_or_copy(source: int, destination: int) -> tuple[str, int]:
    """A reflink where the filesystem has them (then the hash reads our private clone),
    else one pass that copies and hashes."""
    digest, size = hashlib.sha256(), 0
    try:
        fcntl.ioctl(destination, FICLONE, source)
    except OSError:
        while True:
            chunk = os.read(source, CHUNK)
            if not chunk:
                break
            digest.update(chunk)
            write_all(destination, chunk)
            size += len(chunk)
        return digest.hexdigest(), size
    os.lseek(destination, 0, os.SEEK_SET)
    while True:
        chunk = os.read(destination, CHUNK)
        if not chunk:
            return digest.hexdigest(), size
        digest.update(chunk)
        size += len(chunk)


def _temporary(folder: int, name: str, mode: int) -> tuple[int, str]:
    """A new file beside ``name`` under a name nobody can guess or have prepared."""
    while True:
        temporary = f".{name[:64]}.{secrets.token_hex(8)}.partial"
        try:
            return os.open(temporary, CREATE_FLAGS, mode, dir_fd=folder), temporary
        except FileExistsError:
            continue


def _target_problem(folder: int, name: str) -> str | None:
    try:
        info = os.lstat(name, dir_fd=folder)
    except FileNotFoundError:
        return None
    if stat.S_ISREG(info.st_mode):
        return None
    kinds = {stat.S_IFLNK: "a symbolic link", stat.S_IFDIR: "a folder", stat.S_IFCHR: "a character device",
             stat.S_IFBLK: "a block device", stat.S_IFIFO: "a FIFO", stat.S_IFSOCK: "a socket"}
    return f"is {kinds.get(stat.S_IFMT(info.st_mode), 'not a regular file')}; only a regular file may be replaced"


@dataclass(frozen=True)
class HeldFile:
    """A job's output held open (``file``) in the folder it lies in, also held open
    (``folder``, as ``name``): what ``place_files`` may link into place instead of copying.
    The caller keeps both open until placing is done and closes them."""

    folder: int
    name: str
    file: int

    @property
    def path(self) -> Path:
        return Path(f"/proc/self/fd/{self.file}")


@dataclass
class _Placement:
    destination: str
    folder: int
    name: str
    temporary: str | None = None
    file: int | None = None      # kept open until placed, so its inode number cannot be reused


def place_files(pairs: list[tuple[Path | HeldFile, str]], boundaries: Boundaries, mode: int = 0o666,
                umask: int | None = None) -> None:
    """Copy each source (a file of the submitter's own, or a job's output it holds) to its
    destination, all or nothing.

    Every destination's folder is opened and checked, every copy made (or held output
    linked) under a temporary name in it; only when all are complete is each renamed into
    place, after its folder and target are checked once more.  ``mode`` is masked by the
    umask (``umask``, read once per cycle by the caller; read here when not given).
    Raises FileRefused (the job's fault) or OSError (a full disk: nothing was left behind,
    and a linked output is still where it was).
    """
    placements: list[_Placement] = []
    linked_mode = mode & ~(current_umask() if umask is None else umask)     # the mode a copy gets
    try:
        for source, destination in pairs:
            placement = _Placement(destination, _open_folder(destination), os.path.basename(destination))
            placements.append(placement)
            _check_place(placement, boundaries)
            if isinstance(source, HeldFile) and _link_in(placement, source, linked_mode):
                continue
            placement.file, placement.temporary = _temporary(placement.folder, placement.name, mode)
            with open(source.path if isinstance(source, HeldFile) else source, "rb") as data:
                _copy(data.fileno(), placement.file)
            fault_point("output_staged")
        for placement in placements:
            _check_place(placement, boundaries)
            _check_ours(placement, placement.temporary)
            try:
                os.rename(placement.temporary, placement.name,
                          src_dir_fd=placement.folder, dst_dir_fd=placement.folder)
            except FileNotFoundError:
                _check_ours(placement, placement.temporary)     # raises: it was removed
                raise
            placement.temporary = None
            _check_ours(placement, placement.name)   # swapped between the check and the rename
    finally:
        for placement in placements:
            if placement.temporary:
                try:
                    os.unlink(placement.temporary, dir_fd=placement.folder)
                except OSError:
                    pass
            os.close(placement.folder)
            if placement.file is not None:
                os.close(placement.file)


def _link_in(placement: _Placement, held: HeldFile, wanted: int) -> bool:
    """Put a held output under a temporary name beside its destination by a hard link,
    where that is the same as a copy (True), instead of writing a new file: creating a file
    is what a collection costs most here (issue 18).  The same as a copy means: a regular
    file with no other name (no alias of a file elsewhere, which writing through the result
    would change), the submitter's own (a copy would be), given the mode (``wanted``) and
    group a copy would get (no setuid bit or group write the job set), and on the destination's
    filesystem.  What is linked is checked to be the held file; anything else is undone
    and the output copied (False).  The job's own name is left as it is, so whatever
    happens before the result is written (a refusal, a full disk, a crash) finds every
    output where the job left it: the next cycle collects the job whole.  The job's folder
    is removed once collected, leaving the destination the only name."""
    info = os.fstat(held.file)
    if not stat.S_ISREG(info.st_mode) or info.st_nlink != 1 or info.st_uid != os.geteuid():
        return False
    try:
        found = os.lstat(held.name, dir_fd=held.folder)
        if (found.st_dev, found.st_ino) != (info.st_dev, info.st_ino):
            return False        # swapped since it was opened: the held file is copied
        folder = os.fstat(placement.folder)
        group = folder.st_gid if folder.st_mode & stat.S_ISGID else os.getegid()
        if info.st_gid != group:
            os.fchown(held.file, -1, group)
        if stat.S_IMODE(info.st_mode) != wanted:
            os.fchmod(held.file, wanted)
        while True:
            temporary = f".{placement.name[:64]}.{secrets.token_hex(8)}.partial"
            try:
                os.link(held.name, temporary, src_dir_fd=held.folder, dst_dir_fd=placement.folder,
                        follow_symlinks=False)
                break
            except FileExistsError:
                continue
    except OSError:
        return False            # another filesystem (EXDEV), a link refused: copied as before
    placement.temporary, placement.file = temporary, os.dup(held.file)
    try:
        linked = os.lstat(temporary, dir_fd=placement.folder)
        same = (linked.st_dev, linked.st_ino) == (info.st_dev, info.st_ino)
    except FileNotFoundError:
        same = False
    if not same or os.fstat(held.file).st_nlink != 2:
        try:
            os.unlink(temporary, dir_fd=placement.folder)   # raced: another file, or another name made
        except FileNotFoundError:
            pass
        os.close(placement.file)
        placement.temporary = placement.file = None
        return False
    fault_point("output_staged")
    return True


def current_umask() -> int:
    """The process's umask, read without setting it: ``os.umask`` sets it, for a moment,
    for every thread.  Reading ``/proc/self/status`` costs tens of µs (the kernel writes
    out every field), so a burst reads it once per cycle, not once per job."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    raise OSError("no Umask in /proc/self/status")


def _open_folder(destination: str) -> int:
    try:
        return os.open(os.path.dirname(destination) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise FileRefused(f"{destination}: its folder does not exist") from None


def _check_place(placement: _Placement, boundaries: Boundaries) -> None:
    real = os.path.join(descriptor_path(placement.folder), placement.name)
    why = boundaries.problem(real, output=True) or _target_problem(placement.folder, placement.name)
    if why:
        raise FileRefused(f"{placement.destination}: {why}")


def _check_ours(placement: _Placement, name: str) -> None:
    """The file at ``name`` is the one this process wrote; if someone swapped in their own
    (a link, say), it is removed and the output refused rather than reported placed."""
    mine = os.fstat(placement.file)
    try:
        now = os.lstat(name, dir_fd=placement.folder)
    except FileNotFoundError:
        now = None
    if now is not None and (now.st_dev, now.st_ino) == (mine.st_dev, mine.st_ino):
        return
    if now is not None and name == placement.name:
        os.unlink(name, dir_fd=placement.folder)
    raise FileRefused(f"{placement.destination}: its temporary file was replaced or removed by someone else")


def _copy(source: int, destination: int) -> None:
    try:
        fcntl.ioctl(destination, FICLONE, source)
        return
    except OSError:
        pass
    while os.sendfile(destination, source, None, CHUNK):
        pass


def write_atomic(path: str | Path, data: bytes, mode: int = 0o666) -> None:
    """Write a file in a folder others can write (the dropbox): a fresh unguessable
    temporary, fsynced, renamed over ``path`` (a link there is replaced, never followed).
    ``mode`` is masked by the umask, so tools of the dropbox's group can read results."""
    parent, name = os.path.split(os.fspath(path))
    folder = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fd, temporary = _temporary(folder, name, mode)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.rename(temporary, name, src_dir_fd=folder, dst_dir_fd=folder)
        except BaseException:
            try:
                os.unlink(temporary, dir_fd=folder)
            except OSError:
                pass
            raise
    finally:
        os.close(folder)
