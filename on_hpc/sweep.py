"""Removing collected jobs' folders off the cycle's path.

A collected job's folder (its script, streams, outputs, records: some ten entries) cost
0.7 ms of wall time to remove on a disk like this VM's, inside the cycle that the
submitter waits for: 0.7 s for a burst of 1000 jobs.  The cycle now moves each folder
into ``trash/`` with one rename (atomic, so a job is never seen half-removed) and starts
one detached ``sweep`` that empties the trash and exits.  A sweep killed half-way is
redone by the next one a later cycle starts; two never run at once (a lock), and a
cycle whose trash is empty starts none.  The sweep yields the CPU (``SWEEP_NICENESS``):
removing what was collected can wait for the jobs and the cycles that share the machine.

It waits for them altogether where it can (``start_when_quiet``): the serve process that
answers a burst's cycles starts no sweep while jobs of the workspace are queued or
running, but when none is left, when the trash holds more than is free beside it, when
``SWEEP_AT_LATEST_SECONDS`` have passed since it first put one off, or when its input
ends.  Four sweeps during a 1000-job burst on the local scheduler (each a Python start,
and unlinks that every ``syncfs`` of the submitter and the runner then waited for) cost
some 0.1 s of its 2.4 s on ext4 here.  The trash still counts as free in every answer.
"""
import errno
import fcntl
import json
import os
import stat
import sys
import time

from . import afterwards
from .files import remove_file, remove_tree, tree_bytes

LOCK_NAME = ".sweep.lock"
SWEEP_NICENESS = 10
SWEEP_AT_LATEST_SECONDS = 60    # the longest a serve process puts off a sweep while jobs run

_put_off_since = {}     # store root -> when this process first put off its sweep


def trash_entries(store):
    return [entry.name for entry in _trash_listing(store)]


def _trash_listing(store):
    """The trash's entries, less the sweep's lock; none where it cannot be read."""
    try:
        with os.scandir(store.trash_dir()) as listing:
            return [entry for entry in listing if entry.name != LOCK_NAME]
    except OSError:
        return []


# Each trash entry's bytes, by (path, inode), as this process measured it: a collected
# folder does not change once moved there, and the serve process that answers a burst's
# cycles walked the whole trash again every cycle (a third of its CPU).  Entries gone
# are forgotten at each count.
_measured = {}


def trash_bytes(store):
    """The bytes waiting in the trash (none when it is empty, the usual case); each entry
    walked once by a process.  A file shared between entries counts its share as it was
    when its entry was measured (``tree_bytes``): off by at most a batch file's bytes."""
    measured = {}
    for entry in _trash_listing(store):
        key = (entry.path, entry.inode())
        size = _measured.get(key)
        measured[key] = _entry_bytes(entry) if size is None else size
    _measured.clear()
    _measured.update(measured)
    return sum(measured.values())


def measure_leaving(store, job_ids):
    """The folders of collected jobs about to be moved to the trash, as the trash counts
    them: {job id: (inode, bytes)} (inode None where there is no folder).  The cycle's
    answer counts these bytes as free before they are moved (``afterwards``), and once
    moved (``moved``) they are not walked again."""
    leaving = {}
    for job_id in job_ids:
        path = store.job_dir(job_id)
        try:
            info = os.lstat(path)
        except OSError:
            leaving[job_id] = (None, 0)
            continue
        leaving[job_id] = (info.st_ino, tree_bytes(path, shared=True) if stat.S_ISDIR(info.st_mode)
                           else _share(info))
    return leaving


def moved(path, inode, size):
    """A folder ``measure_leaving`` measured is now at ``path`` in the trash (None: it is
    not there); a rename keeps the inode."""
    if path is not None and inode is not None:
        _measured[(path, inode)] = size


def _entry_bytes(entry):
    if entry.is_dir(follow_symlinks=False):
        return tree_bytes(entry.path, shared=True)
    try:
        return _share(entry.stat(follow_symlinks=False))
    except OSError:
        return 0


def _share(info):
    return info.st_size // max(info.st_nlink, 1)


def start(store):
    """Start a detached sweep when there is something to remove and none is running."""
    if not trash_entries(store) or _busy(store):
        return False
    import subprocess  # when first needed (commands.py)
    package = __name__.rpartition(".")[0]      # on_hpc on the cluster, dropbox_runner.on_hpc in the package
    no_site = ["-S"] if sys.flags.no_site else []      # as this command was started (ON_HPC_ARGV)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path for path in sys.path if path))
    try:
        child = subprocess.Popen([sys.executable] + no_site + ["-m", package, "sweep"], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True,
                                 start_new_session=True, env=env, cwd="/")     # holds no mount busy
        child.stdin.write(json.dumps({"root": store.root, "niceness": SWEEP_NICENESS}).encode())
        child.stdin.close()
    except OSError as error:        # nothing lost: the next cycle tries again
        sys.stderr.write("cannot start the sweep of collected jobs: %s\n" % error)
        return False
    return True


def start_when_quiet(store, jobs_active, room_short):
    """Start the sweep now unless jobs are queued or running (``jobs_active``) and the
    room the trash holds is not short (``room_short``); a sweep put off starts at the
    latest when the serve loop ends (at once in a one-shot command) or when a later call
    finds it put off ``SWEEP_AT_LATEST_SECONDS`` ago."""
    if jobs_active and not room_short:
        since = _put_off_since.setdefault(store.root, time.monotonic())
        if time.monotonic() - since < SWEEP_AT_LATEST_SECONDS:
            afterwards.at_end(store.root, lambda: start(store))
            return
    _put_off_since.pop(store.root, None)
    start(store)


def sweep(request):
    """Empty the trash (``python3 -m on_hpc sweep``); another sweep running: nothing to do."""
    from .jobstore import JobStore
    if request.get("niceness"):
        os.nice(request["niceness"])
    store = JobStore(request["root"])
    lock = _lock(store)
    if lock is None:
        return {"swept": 0}
    swept = 0
    try:
        while True:
            names = trash_entries(store)
            if not names:
                return {"swept": swept}
            for name in names:
                path = os.path.join(store.trash_dir(), name)
                if os.path.isdir(path) and not os.path.islink(path):
                    remove_tree(path)
                else:
                    remove_file(path)
                swept += 1
    finally:
        os.close(lock)


def _busy(store):
    lock = _lock(store)
    if lock is None:
        return True
    os.close(lock)
    return False


def _lock(store):
    """The sweep lock's descriptor, held; None when another sweep holds it."""
    fd = os.open(os.path.join(store.trash_dir(), LOCK_NAME), os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as error:
        os.close(fd)
        if error.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        raise
    return fd
