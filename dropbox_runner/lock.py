"""One cycle at a time per dropbox, whoever starts it (cron, the daemon, a person).

``flock`` is released by the kernel when its holder dies, so a killed submitter never
leaves a stale lock behind that blocks every later run.  On a filesystem that refuses
``flock`` (Lustre, some NFS) ``on_hpc.locks`` falls back to a lock folder whose dead
owner's lock is taken over.
"""
from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from .on_hpc.locks import FileLock


@contextmanager
def cycle_lock(path: Path) -> Iterator[bool]:
    """Yield True while holding the lock, or False at once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path))
    try:
        yield lock.acquire(blocking=False)
    finally:
        lock.release()
