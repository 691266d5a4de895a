"""The operator's verbs: list, cancel, resubmit and the cache, without editing files by hand.

Cancel and resubmit act through the dropbox's own files (``x.job.cancel``; a new
``x.job``), so they are safe beside a running cron or daemon and take effect at its next
cycle, exactly as when a tool does the same.
"""
from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, NamedTuple

from .config import Config
from .dropbox import Dropbox
from .history import History
from .jobs import dump_yaml
from .on_hpc.files import write_atomic
from .status import table


def job_name(name: str) -> str:
    """Accept ``x``, ``x.job`` or a path to either."""
    name = Path(name).name
    for suffix in (".finished", ".submitted", ".cancel"):
        if name.endswith(".job" + suffix):
            name = name[: -len(suffix)]
    return name if name.endswith(".job") else name + ".job"


class Said(NamedTuple):
    """What a verb did with one name; ``known`` is False for a job that does not exist
    (the command then exits non-zero, so a script notices a typo)."""

    line: str
    known: bool = True


def request_cancel(config: Config, names: list[str]) -> list[Said]:
    """Drop ``x.job.cancel`` for each job still waiting or running; say what was done."""
    dropbox = Dropbox(config.dropbox)
    said = []
    for name in map(job_name, names):
        if os.path.exists(dropbox.path(name)) or os.path.exists(dropbox.path(name, ".submitted")):
            write_atomic(dropbox.path(name, ".cancel"), f"requested at {time.time():.0f}\n")
            said.append(Said(f"{name}: cancel requested"))
        elif os.path.exists(dropbox.path(name, ".finished")):
            said.append(Said(f"{name}: already finished; nothing to cancel"))
        else:
            said.append(Said(f"{name}: no such job", known=False))
    return said


def resubmit(config: Config, history: History, names: list[str], force: bool = False) -> list[Said]:
    """Put failed jobs back as new; their earlier result blocks go into the next result."""
    dropbox = Dropbox(config.dropbox)
    said = []
    for name in map(job_name, names):
        result = dropbox.read_result(name)
        if result is None:
            known = os.path.exists(dropbox.path(name)) or os.path.exists(dropbox.path(name, ".submitted"))
            said.append(Said(f"{name}: {'not finished yet' if known else 'no such job'}; nothing to resubmit",
                             known=known))
            continue
        block = result.pop("job", {})
        if block.get("status") == "ok" and not force:
            said.append(Said(f"{name}: finished ok; use --force to run it again"))
            continue
        history.remember_earlier_run(name, block)
        write_atomic(dropbox.path(name), dump_yaml(result))
        dropbox.discard(name, ".finished")
        history.record(name, "waiting", detail="resubmitted")
        said.append(Said(f"{name}: resubmitted"))
    return said


def list_jobs(config: Config, history: History, states: list[str] | None, pattern: str | None,
              limit: int) -> list[dict[str, Any]]:
    """Jobs from the history store, plus dropped jobs it has not seen yet."""
    if not history.counts() and any(Dropbox(config.dropbox).folder.iterdir()):
        history.rebuild(config.dropbox)
    rows = [vars(row) for row in history.jobs(states, pattern, limit)]
    if not states or "waiting" in states:
        known = {row["name"] for row in rows}
        dropbox = Dropbox(config.dropbox)
        for name in dropbox.scan().new:
            if len(rows) >= limit:
                break      # 100,000 waiting jobs are not each stat-ed to show 200
            if name not in known and (pattern is None or Path(name).match(pattern)):
                mtime = dropbox.mtime(name)
                rows.append({"name": name, "job_id": None, "state": "waiting", "status": None, "message": None,
                             "job_class": None, "runner": None, "attempts": None, "first_seen": mtime,
                             "updated_at": mtime})
    return rows[:limit]


def format_jobs(rows: list[dict[str, Any]]) -> str:
    now = time.time()
    lines = [("NAME", "STATE", "AGE", "RUNNER", "ATTEMPTS", "STATUS / MESSAGE")]
    for row in rows:
        age = now - (row["updated_at"] or now)
        detail = " ".join(part for part in (row["status"], row["message"]) if part)
        lines.append((row["name"], row["state"], _age(age), row["runner"] or "-",
                      str(row["attempts"] or "-"), detail[:70]))
    return "\n".join(table(lines))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds:.0f}s"
