"""``list`` and ``status`` with a dropbox of many waiting jobs read the folder once, not
each job's file (bench/scale.py measures them with 100,000)."""
from __future__ import annotations

import os
import time

from dropbox_runner.on_hpc.protocol import CycleAnswer, JobState
from helpers import drop, make_config

from dropbox_runner.dropbox import Dropbox, HeldSummary
from dropbox_runner.history import History
from dropbox_runner.report import CycleReport
from dropbox_runner.status import gather_status
from dropbox_runner.submitter import Submitter
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


class LookupCounting(list):
    lookups = 0

    def __contains__(self, item):
        type(self).lookups += 1
        return super().__contains__(item)


def test_noting_the_states_of_a_large_slice_never_searches_its_list_of_ids(config):
    """A slice of a large burst sends thousands of jobs (a quarter of what is held); the
    cycle looked each held job up in the list of the slice's ids, and in the list of those
    it could not send: work that grew with the product of the two."""
    held = {f"s.j{n}": HeldSummary(f"j{n}.job", f"s.j{n}", "default", None) for n in range(2000)}
    sent = LookupCounting(sorted(held)[:1000])
    report = CycleReport(unsent=LookupCounting())
    submitter = Submitter(config, LocalTransport())
    try:
        with submitter.history.batch():
            submitter._note_queue_states(held, CycleAnswer(states=dict.fromkeys(held, JobState.QUEUED)), sent,
                                         report)
        queued = {name for name, (state, _) in submitter.history.in_flight().items() if state == JobState.QUEUED}
    finally:
        submitter.close()
    assert LookupCounting.lookups == 0
    assert queued == {job.name for job in held.values()}
