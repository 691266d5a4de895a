"""Room on the cluster: a job whose inputs cannot fit fails alone, not the whole push.

The head node reports the workspace's free space in every cycle's answer; the next cycle
sends only what fits in it.  A job bigger than all the free space gets an error result
naming the sizes; jobs that fit alone but not together wait for a later push.  The figure
is remembered in the state folder (a hint: written without fsync), so cron's one-cycle
processes know it too.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from .on_hpc.files import tree_bytes

SPACE_FILE = "workspace-space.json"
MARGIN = 0.95       # keep some room for what runners write while the push runs


def remember_free(state_dir: Path, free: int | None) -> None:
    if free is None:
        return
    path = state_dir / SPACE_FILE
    temporary = path.with_name(f".{SPACE_FILE}.{os.getpid()}")
    try:
        temporary.write_text(json.dumps({"free_bytes": int(free)}))
        os.replace(temporary, path)
    except OSError:
        pass    # only a hint


def known_free(state_dir: Path) -> int | None:
    try:
        value = json.loads((state_dir / SPACE_FILE).read_text())["free_bytes"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return value if isinstance(value, int) else None


def entry_bytes(folder: Path) -> int:
    """What sending an outbox entry costs on the cluster (its links followed; its
    ``job.json``, one file for the intake cycle's jobs, sent once for them all)."""
    return tree_bytes(folder, follow_links=True, shared=True)


def split_by_room(sizes: dict[str, int], free: int | None) -> tuple[list[str], list[str], list[str]]:
    """(send now, wait, never fits) for job ids with their sizes, in the order given."""
    if free is None:
        return list(sizes), [], []
    usable = room = int(free * MARGIN)
    send, wait, never = [], [], []
    for job_id, size in sizes.items():
        if size > usable:
            never.append(job_id)
        elif size <= room:
            send.append(job_id)
            room -= size
        else:
            wait.append(job_id)
    return send, wait, never


def too_big_message(size: int, free: int) -> str:
    return (f"the job's inputs and script ({format_size(size)}) do not fit in the cluster workspace's "
            f"free space ({format_size(free)}); the job was not sent")


def is_out_of_space(error: BaseException) -> bool:
    return "No space left on device" in str(error) or "Disk quota exceeded" in str(error)


def format_size(size: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if size >= scale:
            return f"{size / scale:.1f} {unit}"
    return f"{size} bytes"
