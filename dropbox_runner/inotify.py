"""The names that arrive in the dropbox, read from inotify without watchdog's move pairing.

watchdog's inotify observer pairs each ``IN_MOVED_TO`` with an ``IN_MOVED_FROM`` by
searching every event it has not yet handed on.  A burst of job files renamed in at once
(how tools are told to drop jobs) made that search quadratic: 20,000 renames took 20 s of
the daemon's CPU, 10,000 took 4.7 s and 1000 took 0.07 s, against 0.14, 0.07 and 0.01 s
here (``python bench/watch_events.py --jobs 1000 10000 20000``), all of it taken from the
cycle that was taking those jobs.  The daemon needs only the names of files made,
closed after writing, or renamed in: one flat folder, one watch, no pairing, no event
objects.  watchdog stays for polling (network filesystems) and for platforms without
inotify.
"""
from __future__ import annotations

import ctypes
import logging
import os
import select
import struct
import threading
from typing import Callable, Iterator

log = logging.getLogger(__name__)

IN_CLOSE_WRITE = 0x00000008
IN_MOVED_TO = 0x00000080
IN_CREATE = 0x00000100
IN_Q_OVERFLOW = 0x00004000
IN_IGNORED = 0x00008000
IN_ONLYDIR = 0x01000000
WATCHED = IN_CREATE | IN_CLOSE_WRITE | IN_MOVED_TO | IN_ONLYDIR
COMPLETE = IN_CLOSE_WRITE | IN_MOVED_TO       # the file is whole: written and closed, or renamed in
EVENT = struct.Struct("iIII")                  # wd, mask, cookie, len; then len bytes of NUL-padded name
READ_BYTES = 64 * 1024

Heard = Callable[[str, bool], None]            # (name, complete)


class InotifyUnavailable(Exception):
    """This platform's C library has no inotify: use watchdog's native observer instead."""


def parse(buffer: bytes) -> Iterator[tuple[int, str]]:
    """(mask, name) of each event in what one ``read`` returned (the kernel never splits
    an event across reads); names are decoded as the rest of the daemon decodes paths."""
    offset = 0
    while offset + EVENT.size <= len(buffer):
        _, mask, _, length = EVENT.unpack_from(buffer, offset)
        offset += EVENT.size
        name = buffer[offset:offset + length].rstrip(b"\0")
        offset += length
        yield mask, os.fsdecode(name)


class DropboxInotify(threading.Thread):
    """One inotify watch on the dropbox, read by this thread; ``heard`` is called with each
    name made, closed after writing or renamed in, ``overflow`` when the kernel dropped
    events (the cycle it wakes lists the whole folder, so nothing is lost but the news
    that those files were complete)."""

    def __init__(self, folder: str, heard: Heard, overflow: Callable[[], None]):
        super().__init__(name="dropbox-inotify", daemon=True)
        self.folder = folder
        self.heard = heard
        self.overflow = overflow
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            init, add_watch = libc.inotify_init1, libc.inotify_add_watch
        except (OSError, AttributeError) as error:
            raise InotifyUnavailable(str(error)) from None
        self.fd = init(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise _os_error("inotify_init1", folder)
        if add_watch(self.fd, os.fsencode(folder), WATCHED) < 0:
            error = _os_error("inotify_add_watch", folder)
            os.close(self.fd)
            raise error
        self._stop_read, self._stop_write = os.pipe()
        self._open = True

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.fd, select.POLLIN)
        poller.register(self._stop_read, select.POLLIN)
        while True:
            if any(fd == self._stop_read for fd, _ in poller.poll()):
                return
            try:
                buffer = os.read(self.fd, READ_BYTES)
            except BlockingIOError:
                continue
            for mask, name in parse(buffer):
                if not self._handle(mask, name):
                    return

    def _handle(self, mask: int, name: str) -> bool:
        """False once the watch is gone (the folder removed or its filesystem unmounted)."""
        if mask & IN_Q_OVERFLOW:
            log.warning("inotify dropped events on %s (a burst longer than fs.inotify.max_queued_events); "
                        "jobs dropped meanwhile are taken once settled", self.folder)
            self.overflow()
        elif mask & IN_IGNORED:
            log.error("the watch on %s ended (the folder was removed or unmounted): new jobs are taken "
                      "at each tick only, until the daemon restarts", self.folder)
            return False
        elif name:
            self.heard(name, bool(mask & COMPLETE))
        return True

    def stop(self) -> None:
        os.write(self._stop_write, b"\0")

    def join(self, timeout: float | None = None) -> None:
        super().join(timeout)
        if self._open and not self.is_alive():
            self._open = False
            for fd in (self.fd, self._stop_read, self._stop_write):
                os.close(fd)


def _os_error(call: str, folder: str) -> OSError:
    number = ctypes.get_errno()
    return OSError(number, f"{call}: {os.strerror(number)}", folder)
