"""The tool's side of the dropbox: hpc_batch's ``submit_and_wait``, kept call-compatible.

Unlike the original, the ``.job`` file is written atomically (a hidden temporary name,
then a rename), so the submitter never reads half a job.
"""
from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from .jobs import dump_yaml
from .on_hpc.files import write_atomic


def submit(dropbox: str | Path, job: dict[str, Any]) -> Path:
    """Drop a job; return the path of its ``.job`` file (its result is that + ``.finished``)."""
    dropbox = Path(dropbox)
    if not dropbox.is_dir():
        raise NotADirectoryError(f"Dropbox {dropbox} doesn't exist or isn't a directory")
    path = dropbox / f"{uuid.uuid4().hex}.job"
    write_atomic(str(path), dump_yaml(job))
    return path


def wait(job_path: str | Path, period: float = 10,
         progress: Callable[[str, float], None] | None = None) -> dict[str, Any]:
    """Wait for a job's result, remove the result file and return its contents."""
    job_path = Path(job_path)
    result_path = job_path.with_name(job_path.name + ".finished")
    started = time.monotonic()
    while not result_path.exists():
        if progress:
            progress(_state(job_path), time.monotonic() - started)
        time.sleep(period)
    with open(result_path, encoding="utf-8") as handle:
        result = yaml.safe_load(handle)
    result_path.unlink()
    return result


def submit_and_wait(dropbox: str | Path, job: dict[str, Any], period: float = 10) -> dict[str, Any]:
    """Submit the job, wait for it to complete and return the result (with ``job:``)."""
    return wait(submit(dropbox, job), period)


def _state(job_path: Path) -> str:
    if job_path.exists():
        return "waiting to be taken"
    if job_path.with_name(job_path.name + ".submitted").exists():
        return "on the cluster"
    return "finishing"
