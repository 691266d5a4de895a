"""The queue wait starts first: a class's runner is asked for before its burst is staged.

Against the real single-node Slurm of the ``slurm_cluster`` fixture, on the local backend
(``scheduler: slurm``).  ``sbatch`` is wrapped by a shim that logs the time of each call,
so the order of the submission and the staging is read from the clock, not from our logs.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dropbox_runner.on_hpc import coming
from dropbox_runner.on_hpc.jobstore import JobStore
from helpers import wait_until

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport import TransportError
from dropbox_runner.transport.local import LocalTransport

TEMPLATES = Path(__file__).parent / "templates"
SBATCH_SHIM = """#!/bin/sh
printf '%s %s\\n' "$(date +%s.%N)" "$*" >> {log}
exec {real} "$@"
"""


@pytest.fixture
def cluster(tmp_path, monkeypatch, slurm_cluster):
    """A dropbox whose runners are jobs of the test Slurm; sbatch calls timed by a shim."""
    shims, calls = tmp_path / "shims", tmp_path / "sbatch.calls"
    shims.mkdir()
    real = next(Path(d) / "sbatch" for d in os.environ["PATH"].split(":") if (Path(d) / "sbatch").is_file())
    (shims / "sbatch").write_text(SBATCH_SHIM.format(log=calls, real=real))
    (shims / "sbatch").chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))
    for sub in ("dropbox", "out"):
        (tmp_path / sub).mkdir()
    (tmp_path / "config.yaml").write_text(yaml.safe_dump({
        "dropbox": str(tmp_path / "dropbox"), "backend": "local", "scheduler": "slurm",
        "cluster_root": str(tmp_path / "cluster"), "templates": str(TEMPLATES), "grace_seconds": 0,
        "hpc_env": {"ledger": str(tmp_path / "ledger")},
        "classes": {"default": {"slots": 4, "idle_timeout": 2, "max_runners": 1, "launch": "process"}}}))
    yield tmp_path
    slurm_cluster.run("scancel", "-u", "root")
    slurm_cluster.wait_idle(60)


def sbatch_times(root: Path) -> list[float]:
    path = root / "sbatch.calls"
    return [float(line.split()[0]) for line in path.read_text().splitlines()] if path.exists() else []


def drop_burst(root: Path, jobs: int) -> list[Path]:
    config = load_config(root / "config.yaml")
    return [submit(config.dropbox, {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                                    "output_map": {"out": str(root / "out" / f"o{n}")}}) for n in range(jobs)]


def drain(root: Path, files: list[Path], timeout: float = 120) -> list[dict]:
    config = load_config(root / "config.yaml")

    def done() -> bool:
        run_once(config, LocalTransport())
        finished = Dropbox(config.dropbox).scan().finished
        return all(path.name in finished for path in files)

    wait_until(done, timeout=timeout, interval=0.3, what="every job's result")
    return [Dropbox(config.dropbox).read_result(path.name)["job"] for path in files]


def assert_each_ran_once(root: Path, results: list[dict]) -> None:
    assert [r["status"] for r in results] == ["ok"] * len(results)
    assert sorted((root / "ledger").read_text().split()) == sorted(r["id"] for r in results)


@pytest.mark.parametrize("settle", [0, 2])
def test_the_runner_is_submitted_before_the_burst_is_staged(cluster, settle):
    """With settle_seconds 2 the files are still settling when the cycle starts: the class
    is read from the first of them before the wait, and the runner asked for then."""
    config_path = cluster / "config.yaml"
    config_path.write_text(yaml.safe_dump(dict(yaml.safe_load(config_path.read_text()), settle_seconds=settle)))
    files = drop_burst(cluster, 60)
    if settle:
        for path in files:
            os.utime(path)      # as if just written in place: a file renamed in would not wait
    touched = max(os.stat(path).st_mtime for path in files)
    config = load_config(config_path)
    report = run_once(config, LocalTransport())
    assert report.taken == 60 and report.runners_submitted == 1
    [submitted] = sbatch_times(cluster)
    staged = [os.stat(path).st_mtime for path in Path(config.workspace, "jobs").glob("*/job.sh")]
    assert len(staged) == 60
    assert submitted < min(staged), (submitted, min(staged))      # before any job was written out
    if settle:
        # the settle wait, counted from the files' last change, came after the submission and before
        # the staging (the submission's own moment depends on how busy the machine is)
        assert min(staged) - touched >= settle * 0.9, (touched, submitted, min(staged))
    results = drain(cluster, files)
    assert_each_ran_once(cluster, results)
    assert len(sbatch_times(cluster)) == 1 and len({r["runner"] for r in results}) == 1


def test_a_mixed_burst_gets_one_early_runner_for_its_first_class_and_the_rest_from_the_cycle(cluster):
    """The early call knows one job's class: it must not size the whole burst's runners on it."""
    config_path = cluster / "config.yaml"
    data = yaml.safe_load(config_path.read_text())
    data["classes"]["side"] = {"slots": 2, "max_runners": 3, "idle_timeout": 2, "launch": "process"}
    config_path.write_text(yaml.safe_dump(data))
    config = load_config(config_path)
    first = [submit(config.dropbox, {"script": "ledger", "args": {"seconds": 0}, "cache": False, "class": "side",
                                     "output_map": {"out": str(cluster / "out" / f"s{n}")}}) for n in range(2)]
    for path in first:     # the scan lists the oldest first: these are the first the intake meets
        os.utime(path, (time.time() - 60, time.time() - 60))
    files = first + drop_burst(cluster, 8)
    report = run_once(config, LocalTransport())
    assert report.taken == 10
    calls = (cluster / "sbatch.calls").read_text().splitlines()
    assert sum("dbr." in line and ".side-" in line for line in calls) == 1, calls     # not 3 for 10 jobs
    assert sum(".default-" in line for line in calls) == 1, calls
    assert_each_ran_once(cluster, drain(cluster, files))


def test_a_cycle_killed_after_the_early_submission_loses_nothing_and_submits_no_second_runner(cluster):
    files = drop_burst(cluster, 20)
    env = dict(os.environ, DROPBOX_RUNNER_FAULT="after_early")
    killed = subprocess.run([sys.executable, "-m", "dropbox_runner.cli", "once", "--config",
                             str(cluster / "config.yaml")], env=env, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    assert len(sbatch_times(cluster)) == 1
    config = load_config(cluster / "config.yaml")
    listing = Dropbox(config.dropbox).scan()
    assert len(listing.new) == 20 and not listing.submitted            # nothing was taken
    assert not list(Path(config.workspace, "jobs").glob("*"))           # nor staged
    # The runner started (or will) with nothing ready: it waits for the announced burst
    # instead of leaving after its 2 s linger.
    assert coming.expected(JobStore(config.workspace), "default")
    results = drain(cluster, files)
    assert_each_ran_once(cluster, results)
    assert len(sbatch_times(cluster)) == 1                               # the early runner did the work
    assert not coming.expected(JobStore(config.workspace), "default")   # the cycle's call cleared it


def test_a_failed_early_call_costs_only_the_head_start(cluster, monkeypatch, caplog):
    from dropbox_runner.cluster import ClusterSide

    real_call = ClusterSide.call

    def call(self, verb, request, deploy=True):
        if verb == "early":
            raise TransportError("connection reset by peer")
        return real_call(self, verb, request, deploy)

    monkeypatch.setattr(ClusterSide, "call", call)
    files = drop_burst(cluster, 10)
    report = run_once(load_config(cluster / "config.yaml"), LocalTransport())
    assert report.taken == 10 and report.runners_submitted == 1      # by the cycle's own call
    assert "could not ask for a runner before staging" in caplog.text
    assert_each_ran_once(cluster, drain(cluster, files))


def test_no_early_call_while_the_class_has_jobs_in_flight(cluster, monkeypatch):
    from dropbox_runner.cluster import ClusterSide

    verbs: list[str] = []
    real_call = ClusterSide.call

    def call(self, verb, request, deploy=True):
        verbs.append(verb)
        return real_call(self, verb, request, deploy)

    monkeypatch.setattr(ClusterSide, "call", call)
    config = load_config(cluster / "config.yaml")
    submit(config.dropbox, {"script": "ledger", "args": {"seconds": 30}, "cache": False,
                            "output_map": {"out": str(cluster / "out" / "long")}})
    run_once(config, LocalTransport())
    assert verbs == ["early", "cycle"]
    drop_burst(cluster, 5)
    run_once(config, LocalTransport())
    assert verbs == ["early", "cycle", "cycle"]        # the class's runner is already there
    assert len(sbatch_times(cluster)) == 1


def test_an_announcement_a_job_forged_does_not_keep_runners(tmp_path):
    store = JobStore(str(tmp_path))
    store.ensure_layout()
    coming.expect(store, "default", 1000, now=1000.0)
    assert coming.expected(store, "default", now=1001.0)
    assert not coming.expected(store, "default", now=1000.0 + coming.MOST_SECONDS + 1)
    for forged in ({"until": 10 ** 12}, {"until": True}, {"until": "soon"}, ["until"], "x"):
        Path(coming.path(store, "default")).write_text(json.dumps(forged))
        assert not coming.expected(store, "default", now=1000.0)
    Path(coming.path(store, "default")).write_bytes(b"\xff garbage")
    assert not coming.expected(store, "default", now=1000.0)
    coming.arrived(store, ["default", "gpu"])
    assert not os.path.exists(coming.path(store, "default"))
