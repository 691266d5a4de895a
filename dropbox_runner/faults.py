"""Deterministic crash points, so tests can kill the submitter between any two steps.

``DROPBOX_RUNNER_FAULT=<point>`` makes the process SIGKILL itself the first time it
reaches that point: no cleanup, no ``finally``, exactly like ``kill -9`` or a power cut.
A point names a step done: the durable batches in progress (``durable.py``) are made
durable first, as the step would be had it not been batched.  ``in_batch`` kills a batch
with its files written and nothing yet renamed or removed.
"""
from __future__ import annotations

import os
import signal
from typing import Callable

ENVIRONMENT_VARIABLE = "DROPBOX_RUNNER_FAULT"
# Read once: a point is passed several times a job, and a lookup of a variable that is not
# set raises and catches a KeyError inside ``os.environ`` (2% of a burst's CPU).  Tests
# arm it in the environment of the process they start.
_ARMED = os.environ.get(ENVIRONMENT_VARIABLE)
_before_kill: list[Callable[[], None]] = []


def fault_point(name: str) -> None:
    if _ARMED == name:
        for commit in list(_before_kill):
            commit()
        os.kill(os.getpid(), signal.SIGKILL)


def on_fault(callback: Callable[[], None]) -> Callable[[], None]:
    """Run ``callback`` before a fault point kills the process; returns the undo."""
    _before_kill.append(callback)
    return lambda: _before_kill.remove(callback)
