"""The tool's side of the dropbox: hpc_batch's ``submit_and_wait``, kept call-compatible.

Unlike the original, the ``.job`` file is written atomically (a hidden temporary name,
then a rename), so the submitter never reads half a job.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import yaml

from .jobs import dump_yaml
from .on_hpc.files import write_atomic


def submit(dropbox: str | Path, job: dict[str, Any], name: str | None = None) -> Path:
    """Drop a job; return the path of its ``.job`` file (its result is that + ``.finished``).

    ``name`` (``x`` or ``x.job``) names the file; ValueError when it is not a plain file name
    and FileExistsError when a job of that name, or its result, is already there (a stale
    result would otherwise be taken for this job's)."""
    dropbox = Path(dropbox)
    if not dropbox.is_dir():
        raise NotADirectoryError(f"Dropbox {dropbox} doesn't exist or isn't a directory")
    if name is None:
        path = dropbox / f"{uuid.uuid4().hex}.job"
    else:
        stem = name[: -len(".job")] if name.endswith(".job") else name
        if not stem or "/" in stem or "\0" in stem or stem.startswith("."):
            raise ValueError(f"{name!r}: a job name is a plain file name (no '/', not starting with '.')")
        path = dropbox / f"{stem}.job"
        taken = [str(p) for p in (path, *(path.with_name(path.name + s) for s in (".submitted", ".finished")))
                 if os.path.lexists(p)]
        if taken:
            raise FileExistsError(f"{taken[0]}: already exists; choose another --name")
    write_atomic(str(path), dump_yaml(job), mark_written=True)   # taken without the settle wait
    return path


def wait(job_path: str | Path, period: float = 10,
         progress: Callable[[str, float], None] | None = None, timeout: float | None = None) -> dict[str, Any]:
    """Wait for a job's result, remove the result file and return its contents;
    TimeoutError after ``timeout`` seconds (the job itself stays in the dropbox)."""
    job_path = Path(job_path)
    result_path = job_path.with_name(job_path.name + ".finished")
    started = time.monotonic()
    while not result_path.exists():
        elapsed = time.monotonic() - started
        if timeout is not None and elapsed >= timeout:
            raise TimeoutError(f"no result for {job_path} after {timeout:g}s")
        if progress:
            progress(_state(job_path), elapsed)
        time.sleep(period if timeout is None else max(0.0, min(period, timeout - elapsed)))
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
