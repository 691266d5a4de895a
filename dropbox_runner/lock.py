"""One cycle at a time per dropbox, whoever starts it (cron, the daemon, a person).

``flock`` is released by the kernel when its holder dies, so a killed submitter never
leaves a stale lock behind that blocks every later run.
"""
from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def cycle_lock(path: Path) -> Iterator[bool]:
    """Yield True while holding the lock, or False at once if another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield True
    finally:
        os.close(fd)
