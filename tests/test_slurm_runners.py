"""Runners as real Slurm jobs: the whole pipeline on the local backend with ``scheduler: slurm``
against the single-node cluster of the ``slurm_cluster`` fixture (8 CPUs, 2 fake GPUs).

``sbatch`` and ``squeue`` are wrapped by counting shims first on PATH, so the tests count
every call the submitter's cycles and the runners make.  These tests never skip.
"""
from __future__ import annotations

import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml
from dropbox_runner.on_hpc.files import read_json
from dropbox_runner.on_hpc.jobstore import JobStore

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.status import format_status, gather_status
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

TEMPLATES = Path(__file__).parent / "templates"
SHIM = """#!/bin/sh
# Counts calls: one line each, "<who> <argv>" (who: the Slurm job id of a runner, or -).
printf '%s %s\\n' "${{SLURM_JOB_ID:--}}" "$*" >> {log}
exec {real} "$@"
"""


class Pipeline:
    """A dropbox, a config with ``scheduler: slurm``, and the submitter's cycles."""

    def __init__(self, root: Path, classes: dict, **settings):
        self.root = root
        (root / "dropbox").mkdir(parents=True)
        (root / "out").mkdir()
        self.ledger = root / "ledger"
        data = {"dropbox": str(root / "dropbox"), "backend": "local", "scheduler": "slurm",
                "cluster_root": str(root / "cluster"), "templates": str(TEMPLATES),
                "grace_seconds": 0, "classes": classes}
        data.update(settings)
        (root / "config.yaml").write_text(yaml.safe_dump(data))
        self.config = load_config(root / "config.yaml")
        self.workspace = Path(self.config.workspace)
        self.cycles = 0
        self.reports = []

    # -- jobs ------------------------------------------------------------------------------
    def drop(self, script: str, output: str, **fields) -> Path:
        args = fields.pop("args", {})
        # Runs must really run here: no answer from the result cache for identical jobs.
        job = {"script": script, "args": args, "output_map": {"out": str(self.root / "out" / output)},
               "cache": False}
        job.update(fields)
        return submit(self.config.dropbox, job)

    def drop_ledger(self, output: str, seconds: float, **fields) -> Path:
        return self.drop("ledger", output, args={"seconds": seconds, "ledger": str(self.ledger)}, **fields)

    def result(self, path: Path) -> dict:
        return Dropbox(self.config.dropbox).read_result(path.name)

    def finished(self, path: Path) -> bool:
        return Path(str(path) + ".finished").exists()

    def job_id(self, path: Path) -> str:
        return Dropbox(self.config.dropbox).read_held(path.name)["id"]

    def started(self, path: Path, attempt: int = 1) -> bool:
        """The job's run number ``attempt`` has started (its runner recorded its claim)."""
        try:
            job_id = self.job_id(path)
        except (OSError, ValueError, KeyError):
            return False
        return self.claim(job_id).get("attempt") == attempt

    def ledger_lines(self) -> list[str]:
        """The ledger template appends the job id when a run completes."""
        return self.ledger.read_text().split() if self.ledger.exists() else []

    # -- cycles ----------------------------------------------------------------------------
    def cycle(self):
        report = run_once(self.config, LocalTransport())
        self.cycles += 1
        self.reports.append(report)
        return report

    def run_until(self, done, timeout: float, what: str = "") -> float:
        started = time.monotonic()
        while True:
            self.cycle()
            if done():
                return time.monotonic() - started
            if time.monotonic() - started > timeout:
                raise AssertionError(f"not done after {timeout}s: {what}\n{self.diagnostics()}")
            time.sleep(0.3)

    def run_all(self, paths: list[Path], timeout: float = 60) -> float:
        return self.run_until(lambda: all(self.finished(p) for p in paths), timeout,
                              f"{sum(map(self.finished, paths))}/{len(paths)} finished")

    def rerun_after_interruption(self, path: Path, first: dict, timeout: float) -> dict:
        """After the runner of ``first`` (the job's first claim) was lost: the job starts
        again, the first run's processes have ended, and a fresh runner runs it to
        completion exactly once.  Returns the interruption the head node recorded."""
        job_id = self.job_id(path)
        self.run_until(lambda: self.started(path, attempt=2), timeout, "the job started again")
        assert not _running(first["pgid"])                    # the first run's processes ended
        self.run_all([path], timeout=timeout)
        result = self.result(path)["job"]
        assert result["status"] == "ok" and result["attempts"] == 2
        assert result["runner"] != first["runner"]
        assert self.ledger_lines() == [job_id]                # ran to completion once
        finishes = [name for name, text in self.runner_logs().items() if f"finished {job_id}" in text]
        assert finishes == [result["runner"]]
        [interruption] = read_json(str(self.workspace / "jobs" / job_id / "interruptions.json"))
        return interruption

    # -- the cluster side --------------------------------------------------------------------
    def runner_logs(self) -> dict[str, str]:
        return {p.name[: -len(".log")]: p.read_text(errors="replace")
                for p in sorted((self.workspace / "runners").glob("*.log"))}

    def claim(self, job_id: str) -> dict:
        """The job's claim by the runner holding it, else its latest in a journal still there
        (a run that ended, of a runner not yet gone)."""
        store = JobStore(str(self.workspace))
        found = store.claim_of(job_id)
        if found:
            return found
        runners = [p.name[: -len(".claims.jsonl")] for p in (self.workspace / "runners").glob("*.claims.jsonl")]
        claims = [claim for claim in (store.runner_claims(runner).get(job_id) for runner in runners) if claim]
        return max(claims, key=lambda claim: claim.get("attempt", 0), default={})

    def diagnostics(self) -> str:
        logs = "\n".join(f"--- runner {name}\n{text[-3000:]}" for name, text in self.runner_logs().items())
        return f"ledger: {self.ledger_lines()}\nreports: {self.reports[-3:]}\n{logs}"


