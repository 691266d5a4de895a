"""Per-job overhead (issue 18): durable batches instead of an fsync per file, without
giving up the order that makes a crash harmless."""
import os
import subprocess
import sys

from helpers import drain, drop, make_config, write_config

from dropbox_runner import durable
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import BATCH_PREFIX, Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport


def ledger_job(tmp_path, n):
    return {"script": "ledger", "args": {"seconds": 0}, "cache": False,
            "output_map": {"out": str(tmp_path / "outputs" / f"o{n}.txt")}}


class SyncCounter:
    def __init__(self, monkeypatch):
        self.fsyncs = self.syncfs = 0
        real_fsync, real_syncfs = os.fsync, durable._SYNCFS

        def fsync(fd):
            self.fsyncs += 1
            real_fsync(fd)

        def syncfs(fd):
            self.syncfs += 1
            return real_syncfs(fd)

        monkeypatch.setattr(os, "fsync", fsync)
        if real_syncfs is not None:
            monkeypatch.setattr(durable, "_SYNCFS", syncfs)

    @property
    def total(self):
        return self.fsyncs + self.syncfs


def test_a_cycle_makes_its_files_durable_in_a_few_calls_not_one_per_job(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    names = [f"j{n}.job" for n in range(40)]
    for n, name in enumerate(names):
        drop(config, name, ledger_job(tmp_path, n))
    counter = SyncCounter(monkeypatch)
    run_once(config, LocalTransport())
    assert len(Dropbox(config.dropbox).scan().submitted) == 40
    assert counter.total <= 4, (counter.fsyncs, counter.syncfs)    # was 40: one per .submitted
    results = drain(config, names)
    assert {r["job"]["status"] for r in results.values()} == {"ok"}
    assert counter.total < 40, (counter.fsyncs, counter.syncfs)    # was 80: and one per .finished


def test_without_syncfs_every_file_is_still_fsynced_before_it_is_renamed(tmp_path, monkeypatch):
    monkeypatch.setattr(durable, "_SYNCFS", lambda fd: -1)     # a filesystem refusing syncfs
    counter = SyncCounter(monkeypatch)
    batch = durable.DurableBatch()
    for n in range(5):
        batch.write(str(tmp_path / f"f{n}"), f"{n}\n")
    assert not (tmp_path / "f0").exists()
    batch.commit()
    assert counter.fsyncs == 5 + 1      # each file, then the folder
    assert [(tmp_path / f"f{n}").read_text() for n in range(5)] == [f"{n}\n" for n in range(5)]
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"f{n}" for n in range(5)]


def test_a_batch_removes_nothing_before_what_was_written_is_in_place(tmp_path):
    (tmp_path / "x.job").write_text("script: a\n")
    dropbox = Dropbox(tmp_path)
    with dropbox.durable_batch():
        dropbox.write_result("x.job", {"script": "a"}, {"status": "ok"})
        dropbox.discard("x.job", "")
        assert (tmp_path / "x.job").exists() and not (tmp_path / "x.job.finished").exists()
    assert not (tmp_path / "x.job").exists()
    assert dropbox.read_result("x.job")["job"] == {"status": "ok"}


def test_a_submitter_killed_mid_batch_changed_nothing_and_the_next_cycle_sweeps_its_leftovers(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    names = [f"j{n}.job" for n in range(3)]
    for n, name in enumerate(names):
        drop(config, name, ledger_job(tmp_path, n))
    env = dict(os.environ, DROPBOX_RUNNER_FAULT="after_hold")    # killed after the first job's hold
    done = subprocess.run([sys.executable, "-m", "dropbox_runner.cli", "once", "--config", str(config_path)],
                          env=env, capture_output=True, timeout=60)
    assert done.returncode == -9
    listing = Dropbox(config.dropbox).scan()
    assert listing.new == names and listing.submitted == []       # nothing taken: the batch never ended
    assert listing.batch_leftovers
    results = drain(config, names)
    assert {r["job"]["status"] for r in results.values()} == {"ok"}
    assert not [p for p in config.dropbox.iterdir() if p.name.startswith(BATCH_PREFIX)]
    assert sorted((tmp_path / "ledger").read_text().split()) == sorted(r["job"]["id"] for r in results.values())
