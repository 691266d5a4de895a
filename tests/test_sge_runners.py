"""Runners as real Grid Engine jobs: the pipeline with ``scheduler: sge`` against the
single-node cell of the ``sge_cluster`` fixture (Debian's Son of Grid Engine 8.1.9), on the
local backend and through the real sshd as the unprivileged cluster account.

``qsub`` and ``qstat`` are wrapped by counting shims first on PATH, so the tests count every
call the cycles and the runners make.  These tests never skip.
"""
from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import tempfile
import time
from pathlib import Path

import pytest
from dropbox_runner.on_hpc.files import read_json
from helpers import wait_until
from sshsetup import check_burst_ran_once, cycle_until_finished, drop_burst, new_scratch, write_config
from test_slurm_runners import Pipeline, _kill_jobs_of, _runner_of, _running

from dropbox_runner.config import load_config
from dropbox_runner.status import format_status, gather_status
from dropbox_runner.transport.local import LocalTransport

TEMPLATES = Path(__file__).parent / "templates"
BURST = int(os.environ.get("DBR_SGE_SSH_BURST", "20"))
# One line per call, "<who> <argv>" (who: the Grid Engine job id of a runner, or -).
SHIM = '#!/bin/sh\nprintf \'%s %s\\n\' "${{JOB_ID:--}}" "$*" >> {log}\nexec {real} "$@"\n'


def _shims(folder: Path, logs: Path) -> None:
    for program in ("qsub", "qstat", "qdel"):
        (folder / program).write_text(SHIM.format(log=logs / f"{program}.calls", real=shutil.which(program)))
        (folder / program).chmod(0o755)


def _calls(logs: Path, program: str, who: str | None = None) -> list[str]:
    """``who``: "-" for the cycles' calls, "runner" for calls made inside runners."""
    path = logs / f"{program}.calls"
    lines = path.read_text().splitlines() if path.exists() else []
    if who == "runner":
        return [line for line in lines if not line.startswith("- ")]
    return lines if who is None else [line for line in lines if line.startswith(who + " ")]


@pytest.fixture
def counted(tmp_path, monkeypatch, sge_cluster):
    """qsub, qstat and qdel wrapped by counting shims; the cell's environment set."""
    shims = tmp_path / "shims"
    shims.mkdir()
    _shims(shims, tmp_path)
    monkeypatch.setenv("PATH", f"{shims}:{os.environ['PATH']}")
    for key, value in sge_cluster.env_vars().items():
        monkeypatch.setenv(key, value)
    return lambda program, who=None: _calls(tmp_path, program, who)


@pytest.fixture
def pipeline(tmp_path, counted, sge_cluster):
    made = []

    def make(classes: dict, **settings) -> Pipeline:
        # A space in every path qsub is given.  (A colon, which -o would read as "host:",
        # cannot be tried here: the deployed code's PYTHONPATH could not hold it either.)
        made.append(Pipeline(tmp_path / f"p {len(made)}", classes, scheduler="sge", **settings))
        return made[-1]

    yield make
    sge_cluster.delete_all()
    sge_cluster.wait_idle(60)
    for p in made:
        _kill_jobs_of(p.config.submitter_id)


def _qstat_of(sge_cluster, sched_id: str) -> str:
    return sge_cluster.run("qstat", "-j", sched_id).stdout


# ------------------------------------------------------------------------------ the tests
def test_a_burst_of_50_jobs_gets_exactly_one_qsub(pipeline, counted):
    p = pipeline({"default": {"slots": 4, "max_runners": 1, "idle_timeout": 3, "time_limit": "10m"}})
    paths = [p.drop_ledger(f"o{n}", 0) for n in range(50)]
    elapsed = p.run_all(paths, timeout=120)
    results = [p.result(path) for path in paths]
    assert [r["job"]["status"] for r in results] == ["ok"] * 50
    assert len({_runner_of(r) for r in results}) == 1
    [qsub] = counted("qsub")
    assert " -N dbr." in qsub and "-l h_rt=600,s_rt=540" in qsub
    assert len(counted("qstat", "-")) == p.cycles          # one listing per cycle
    assert counted("qstat", "runner") == []                # a runner asks Grid Engine nothing
    assert sorted(p.ledger_lines()) == sorted(r["job"]["id"] for r in results)    # each ran once
    print(f"50 jobs on Grid Engine: {elapsed:.1f}s, {p.cycles} cycles, 1 qsub, {len(counted('qstat'))} qstat")


