"""Result blocks (the ``job:`` part of ``.job.finished``) and placing outputs.

Outputs are placed all or nothing: each is first copied (or, held where the job left it,
hard-linked: ``safefs.place_files``) next to its destination under a hidden,
unpredictable temporary name, and only when every one is complete are they renamed into
place.
A tool that sees ``status: ok`` finds every output whole; on error it finds none of them
half-written.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from . import __version__
from .isotime import local_iso_seconds
from .jobs import workspace_names
from .on_hpc.protocol import FinishedRecord
from .safefs import Boundaries, FileRefused, HeldFile, place_files

MAX_STREAM_BYTES = 1 << 20


def timestamp(seconds: float | None) -> str | None:
    return None if seconds is None else local_iso_seconds(seconds)


def error_block(message: str, job_id: str | None = None, **extra: Any) -> dict[str, Any]:
    """For a job whose script never ran (rc -1)."""
    now = timestamp(time.time())
    block = {"status": "error", "message": message, "stderr": "", "stdout": "", "rc": -1,
             "start": now, "end": now}
    if job_id:
        block["id"] = job_id
    block.update(extra)
    block["version"] = __version__
    return block


def run_block(job_id: str, record: FinishedRecord, stdout: str, stderr: str,
              submitted_at: float | None) -> dict[str, Any]:
    """What a finished run says, before its outputs are checked."""
    rc = int(record.rc)
    if record.error:
        status, message = "error", record.error
    elif record.signal:
        status, message = "error", f"Remote command was killed by {record.signal}"
    elif rc != 0:
        status, message = "error", f"Remote command failed with return code {rc}"
    else:
        status, message = "ok", "processed OK"
    start, end = record.start, record.end
    block = {
        "status": status, "message": message, "stderr": stderr, "stdout": stdout, "rc": rc,
        "start": timestamp(start), "end": timestamp(end),
        "id": job_id,
        "attempts": int(record.attempt or record.interrupted or 1),
        "runner": record.runner,
        "scheduler_job_id": record.sched_id,
        "host": record.host,
        "duration": round(end - start, 3) if start and end else None,
        "queue_wait": round(start - submitted_at, 3) if start and submitted_at else None,
        "version": __version__,
    }
    if record.signal:
        block["signal"] = record.signal
    if record.step_id:
        block["scheduler_step_id"] = record.step_id
    return block


def resource_provenance(record: FinishedRecord) -> dict[str, Any]:
    """Where a run ran and with what: its Slurm step, its node, what it was given."""
    found = {"scheduler_step_id": record.step_id, "node": record.node, "resources": record.resources}
    return {name: value for name, value in found.items() if value is not None}


def read_stream(path: Path) -> str:
    """A pulled job's stdout or stderr (``stream_text``); empty when the job left none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return ""
    try:
        return stream_text(fd)
    finally:
        os.close(fd)


def stream_text(fd: int) -> str:
    """An open stdout or stderr, cut to its last MiB so a chatty job cannot make a result
    file nobody can open.  Read by offset from the descriptor given: a file held open where
    the job left it is read without opening it again (two opens of ``/proc/self/fd/N`` and
    twenty system calls a job, issue 18), and an empty one not read at all."""
    size = os.fstat(fd).st_size
    if not size:
        return ""
    skipped = max(0, size - MAX_STREAM_BYTES)
    text = os.pread(fd, size - skipped, skipped).decode("utf-8", errors="replace")
    if skipped:
        text = f"[dropbox-runner: first {skipped} bytes cut]\n" + text
    return text


class OutputProblem(Exception):
    """An output could not be placed; nothing of this job was left at any destination."""


def place_outputs(produced: dict[str, Path], destinations: dict[str, str], boundaries: Boundaries,
                  linkable: dict[str, HeldFile] | None = None, umask: int | None = None) -> None:
    """Copy every produced file to its destination, all or nothing, with the boundaries
    checked again on each resolved destination as it is placed (``safefs.place_files``);
    one also in ``linkable`` may be linked instead.  An output of ``destinations`` not in
    ``produced`` is as missing as one not there; one held (``linkable``) was found a
    regular file when it was opened, and is not looked at again."""
    linkable = linkable or {}
    missing = [key for key in destinations
               if key not in produced or (key not in linkable and not produced[key].is_file())]
    if missing:
        names = workspace_names(destinations)
        raise OutputProblem("the script did not write " + ", ".join(
            f"{key} (expected at output/{names[key]})" for key in sorted(missing)))
    try:
        place_files([(linkable.get(key) or produced[key], destinations[key]) for key in produced], boundaries,
                    umask=umask)
    except FileRefused as refused:
        raise OutputProblem(f"output not placed: {refused}") from None
    except OSError as error:
        raise OutputProblem(f"could not place outputs: {error}") from None