@pytest.fixture
def counted(tmp_path, monkeypatch, slurm_cluster):
    """sbatch and squeue wrapped by counting shims; SLURM_CONF of the test cluster."""
    shims = tmp_path / "shims"
    shims.mkdir()
    for program in ("sbatch", "squeue"):
        real = next(Path(d) / program for d in os.environ["PATH"].split(":")
                    if (Path(d) / program).is_file())
        shim = shims / program
        shim.write_text(SHIM.format(log=tmp_path / f"{program}.calls", real=real))
        shim.chmod(0o755)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    monkeypatch.setenv("SLURM_CONF", str(slurm_cluster.conf))

    def calls(program: str, who: str | None = None) -> list[str]:
        """``who``: "-" for the submitter's side, "runner" for calls made inside runners."""
        path = tmp_path / f"{program}.calls"
        lines = path.read_text().splitlines() if path.exists() else []
        if who == "runner":
            return [line for line in lines if not line.startswith("- ")]
        if who is not None:
            return [line for line in lines if line.startswith(who + " ")]
        return lines

    return calls


@pytest.fixture
def pipeline(tmp_path, counted, slurm_cluster):
    made = []

    def make(classes: dict, **settings) -> Pipeline:
        made.append(Pipeline(tmp_path / f"p{len(made)}", classes, **settings))
        return made[-1]

    yield make
    # Whatever a test leaves: cancel its runners, wait until Slurm is idle, and end job
    # processes Slurm does not track (proctrack/pgid loses a job's own session).
    slurm_cluster.run("scancel", "-u", "root")
    slurm_cluster.wait_idle(60)
    for p in made:
        _kill_jobs_of(p.config.submitter_id)