@pytest.mark.parametrize("how", ["qdel", "killed"])
def test_a_runner_lost_mid_job_has_its_job_requeued_and_finished_once(pipeline, counted, sge_cluster, how):
    p = pipeline({"default": {"slots": 1, "idle_timeout": 3, "time_limit": "10m"}}, heartbeat_timeout=60)
    path = p.drop_ledger("o", 6)
    p.run_until(lambda: p.started(path), 60, "the job started")
    job_id = p.job_id(path)
    first = p.claim(job_id)
    assert first["attempt"] == 1
    sched_id = first["sched_id"]
    assert re.search(r"(?m)^job_name:\s+dbr\.", _qstat_of(sge_cluster, sched_id))   # the runner's own job id
    # status: the runner with its Grid Engine job id, running, its h_rt less the time it ran
    status = format_status(gather_status(p.config, LocalTransport()))
    row = next(line for line in status.splitlines() if first["runner"] in line)
    assert re.search(rf"{first['runner']}\s+default\s+{sched_id}\s+running\s+0:(09|10):\d\d\s+1$", row), status
    if how == "killed":          # the runner dies outright (as with its host): no goodbye
        alive = read_json(str(p.workspace / "runners" / f"{first['runner']}.alive.json"))
        os.kill(alive["pid"], signal.SIGKILL)
    else:
        assert sge_cluster.run("qdel", sched_id).returncode == 0
    interruption = p.rerun_after_interruption(path, first, timeout=90)
    # qdel ends a job with SIGKILL (no terminate_method, no -notify): the runner is gone.
    assert f"runner {first['runner']} is gone" in interruption["reason"]
    assert len(counted("qsub")) == 2


def test_s_rt_warns_the_runner_command_itself_with_sigusr1(sge_cluster, tmp_path):
    """The warning the runner relies on: past ``s_rt`` Grid Engine signals the job's command
    (no shell in between with ``-b y -shell n``), which can catch it and end cleanly."""
    out = Path(tempfile.mkdtemp(prefix="dbr-sge-srt-", dir="/tmp"))
    try:
        marker, script = out / "warned", out / "warned.py"
        script.write_text("import signal, sys, time\n"
                          f"signal.signal(signal.SIGUSR1, lambda *a: (open({str(marker)!r}, 'w'), sys.exit(0)))\n"
                          "time.sleep(120)\n")
        started = time.monotonic()
        proc = sge_cluster.run("qsub", "-terse", "-b", "y", "-shell", "n", "-o", out / "log", "-j", "y",
                               "-l", "h_rt=60,s_rt=3", shutil.which("python3"), script)
        assert proc.returncode == 0, proc.stderr
        wait_until(marker.exists, 60, 0.25, "the job's SIGUSR1 handler, past s_rt")
        assert 3 <= time.monotonic() - started < 60
        sge_cluster.wait_idle(30)
    finally:
        shutil.rmtree(out, ignore_errors=True)


def test_cancel_pending_deletes_only_runners_still_waiting(sge_cluster, counted, tmp_path):
    """The surplus cancel of the runner policy, made safe without "qdel only if pending":
    hold, list, delete what still waits, release what started."""
    from dropbox_runner.on_hpc.jobstore import JobStore
    from dropbox_runner.on_hpc.sched_sge import GridEngineConnector

    def qsub(name, *extra):
        proc = sge_cluster.run("qsub", "-terse", "-b", "y", "-N", name, "-o", "/dev/null", "-j", "y",
                               *extra, "/bin/sleep", "120")
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    def states():
        listing = sge_cluster.run("qstat", "-xml", timeout=15).stdout
        return {job: state for job, state in re.findall(
            r"<JB_job_number>(\d+)</JB_job_number>.*?<state>(\w+)</state>", listing, re.S)}

    running = qsub("dbr.test.running")
    later = time.strftime("%Y%m%d%H%M", time.localtime(time.time() + 3600))
    waiting = qsub("dbr.test.waiting", "-a", later)
    wait_until(lambda: states().get(running) == "r", 60, 0.25, "the first job running")
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    assert GridEngineConnector(store).cancel_pending([running, waiting]) == [waiting]
    wait_until(lambda: waiting not in states(), 30, 0.25, "the waiting job deleted")
    assert states()[running] == "r"                # still running, its hold released
    sge_cluster.delete_all()


