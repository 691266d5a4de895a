"""The cycle lock on a filesystem that refuses ``flock`` (Lustre without the flock mount
option, some NFS): a lock folder takes its place, and a dead holder's lock is taken over.
No filesystem here refuses flock, so ``fcntl.flock`` is made to answer ENOLCK as they do."""
import errno
import fcntl
import os
import subprocess
import sys
import textwrap
import time

import pytest
from dropbox_runner.on_hpc import locks
from helpers import drain, drop, wait_until

from dropbox_runner.lock import cycle_lock


def refuse_flock(fd, operation):
    raise OSError(errno.ENOLCK, "No locks available")


@pytest.fixture
def no_flock(monkeypatch):
    monkeypatch.setattr(locks.fcntl, "flock", refuse_flock)


def test_without_flock_a_lock_folder_keeps_cycles_apart(tmp_path, no_flock):
    path = tmp_path / "lock"
    with cycle_lock(path) as first:
        assert first and (tmp_path / "lock.lockdir").is_dir()
        with cycle_lock(path) as second:
            assert not second
    assert not (tmp_path / "lock.lockdir").exists()
    with cycle_lock(path) as again:
        assert again


def test_without_flock_a_killed_holders_lock_is_taken_over(tmp_path, no_flock):
    path = tmp_path / "lock"
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import errno, sys, time
        from dropbox_runner.on_hpc import locks
        def refuse(fd, operation):
            raise OSError(errno.ENOLCK, "No locks available")
        locks.fcntl.flock = refuse
        lock = locks.FileLock({str(path)!r})
        assert lock.acquire(blocking=False) and lock.kind == "folder"
        print("held", flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with cycle_lock(path) as locked:
            assert not locked                       # its owner is alive
        holder.kill()
        holder.wait()
        with cycle_lock(path) as locked:
            assert locked                           # its owner is gone: taken over at once
    finally:
        holder.kill()


def test_a_lock_folder_of_another_host_is_taken_over_only_when_old(tmp_path, no_flock):
    lock = locks.FileLock(str(tmp_path / "lock"), stale_seconds=60)
    os.mkdir(lock.folder)
    owner = os.path.join(lock.folder, "owner.json")
    with open(owner, "w") as handle:
        handle.write('{"host": "login2.elsewhere", "pid": 1, "since": %f}' % (time.time() - 30))
    assert not lock.acquire(blocking=False)
    with open(owner, "w") as handle:
        handle.write('{"host": "login2.elsewhere", "pid": 1, "since": %f}' % (time.time() - 90))
    assert lock.acquire(blocking=False) and lock.kind == "folder"
    lock.release()


def test_flock_is_still_used_where_it_works(tmp_path):
    lock = locks.FileLock(str(tmp_path / "lock"))
    assert lock.acquire(blocking=False) and lock.kind == "flock"
    fd = os.open(tmp_path / "lock", os.O_RDWR)
    try:
        with pytest.raises(BlockingIOError):
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    finally:
        os.close(fd)
        lock.release()


def test_cycles_go_on_without_flock(config, no_flock):
    drop(config, "a.job", {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                           "output_map": {"out": str(config.dropbox.parent / "outputs" / "a.txt")}})
    assert drain(config, ["a.job"])["a.job"]["job"]["status"] == "ok"
    wait_until(lambda: not os.path.exists(str(config.lockfile) + ".lockdir"), timeout=5, what="the lock released")