def _kill_jobs_of(submitter_id: str) -> None:
    needle = f"DBR_JOB_ID={submitter_id}.".encode()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/environ", "rb") as handle:
                if any(entry.startswith(needle) for entry in handle.read().split(b"\0")):
                    os.kill(int(pid), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def _running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _runner_of(result: dict) -> str:
    return result["job"]["runner"]


# ------------------------------------------------------------------------------ the tests
def test_a_burst_of_50_jobs_gets_exactly_one_sbatch(pipeline, counted, slurm_cluster):
    """hpc_batch's batching: with ``max_runners: 1``, one runner takes the whole burst."""
    p = pipeline({"default": {"slots": 4, "max_runners": 1, "idle_timeout": 3}})
    paths = [p.drop_ledger(f"o{n}", 0) for n in range(50)]
    elapsed = p.run_all(paths, timeout=90)
    results = [p.result(path) for path in paths]
    assert [r["job"]["status"] for r in results] == ["ok"] * 50
    assert len({_runner_of(r) for r in results}) == 1
    assert len(counted("sbatch")) == 1
    assert "--job-name=dbr." in counted("sbatch")[0]
    # squeue: once per cycle on the submitter's side, once per runner inside Slurm.
    assert len(counted("squeue", "-")) == p.cycles
    assert len(counted("squeue", "runner")) == 1
    assert sorted(p.ledger_lines()) == sorted(r["job"]["id"] for r in results)    # each ran once
    print(f"50 jobs: {elapsed:.1f}s, {p.cycles} cycles, {len(counted('sbatch'))} sbatch, "
          f"{len(counted('squeue'))} squeue")


def test_a_burst_under_the_default_policy_races_its_runners_and_runs_each_job_once(pipeline, counted):
    """A class left to its defaults (README, Runner policy): runners for 14 job places
    submitted in the cycle that took the burst, whichever starts first works, and the
    ones still pending once the backlog is gone are cancelled."""
    p = pipeline({"default": {"slots": 4}})
    assert p.config.classes["default"].max_runners == 4
    paths = [p.drop_ledger(f"o{n}", 0) for n in range(50)]
    p.run_all(paths, timeout=90)
    results = [p.result(path) for path in paths]
    assert [r["job"]["status"] for r in results] == ["ok"] * 50
    submissions = [report.runners_submitted for report in p.reports]
    assert submissions[0] == 4 and sum(submissions) == len(counted("sbatch")) <= 8
    assert len({_runner_of(r) for r in results}) <= 4
    assert sorted(p.ledger_lines()) == sorted(r["job"]["id"] for r in results)    # each ran once


def test_runner_per_job_submits_one_slurm_job_per_job(pipeline, counted):
    p = pipeline({"default": {"runner_per_job": True, "idle_timeout": 3}})
    paths = [p.drop_ledger(f"o{n}", 0) for n in range(6)]
    p.run_all(paths, timeout=90)
    results = [p.result(path) for path in paths]
    assert [r["job"]["status"] for r in results] == ["ok"] * 6
    assert len(counted("sbatch")) == 6 and len({_runner_of(r) for r in results}) == 6
    assert sorted(p.ledger_lines()) == sorted(r["job"]["id"] for r in results)


def test_a_backlog_beyond_the_free_slots_gets_more_runners_up_to_max_runners(pipeline, counted):
    p = pipeline({"default": {"slots": 2, "max_runners": 3, "idle_timeout": 3}})
    paths = [p.drop_ledger(f"o{n}", 2) for n in range(12)]
    p.run_all(paths, timeout=60)
    submissions = [report.runners_submitted for report in p.reports]
    assert sum(submissions) == len(counted("sbatch")) == 3     # 12 jobs want 6 runners of 2 slots
    assert submissions[0] == 3                            # in one cycle (the runner policy, README)
    runners = {p.result(path)["job"]["runner"] for path in paths}
    assert len(runners) == 3                              # all three took work
    assert sorted(p.ledger_lines()) == sorted(p.result(path)["job"]["id"] for path in paths)


def test_gpu_jobs_and_cpu_jobs_get_one_runner_each(pipeline, counted):
    p = pipeline({"default": {"slots": 2, "max_runners": 1, "idle_timeout": 3},
                  "gpu": {"gres": "gpu:2", "slots": 2, "max_runners": 1, "idle_timeout": 3}})
    gpu = [p.drop("gpu_env", f"g{n}", args={"seconds": 1}) for n in range(3)]
    cpu = [p.drop("gpu_env", f"c{n}", args={"seconds": 1}, **{"class": "default"}) for n in range(3)]
    p.run_all(gpu + cpu)
    sbatch = counted("sbatch")
    assert len(sbatch) == 2
    assert sorted("--gres=gpu:2" in call for call in sbatch) == [False, True]
    gpu_runners = {_runner_of(p.result(path)) for path in gpu}
    cpu_runners = {_runner_of(p.result(path)) for path in cpu}
    assert len(gpu_runners) == len(cpu_runners) == 1
    assert gpu_runners.pop().startswith("gpu-") and cpu_runners.pop().startswith("default-")
    assert {(p.root / "out" / f"g{n}").read_text().strip() for n in range(3)} <= {"0", "1"}
    assert {(p.root / "out" / f"c{n}").read_text().strip() for n in range(3)} == {"none"}


def test_two_jobs_at_once_in_one_runner_get_different_gpus(pipeline, counted):
    p = pipeline({"gpu": {"gres": "gpu:2", "slots": 2, "idle_timeout": 3}}, default_class="gpu")
    paths = [p.drop("gpu_env", f"g{n}", args={"seconds": 3}) for n in range(2)]
    p.run_all(paths)
    results = [p.result(path)["job"] for path in paths]
    assert results[0]["runner"] == results[1]["runner"]
    assert results[0]["start"] < results[1]["end"] and results[1]["start"] < results[0]["end"]
    assert sorted((p.root / "out" / f"g{n}").read_text().strip() for n in range(2)) == ["0", "1"]
    assert len(counted("sbatch")) == 1


@pytest.mark.parametrize("how", ["scancel", "killed", "warning"])
def test_a_runner_lost_mid_job_has_its_job_requeued_and_finished_once(pipeline, counted, slurm_cluster, how):
    p = pipeline({"default": {"slots": 1, "idle_timeout": 3, "time_limit": "10m"}}, heartbeat_timeout=60)
    path = p.drop_ledger("o", 6)
    p.run_until(lambda: p.started(path), 30, "the job started")
    job_id = p.job_id(path)
    first = p.claim(job_id)
    assert first["attempt"] == 1

    status = format_status(gather_status(p.config, LocalTransport()))
    row = next(line for line in status.splitlines() if first["runner"] in line)
    assert re.search(rf"{first['runner']}\s+default\s+{first['sched_id']}\s+running\s+0:(09|10):\d\d\s+1$",
                     row), status

    if how == "killed":          # the runner dies outright (as with its node): no goodbye
        alive = read_json(str(p.workspace / "runners" / f"{first['runner']}.alive.json"))
        os.kill(alive["pid"], signal.SIGKILL)
    else:                        # cancelled (SIGTERM), or Slurm's early warning (SIGUSR1)
        command = {"scancel": ["scancel", first["sched_id"]],
                   "warning": ["scancel", "--batch", "--signal=USR1", first["sched_id"]]}[how]
        assert slurm_cluster.run(*command).returncode == 0
    interruption = p.rerun_after_interruption(path, first, timeout=60)
    expected_reason = {"scancel": "got SIGTERM", "killed": "is gone", "warning": "got SIGUSR1"}[how]
    assert expected_reason in interruption["reason"]
    assert len(counted("sbatch")) == 2


def test_a_job_that_no_longer_fits_waits_for_a_fresh_runner(pipeline, counted):
    # 2 minutes, warned 50 s before the end: a fresh runner can give a job 70 s.  One
    # runner at a time: with more, the cycle that takes the second job asks for a fresh
    # runner at once, which may take it before the first runner looks (it looks when its
    # slot frees).
    p = pipeline({"default": {"slots": 1, "time_limit": "2m", "warn_seconds": 50, "idle_timeout": 3,
                              "max_runners": 1}})
    first = p.drop_ledger("a", 10)
    p.run_until(lambda: p.started(first), 30, "the first job started")
    time.sleep(6)
    second = p.drop_ledger("b", 1, expected_time="65s")   # more than the first runner has left
    p.run_all([first, second], timeout=60)
    one, two = p.result(first)["job"], p.result(second)["job"]
    assert one["status"] == two["status"] == "ok"
    assert one["runner"] != two["runner"]
    assert f"not starting {two['id']} here: it expects 65s" in p.runner_logs()[one["runner"]]
    assert "leaving for a fresh runner" in p.runner_logs()[one["runner"]]
    assert len(counted("sbatch")) == 2


def test_a_job_expecting_more_than_a_1_minute_runner_has_is_refused_not_run(pipeline, counted):
    p = pipeline({"default": {"slots": 2, "time_limit": "1m", "idle_timeout": 3}})
    short = p.drop_ledger("short", 1, expected_time="10s")
    long = p.drop_ledger("long", 1, expected_time="2m")
    p.run_all([short, long])
    assert p.result(short)["job"]["status"] == "ok"
    refused = p.result(long)["job"]
    assert refused["status"] == "error"
    assert "expected_time 2m exceeds what a runner of class 'default' can give a job" in refused["message"]
    assert p.ledger_lines() == [p.result(short)["job"]["id"]]      # only the short one ran
    sbatch = counted("sbatch")[0]     # (a loaded machine has seen a second runner submitted here)
    assert "--time=1" in sbatch and "--signal=B:USR1@30" in sbatch


def test_walltime_reached_mid_job_requeues_it(pipeline, counted, slurm_cluster):
    # No early warning: the runner works until Slurm ends it at its 1-minute limit (SIGTERM;
    # Slurm checks limits on a timer, so it comes up to ~30 s late).
    p = pipeline({"default": {"slots": 1, "time_limit": "1m", "warn_seconds": 0, "idle_timeout": 3}},
                 max_attempts=2)
    path = p.drop_ledger("o", 600)
    started = time.monotonic()
    p.run_until(lambda: p.started(path), 30, "the job started")
    job_id = p.job_id(path)
    first = p.claim(job_id)
    p.run_until(lambda: p.started(path, attempt=2), 150, "the job requeued and started again")
    walltime = time.monotonic() - started
    second = p.claim(job_id)
    assert second["attempt"] == 2 and second["runner"] != first["runner"]
    [interruption] = read_json(str(p.workspace / "jobs" / job_id / "interruptions.json"))
    assert interruption["reason"] == f"runner {first['runner']} got SIGTERM"
    assert 55 < walltime < 120
    # Interrupted again (cancelled): the second interruption is the last allowed.
    slurm_cluster.run("scancel", second["sched_id"])
    p.run_all([path], timeout=60)
    result = p.result(path)["job"]
    assert result["status"] == "error"
    assert result["message"].startswith("interrupted 2 times (last: runner %s got SIGTERM)" % second["runner"])
    assert p.ledger_lines() == []                         # no run completed


def test_a_job_that_fails_of_its_runner_s_stop_is_requeued_not_failed(pipeline, counted, slurm_cluster):
    """Slurm signals every process of an allocation at once, and what a job makes of the
    signal is its own: ``srun`` exits 1 when its step is cancelled, and so does a script
    that traps TERM.  Reaped before the runner heard of its own stop, such an end was the
    job's error result ("Remote command failed with return code 1"); it is an interruption."""
    p = pipeline({"default": {"slots": 1, "launch": "process", "idle_timeout": 3}}, max_attempts=2)
    path = p.drop("trap_fail", "o", args={"seconds": 600, "ledger": str(p.ledger)})
    p.run_until(lambda: p.started(path), 60, "the job started")
    job_id = p.job_id(path)
    first = p.claim(job_id)
    os.killpg(first["pgid"], signal.SIGTERM)        # the stop reaches the job first: it exits 1,
    time.sleep(0.05)                                # reaped at once; the runner's stop comes well within 2 s
    slurm_cluster.run("scancel", first["sched_id"])
    p.run_until(lambda: p.started(path, attempt=2), 90, "the job requeued and started again")
    assert not p.finished(path)
    [interruption] = read_json(str(p.workspace / "jobs" / job_id / "interruptions.json"))
    assert interruption["reason"] == f"runner {first['runner']} got SIGTERM"
    second = p.claim(job_id)
    slurm_cluster.run("scancel", second["sched_id"])
    p.run_all([path], timeout=60)
    result = p.result(path)["job"]
    assert result["status"] == "error"
    assert result["message"].startswith("interrupted 2 times (last: runner %s got SIGTERM)" % second["runner"])
    assert p.ledger_lines() == []


def test_a_failure_held_for_the_runner_s_stop_does_not_hold_its_place(pipeline, counted):
    """Under Slurm a failure is held 2 s in case the runner's stop caused it; its place
    stayed taken meanwhile, so a bystander waiting for it started 2 s late."""
    p = pipeline({"default": {"slots": 1, "max_runners": 1, "launch": "process", "idle_timeout": 5}})
    failing = p.drop("fail_after", "f", args={"seconds": 3})
    p.run_until(lambda: p.started(failing), 60, "the failing job started")
    bystander = p.drop_ledger("b", 0)
    p.run_all([failing, bystander], timeout=60)
    failed, ok = p.result(failing)["job"], p.result(bystander)["job"]
    assert failed["status"] == "error" and ok["status"] == "ok"
    # Results give whole seconds: a wait of 2 s or more shows as 2 or more.
    waited = datetime.fromisoformat(ok["start"]).timestamp() - datetime.fromisoformat(failed["end"]).timestamp()
    assert waited <= 1, f"the bystander started {waited:.0f} s after the job that failed had ended"


def test_cancel_while_running_and_while_queued_on_real_slurm(pipeline, counted):
    from dropbox_runner.verbs import request_cancel
    p = pipeline({"default": {"slots": 1, "max_runners": 1, "idle_timeout": 3}})
    first, second = p.drop_ledger("o1", 60), p.drop_ledger("o2", 60)
    p.run_until(lambda: p.started(first) or p.started(second), 60, "a job started")
    running, queued = (first, second) if p.started(first) else (second, first)
    running_id, queued_id = p.job_id(running), p.job_id(queued)
    request_cancel(p.config, [running.name, queued.name])
    p.run_all([running, queued], timeout=60)
    for path in (running, queued):
        block = p.result(path)["job"]
        assert block["status"] == "error" and block["message"] == "cancelled"
    assert p.ledger_lines() == []
    assert not p.claim(queued_id)                           # never started
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit()
                 and _runs_job(pid, running_id)]
    assert leftovers == []


def _runs_job(pid: str, job_id: str) -> bool:
    try:
        return f"DBR_JOB_ID={job_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