def test_a_runner_past_its_h_rt_warning_hands_its_jobs_back(pipeline, counted, sge_cluster):
    # h_rt 1 minute, warned 30 s before: s_rt=30.  The job would take 10 minutes.
    p = pipeline({"default": {"slots": 1, "time_limit": "1m", "warn_seconds": 30, "idle_timeout": 3}},
                 max_attempts=3)
    path = p.drop_ledger("o", 600)
    started = time.monotonic()
    p.run_until(lambda: p.started(path), 60, "the job started")
    job_id = p.job_id(path)
    first = p.claim(job_id)
    p.run_until(lambda: p.started(path, attempt=2), 120, "the job handed back and started again")
    handed_back = time.monotonic() - started
    [interruption] = read_json(str(p.workspace / "jobs" / job_id / "interruptions.json"))
    # Whichever comes first: Grid Engine's SIGUSR1 at s_rt, or the runner's own clock at
    # the same moment; either way the job is handed back, not lost at h_rt.
    assert interruption["reason"] in (f"runner {first['runner']} got SIGUSR1",
                                      f"runner {first['runner']} reached its time limit less 30s")
    assert 25 < handed_back < 60 + 30
    log = p.runner_logs()[first["runner"]]
    assert f"interrupted {job_id}" in log or job_id in log
    assert p.ledger_lines() == []
    [qsub, _] = counted("qsub")
    assert "-l h_rt=60,s_rt=30" in qsub


def test_h_rt_reached_without_a_warning_requeues_the_job(pipeline, counted):
    # warn_seconds 0: no s_rt, so Grid Engine kills the runner outright at its 1-minute h_rt.
    p = pipeline({"default": {"slots": 1, "time_limit": "1m", "warn_seconds": 0, "idle_timeout": 3}})
    path = p.drop_ledger("o", 600)
    started = time.monotonic()
    p.run_until(lambda: p.started(path), 60, "the job started")
    first = p.claim(p.job_id(path))
    p.run_until(lambda: p.started(path, attempt=2), 150, "the job requeued and started again")
    walltime = time.monotonic() - started
    [interruption] = read_json(str(p.workspace / "jobs" / p.job_id(path) / "interruptions.json"))
    assert interruption["reason"].startswith(f"runner {first['runner']} is gone (record ")
    assert " s old, heartbeat " in interruption["reason"]          # killed outright: its files stay
    assert 55 < walltime < 130
    assert not _running(first["pgid"]) and p.ledger_lines() == []
    qsub = counted("qsub")[0]
    assert "-l h_rt=60 " in qsub and "s_rt" not in qsub


def test_a_failing_qstat_keeps_the_last_known_state(pipeline, counted, sge_cluster, monkeypatch):
    p = pipeline({"default": {"slots": 1, "idle_timeout": 3, "time_limit": "10m"}})
    path = p.drop_ledger("o", 8)
    p.run_until(lambda: p.started(path), 60, "the job started")
    runner = p.claim(p.job_id(path))["runner"]
    # qstat now reaches no qmaster (a port nothing listens on): the cycle must neither
    # requeue the job nor submit another runner on the strength of a missing answer.
    monkeypatch.setenv("SGE_QMASTER_PORT", "1")
    report = p.cycle()
    assert any("scheduler unavailable" in error for error in report.cluster_errors), report.cluster_errors
    assert [r["runner"] for r in report.runners] == [runner]
    assert report.requeued == 0 and report.runners_submitted == 0
    monkeypatch.setenv("SGE_QMASTER_PORT", str(sge_cluster.qmaster_port))
    p.run_all([path], timeout=90)
    result = p.result(path)["job"]
    assert result["status"] == "ok" and result["attempts"] == 1 and result["runner"] == runner
    assert len(counted("qsub")) == 1


def test_a_runner_grid_engine_cannot_start_is_deleted_and_the_operator_told(pipeline, counted, sge_cluster):
    """A runner in error state (Eqw) would stay queued for ever while every cycle submitted
    another failing alike: each cycle's listing deletes it and says why, and the job waits."""
    p = pipeline({"default": {"slots": 1, "idle_timeout": 3, "time_limit": "10m",
                              "extra_args": ["-i", "/nonexistent/dbr-sge-test"]}})   # a stdin file that is not there
    path = p.drop_ledger("o", 0)

    def reported():
        return [error for error in p.cycle().cluster_errors if "in error state; deleted it" in error]

    [said] = wait_until(reported, 90, 0.5, "a runner in error state reported")
    assert "can't open /nonexistent/dbr-sge-test" in said
    for _ in range(2):          # the next runners fail alike: each deleted, never a pile
        wait_until(reported, 90, 0.5, "the next runner in error state reported")
        listed = sge_cluster.run("qstat", "-u", "*").stdout
        assert listed.count("Eqw") <= 1, listed
    assert not p.finished(path) and p.cycle().states == {"queued": 1}     # the job waits, not failed
    assert len(counted("qdel", "-")) >= 3


