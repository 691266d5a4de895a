"""A runner's doorbell: a FIFO beside its records that the head node rings when it queues
work, so an idle runner starts a job at once instead of at its next poll.

A runner with nothing to do polls its ready folder every ``POLL_SECONDS`` (0.2 s); a job
queued just after a poll waited for the next one.  In a burst taken in slices that was
a gap of up to a poll each time the runners had drained a slice before the next came,
and every lone job paid it too.  The poll stays: it is what a runner on another node
relies on, where a FIFO on a shared filesystem connects nothing (opening it from the
head node finds no reader there, and the ring is a no-op).

Both ends open the FIFO without blocking and without following a symlink, and act only
on a FIFO: a job (which runs as the same account) that replaces it with a file or a link
gets nothing but a runner that polls.  Standard library only, Python 3.8.
"""
import os
import stat

from .files import listdir, remove_file

SUFFIX = ".wake"
_FLAGS = os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


class Doorbell(object):
    """The runner's end: ``fd`` turns readable when rung."""

    def __init__(self, fd, keep_open):
        self.fd = fd
        self._keep_open = keep_open

    @classmethod
    def install(cls, runners_dir, runner_id):
        """Make and open the FIFO; None where that fails (a filesystem without FIFOs):
        the runner then only polls.  The runner also holds it open for writing, so it
        never reads as closed between rings."""
        path, fds = os.path.join(runners_dir, runner_id + SUFFIX), []
        try:
            remove_file(path)       # left by an earlier run of this runner (a requeued allocation)
            os.mkfifo(path, 0o600)
            fds.append(os.open(path, os.O_RDONLY | _FLAGS))
            fds.append(os.open(path, os.O_WRONLY | _FLAGS))
            ends = [os.fstat(fd) for fd in fds]
            if not all(stat.S_ISFIFO(end.st_mode) and end.st_ino == ends[0].st_ino for end in ends):
                raise OSError("%s is no longer the FIFO this runner made" % path)
        except OSError:
            for fd in fds:
                os.close(fd)
            return None
        return cls(*fds)

    def clear(self):
        """Take every ring waiting, so the next nap sleeps until a new one."""
        drain(self.fd)

    def close(self):
        os.close(self.fd)
        os.close(self._keep_open)


def drain(fd):
    """Read a non-blocking pipe empty (a doorbell, or the runner's signal wake-up pipe)."""
    try:
        while os.read(fd, 512):
            pass
    except (BlockingIOError, InterruptedError):
        pass


def ring(runners_dir):
    """Wake every runner of this workspace listening on this host.  One open per runner
    recorded, never blocking: one gone or on another node has no reader (``ENXIO``);
    one already rung and not yet awake has a full pipe (``EAGAIN``)."""
    for name in listdir(runners_dir):
        if not name.endswith(SUFFIX):
            continue
        try:
            fd = os.open(os.path.join(runners_dir, name), os.O_WRONLY | _FLAGS)
        except OSError:
            continue
        try:
            if stat.S_ISFIFO(os.fstat(fd).st_mode):
                os.write(fd, b"\0")
        except OSError:
            pass
        finally:
            os.close(fd)
