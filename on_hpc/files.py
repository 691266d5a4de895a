"""Atomic file writes: a reader on the cluster or the submitter never sees half a file.

Every ``on_hpc`` command is a fresh interpreter, so what this module imports is paid by
each cycle and runner start: it makes its temporary names and removes trees without
``tempfile`` and ``shutil`` at import (with ``secrets``, ``uuid`` and ``socket`` left out
elsewhere, some 12 ms of a cycle's 50 ms start here), and looks ``syncfs`` up with
``ctypes`` only when it first syncs (most cycles never do: 3 ms of their start).
"""
import json
import os


def write_atomic(path, data, mode=None, durable=True, mark_written=False):
    """Write bytes or text next to ``path`` and rename over it (atomic on POSIX).

    The file is 0600 unless ``mode`` says otherwise (set before the rename, so no reader
    ever finds it with the wrong one).  ``durable=False`` skips the fsync: the file is
    still whole or absent after a crash of the writer, but may be lost (or empty) after a
    crash of the machine; for records whose loss is harmless, as each fsync costs a
    journal commit.  ``mark_written`` sets the mtime a nanosecond back once the data is
    written, which moves the ctime past it: the sign a reader of a dropbox takes for a
    file finished before it appeared (a write moves both to the same tick, in which the
    rename would come too).
    """
    fd, tmp = create_unique(os.path.dirname(path) or ".", ".tmp-")
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            if mark_written:
                written = os.fstat(handle.fileno()).st_mtime_ns - 1
                os.utime(handle.fileno(), ns=(written, written))
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        remove_quietly(tmp)
        raise


def create_unique(directory, prefix, flags=0):
    """``(fd, path)`` of a new file named ``prefix`` and 16 random hex digits, open for
    writing and made by this call (``O_EXCL``: never through a symlink or over a file
    someone else raced in), 0600: ``tempfile.mkstemp`` without its import."""
    while True:
        path = os.path.join(directory, prefix + os.urandom(8).hex())
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC | flags,
                           0o600), path
        except FileExistsError:
            continue


def write_all(fd, data):
    """Write all of ``data`` to ``fd`` with bare ``os.write``: a file object around each of
    many small files costs four system calls and its Python setup more (issue 18)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def write_json(path, value, durable=True):
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True), durable=durable)


def _lookup_syncfs():
    """libc's ``syncfs``: from the symbols this process already has (glibc, musl), else
    by name; ``ctypes.util.find_library`` runs ``ldconfig`` (a program started), so it is
    the last resort."""
    import ctypes
    for name in (None, "libc.so.6"):
        try:
            return ctypes.CDLL(name, use_errno=True).syncfs
        except (OSError, AttributeError):
            continue
    from ctypes.util import find_library
    try:
        return ctypes.CDLL(find_library("c"), use_errno=True).syncfs
    except (OSError, AttributeError, TypeError):
        return None


_NOT_LOOKED_UP = object()
_SYNCFS = _NOT_LOOKED_UP      # libc's syncfs once looked up; None where there is none


def syncfs_function():
    """libc's ``syncfs`` (None where there is none), looked up at the first call."""
    global _SYNCFS
    if _SYNCFS is _NOT_LOOKED_UP:
        _SYNCFS = _lookup_syncfs()
    return _SYNCFS


def sync_files(paths):
    """Make the files' data durable: one ``syncfs`` per filesystem where Linux has it (one
    journal commit for all), else one ``fsync`` per file.  The files are ones this program
    made, each on its folder's filesystem (only a bind mount puts a file elsewhere), so
    one file per folder is looked at: a burst syncs a thousand files of one folder."""
    one_per_folder = {}
    for path in paths:
        one_per_folder.setdefault(os.path.dirname(path), path)
    if not _sync_filesystems(one_per_folder.values()):
        _fsync_each(paths)


def sync_folders(folders):
    """Make renames into these folders durable: one ``syncfs`` again (the renames' journal
    commit), else one ``fsync`` of each folder.  Each folder is looked at: one may be a
    mount point."""
    folders = sorted(folders)
    if not _sync_filesystems(folders):
        _fsync_each(folders)


def _sync_filesystems(paths):
    """One ``syncfs`` per filesystem the paths are on; False where there is no
    ``syncfs`` or one failed."""
    if syncfs_function() is None:
        return False
    one_per_device = {}
    for path in paths:
        one_per_device.setdefault(os.stat(path).st_dev, path)
    return all(_syncfs(path) for path in one_per_device.values())


def _fsync_each(paths):
    for path in paths:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _syncfs(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        return _SYNCFS(fd) == 0
    finally:
        os.close(fd)


def read_json(path, default=None):
    """Read a JSON file; a missing or unreadable one yields ``default``."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def touch_new(path):
    """Create an empty file unless it exists; True when this call created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def listdir(path):
    """Names in a folder, or nothing when it does not exist (yet)."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def remove_file(path):
    """Unlink ``path``; one already gone is fine (any other failure is raised)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_quietly(path):
    """Unlink ``path`` on a path already failing: whatever goes wrong here is not news."""
    try:
        os.unlink(path)
    except OSError:
        pass


def remove_tree(path):
    """``shutil.rmtree`` that ignores errors, imported when first needed: most commands
    never remove a tree, and ``shutil`` (with ``fnmatch``, ``bz2``, ``lzma``) is some
    3 ms of a start."""
    import shutil
    shutil.rmtree(path, ignore_errors=True)


def free_bytes(path):
    """Space left on the filesystem of ``path`` for this account (None when it cannot be asked)."""
    try:
        info = os.statvfs(path)
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def tree_bytes(folder, follow_links=False, shared=False):
    """The bytes of every file under ``folder``; a file that vanishes meanwhile counts 0.
    ``shared``: a file with several names counts its share under each (a batch's
    ``job.json`` or ``finished.json``, ``batchfile``: sent and freed once); else its whole
    size under each, as a copy would cost (a job's output, which could link one big file
    many times)."""
    size = 0
    pending = [folder]
    while pending:
        try:
            listing = os.scandir(pending.pop())
        except OSError:
            continue
        with listing:
            # From the listing: a folder is known by its entry's type, and a file's size
            # costs one stat (os.walk looked at each folder again, and joined each name,
            # a third of what the head node spent measuring the trash).
            for entry in listing:
                try:
                    if entry.is_dir():          # a link to a folder: neither counted nor entered
                        if not entry.is_symlink():
                            pending.append(entry.path)
                        continue
                    info = entry.stat(follow_symlinks=follow_links)
                except OSError:
                    continue
                size += info.st_size // max(info.st_nlink, 1) if shared else info.st_size
    return size