def test_gpu_jobs_share_out_the_gpus_their_runner_was_bound_to(pipeline, counted):
    # gpu.q's starter method binds both GPUs (CUDA_VISIBLE_DEVICES=0,1), as a site's would.
    p = pipeline({"default": {"queue": "all.q", "slots": 2, "idle_timeout": 3},
                  "gpu": {"queue": "gpu.q", "gpus": 2, "slots": 2, "idle_timeout": 3}})
    gpu = [p.drop("gpu_env", f"g{n}", args={"seconds": 3}) for n in range(2)]
    cpu = [p.drop("gpu_env", f"c{n}", args={"seconds": 0}, **{"class": "default"}) for n in range(2)]
    p.run_all(gpu + cpu, timeout=90)
    one, two = (p.result(path)["job"] for path in gpu)
    assert one["runner"] == two["runner"] and one["runner"].startswith("gpu-")
    assert one["start"] < two["end"] and two["start"] < one["end"]          # at once
    assert sorted((p.root / "out" / f"g{n}").read_text().strip() for n in range(2)) == ["0", "1"]
    assert {(p.root / "out" / f"c{n}").read_text().strip() for n in range(2)} == {"none"}
    qsubs = counted("qsub")
    assert len(qsubs) == 2 and sorted("-l gpu=2" in call for call in qsubs) == [False, True]


# ------------------------------------------------------------------------------ through sshd
@pytest.fixture
def counting_python(sge_sshd):
    """A python3 for the account whose PATH starts with counting qsub/qstat shims."""
    folder = Path(tempfile.mkdtemp(prefix="dbr-shims-", dir="/tmp"))
    folder.chmod(0o755)
    account = pwd.getpwnam(sge_sshd.user)
    logs = folder / "calls"
    logs.mkdir()
    os.chown(logs, account.pw_uid, account.pw_gid)
    _shims(folder, logs)
    python = folder / "python3"
    python.write_text(f'#!/bin/sh\nPATH={folder}:$PATH exec /usr/bin/python3 "$@"\n')
    python.chmod(0o755)
    yield python, lambda program, who=None: _calls(logs, program, who)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def scratch(sge_sshd, sge_cluster):
    folder = new_scratch(sge_sshd)
    yield folder
    sge_cluster.delete_all()
    sge_cluster.wait_idle(60)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_burst_through_sshd_and_grid_engine(tmp_path, sge_sshd, scratch, counting_python):
    python, calls = counting_python
    config = load_config(write_config(
        tmp_path, sge_sshd, scratch, templates=str(TEMPLATES), grace_seconds=0,
        scheduler="sge", python=str(python),
        classes={"default": {"queue": "all.q", "slots": 4, "max_runners": 1, "idle_timeout": 3,
                             "time_limit": "10m"}},
        hpc_env={"workspace": f"{scratch}/workspace", "scripts": f"{scratch}/scripts",
                 "ledger": f"{scratch}/ledger"}))
    files = drop_burst(config, tmp_path / "out", BURST)
    logins_before, sessions_before = sge_sshd.logins(), len(sge_sshd.sessions())
    cost = cycle_until_finished(config, files, timeout=150)
    wall, cycles, commands = cost.wall, cost.cycles, cost.commands
    remote_commands, transfers = cost.remote_commands, cost.transfers

    check_burst_ran_once(config, files, tmp_path / "out", scratch, sge_sshd.user)
    [qsub] = calls("qsub", "-")                                 # one qsub, from the head node
    assert "-q all.q" in qsub and calls("qsub", "runner") == []
    assert len(calls("qstat", "-")) == commands <= cycles       # one listing per cycle that ran on_hpc
    assert calls("qstat", "runner") == []
    print(f"\n{BURST} jobs through sshd and Grid Engine: {wall:.1f}s, {cycles} cycles, 1 qsub, "
          f"{len(calls('qstat'))} qstat, {sge_sshd.logins() - logins_before} SSH logins, "
          f"{len(sge_sshd.sessions()) - sessions_before} sessions, {remote_commands} remote commands, "
          f"{transfers} rsync runs")
