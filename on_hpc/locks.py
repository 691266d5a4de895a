"""An exclusive lock that works on every filesystem a cluster or a dropbox may sit on.

``flock`` is the lock to have: the kernel releases it when its holder dies.  Some shared
filesystems refuse it (Lustre mounted without ``flock``, some NFS setups: ENOLCK, ENOSYS,
EOPNOTSUPP); there the lock is a folder made beside the lock file, since ``mkdir`` is
atomic everywhere.  The folder holds its owner's host and pid, so a lock left by a
process that died is taken over: at once when the owner ran on this host and is gone,
after ``STALE_SECONDS`` when it ran elsewhere (its pid cannot be checked from here).

Standard library only, Python 3.8.
"""
import errno
import fcntl
import json
import os
import time

from .files import remove_tree

FLOCK_REFUSED = (errno.ENOLCK, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
STALE_SECONDS = 600
POLL_SECONDS = 0.1


class FileLock(object):
    """``acquire(blocking)`` then ``release()``; ``kind`` says which lock it took."""

    def __init__(self, path, stale_seconds=STALE_SECONDS):
        self.path = path
        self.folder = path + ".lockdir"
        self.stale_seconds = stale_seconds
        self.fd = None
        self.kind = None

    def acquire(self, blocking=True, timeout=None):
        """True once held; False when another holds it and ``blocking`` is false (or the
        ``timeout`` passed)."""
        deadline = None if timeout is None else time.time() + timeout
        while True:
            if self._try():
                return True
            if not blocking or (deadline is not None and time.time() >= deadline):
                return False
            time.sleep(POLL_SECONDS)

    def release(self):
        if self.kind == "folder":
            remove_tree(self.folder)
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        self.kind = None

    def _try(self):
        if self.fd is None:
            self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        except OSError as error:
            if error.errno not in FLOCK_REFUSED:
                raise
            return self._try_folder()
        self.kind = "flock"
        try:
            os.ftruncate(self.fd, 0)
            os.write(self.fd, ("%d\n" % os.getpid()).encode())
        except OSError:
            pass      # who holds it is a courtesy; the lock is held
        return True

    def _try_folder(self, takeover=True):
        try:
            os.mkdir(self.folder, 0o700)
        except FileExistsError:
            owner = self._stale() if takeover else None
            if owner is None:
                return False
            _remove_stale(self.folder, owner)
            return self._try_folder(takeover=False)      # whoever is first after the removal
        owner = {"host": os.uname().nodename, "pid": os.getpid(), "since": time.time()}
        try:
            with open(os.path.join(self.folder, "owner.json"), "w") as handle:
                json.dump(owner, handle)
        except OSError:
            pass      # an ownerless folder is taken over once it is stale_seconds old
        self.kind = "folder"
        return True

    def _stale(self):
        """The lock folder's owner record when its owner is gone (``{}`` when it has none
        and is old), else None."""
        owner = _owner(self.folder)
        if owner is None:
            try:
                old = time.time() - os.stat(self.folder).st_mtime > self.stale_seconds
            except FileNotFoundError:
                return None
            return {} if old else None
        if owner.get("host") == os.uname().nodename:
            return owner if not _alive(owner.get("pid")) else None
        try:
            return owner if time.time() - float(owner.get("since")) > self.stale_seconds else None
        except (TypeError, ValueError):
            return owner


def _owner(folder):
    try:
        with open(os.path.join(folder, "owner.json")) as handle:
            owner = json.load(handle)
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _alive(pid):
    try:
        os.kill(int(pid), 0)
    except (ValueError, TypeError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    return True


def _remove_stale(folder, owner):
    """Rename it aside first, then check it was the stale one (another process may have
    taken the lock over in between); put back one that was not."""
    aside = "%s.stale-%d-%d" % (folder, os.getpid(), int(time.time() * 1000))
    try:
        os.rename(folder, aside)
    except OSError:
        return
    if (_owner(aside) or {}) != owner:
        try:
            os.rename(aside, folder)
            return
        except OSError:
            pass
    remove_tree(aside)
