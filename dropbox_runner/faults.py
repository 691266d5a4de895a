"""Deterministic crash points, so tests can kill the submitter between any two steps.

``DROPBOX_RUNNER_FAULT=<point>`` makes the process SIGKILL itself the first time it
reaches that point: no cleanup, no ``finally``, exactly like ``kill -9`` or a power cut.
"""
import os
import signal

ENVIRONMENT_VARIABLE = "DROPBOX_RUNNER_FAULT"


def fault_point(name: str) -> None:
    if os.environ.get(ENVIRONMENT_VARIABLE) == name:
        os.kill(os.getpid(), signal.SIGKILL)
