"""Per-job error boundaries: one job's exception never ends the cycle for the others.

Every step that handles one job (intake, reading its hold, cancelling, sending, noting
its queue state, collecting) runs inside ``Boundary.contain``.  What escapes the step is
sorted by whose fault it is:

- the environment's (a full or read-only disk here, an I/O error, a locked database,
  memory): the job waits untouched, one warning names it and the cause, and the cycle
  reports it; the next cycle tries again;
- anything else is taken to be the job's (something in its files we did not foresee): the
  job gets an error result saying what went wrong, and the traceback goes to the log.

A lost cluster connection (TransportError) is not one job's business: it still ends the
cycle, and every job waits.
"""
from __future__ import annotations

import errno
import logging
import sqlite3
from dataclasses import dataclass, field
from typing import Callable

from .entries import bounded_message
from .transport import TransportError

log = logging.getLogger(__name__)

ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EIO, errno.EROFS, errno.ENOMEM, errno.EMFILE,
                      errno.ENFILE, errno.ESTALE, errno.ETIMEDOUT, errno.EINTR, errno.EAGAIN}


def is_environment(error: BaseException) -> bool:
    """True for faults of this machine, its disks or its database, not of the job."""
    if isinstance(error, (MemoryError, sqlite3.OperationalError)):
        return True
    return isinstance(error, OSError) and error.errno in ENVIRONMENT_ERRNOS


def describe(error: BaseException) -> str:
    """One bounded line: the exception's type and text."""
    return bounded_message(" ".join(f"{type(error).__name__}: {error}".split()), 500)


@dataclass
class Boundary:
    environment_errors: list[str] = field(default_factory=list)   # this cycle's, for the report

    def contain(self, name: str, step: str, action: Callable[[], object],
                fail: Callable[[str], object] | None) -> bool:
        """Run ``action`` for the job ``name``; False when it raised (and was dealt with).

        ``fail(message)`` writes the job's error result; None where no result can be
        written (the error is then only logged)."""
        try:
            action()
            return True
        except TransportError:
            raise
        except Exception as error:  # noqa: BLE001 - this is the boundary
            if is_environment(error):
                said = f"{name}: {step}: {describe(error)}"
                self.environment_errors.append(said)
                log.warning("%s (not the job's fault: it waits for the next cycle)", said)
                return False
            log.error("%s: %s failed: %s", name, step, describe(error), exc_info=True)
            if fail is None:
                return False
            try:
                fail(f"internal error while {step}: {describe(error)}")
            except Exception as second:  # noqa: BLE001
                log.error("%s: could not write its error result either (%s); it waits", name, describe(second),
                          exc_info=True)
            return False
