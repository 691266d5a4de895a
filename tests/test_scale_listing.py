"""``list`` and ``status`` with a dropbox of many waiting jobs read the folder once, not
each job's file (bench/scale.py measures them with 100,000)."""
from __future__ import annotations

import os
import time

from helpers import drop, make_config

from dropbox_runner.dropbox import Dropbox
from dropbox_runner.history import History
from dropbox_runner.status import gather_status
from dropbox_runner.transport.local import LocalTransport
from dropbox_runner.verbs import list_jobs

WAITING = 300


def drop_waiting(config, count: int = WAITING) -> None:
    now = time.time()
    for number in range(count):
        path = drop(config, f"w{number:04d}.job", {"script": "echo_args", "args": {"first": number}})
        os.utime(path, (now - 1000 + number, now - 1000 + number))    # w0000 is the oldest


def count_calls(monkeypatch, name: str) -> list[str]:
    calls: list[str] = []
    real = getattr(Dropbox, name)

    def counted(self, job_name, *args):
        calls.append(job_name)
        return real(self, job_name, *args)

    monkeypatch.setattr(Dropbox, name, counted)
    return calls


def test_list_of_every_state_stops_at_its_limit(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    drop_waiting(config)
    history = History(config.state_dir / "history.sqlite", config.dropbox)
    history.record("old.job", "finished", "id-old", status="ok", message="processed OK")
    stats = count_calls(monkeypatch, "mtime")
    rows = list_jobs(config, history, None, None, 10)
    assert len(rows) == 10 and rows[0]["name"] == "old.job"
    assert [row["name"] for row in rows[1:]] == [f"w{number:04d}.job" for number in range(9)]   # oldest first
    assert len(stats) <= 9


def test_status_reads_the_age_of_the_oldest_waiting_job_only(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    drop_waiting(config)
    ages = count_calls(monkeypatch, "age")
    status = gather_status(config, LocalTransport())
    assert status["jobs"]["waiting"] == WAITING
    assert 990 < status["oldest_waiting_seconds"] < 1100
    assert ages == ["w0000.job"]
