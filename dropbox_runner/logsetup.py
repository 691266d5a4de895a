"""Logging for the command line: configured once, at the entry point.

Lines carry an ISO 8601 time with the UTC offset (``2026-11-22T14:03:07.512+01:00``), so a
log read months later, or beside the cluster's logs in another zone, is unambiguous.
Libraries' chatter (paramiko's transport thread logs whole tracebacks at ERROR for a
refused login, which the cycle reports itself in one line) stays out unless ``-v``.
"""
from __future__ import annotations

import logging
import sys

from .isotime import local_iso_seconds, split_seconds

QUIET_LIBRARIES = ("paramiko", "invoke", "fabric", "watchdog")


class IsoFormatter(logging.Formatter):
    """A burst logs a few lines per job; the date and the zone's offset (a ``localtime``
    call) are worked out once a second, not once a line."""

    _second: int | None = None
    _date = _offset = ""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:  # noqa: N802 - logging's name
        second, micro = split_seconds(record.created)
        if second != self._second:
            stamp = local_iso_seconds(second)
            self._second, self._date, self._offset = second, stamp[:19], stamp[19:]
        return f"{self._date}.{micro // 1000:03d}{self._offset}"


_installed: list[logging.Handler] = []


def configure(verbose: bool) -> None:
    """Our messages at INFO (DEBUG with ``-v``) on stderr, where cron mails and journald reads.

    Called again (``main`` run twice in one process), it replaces only its own handler,
    never one another party (a test's log capture) installed."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(IsoFormatter("%(asctime)s %(levelname)s %(message)s"))
    root = logging.getLogger()
    while _installed:
        root.removeHandler(_installed.pop())
    root.addHandler(handler)
    _installed.append(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    # The lines show no process, thread or source line: not looked up for each (a burst
    # logs a few a job); the logging HOWTO's "Optimization" section names these switches.
    logging.logProcesses = logging.logThreads = logging.logMultiprocessing = False
    logging._srcfile = None
    for library in QUIET_LIBRARIES:
        logging.getLogger(library).setLevel(logging.WARNING if verbose else logging.CRITICAL)
