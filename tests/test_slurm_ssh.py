"""The production path end to end: backend ssh to a loopback sshd, scheduler slurm, runners
as real Slurm jobs of the unprivileged cluster account.

``config.python`` is a wrapper that puts counting ``sbatch``/``squeue`` shims first on the
account's PATH, so the cycle's and the runners' calls are counted.  For the figures in the
notes: ``DBR_SLURM_SSH_BURST=100 pytest -s tests/test_slurm_ssh.py``.
"""
from __future__ import annotations

import json
import os
import pwd
import shutil
import tempfile
from pathlib import Path

import pytest
from sshsetup import check_burst_ran_once, cycle_until_finished, drop_burst, new_scratch, write_config

from dropbox_runner.config import load_config

TEMPLATES = Path(__file__).parent / "templates"
BURST = int(os.environ.get("DBR_SLURM_SSH_BURST", "20"))
SHIM = '#!/bin/sh\nprintf \'%s\\n\' "${{SLURM_JOB_ID:--}}" >> {log}\nexec {real} "$@"\n'


@pytest.fixture
def counting_python(sshd_server):
    """A python3 for the account whose PATH starts with counting Slurm shims."""
    folder = Path(tempfile.mkdtemp(prefix="dbr-shims-", dir="/tmp"))
    folder.chmod(0o755)
    account = pwd.getpwnam(sshd_server.user)
    logs = folder / "calls"
    logs.mkdir()
    os.chown(logs, account.pw_uid, account.pw_gid)
    for program in ("sbatch", "squeue"):
        (folder / program).write_text(SHIM.format(log=logs / program, real=shutil.which(program)))
        (folder / program).chmod(0o755)
    python = folder / "python3"
    python.write_text(f'#!/bin/sh\nPATH={folder}:$PATH exec /usr/bin/python3 "$@"\n')
    python.chmod(0o755)

    def calls(program: str) -> list[str]:
        path = logs / program
        return path.read_text().split() if path.exists() else []

    yield python, calls
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def scratch(sshd_server, slurm_cluster):
    folder = new_scratch(sshd_server)
    yield folder
    slurm_cluster.run("scancel", "-u", sshd_server.user)
    slurm_cluster.wait_idle(60)
    shutil.rmtree(folder, ignore_errors=True)


def test_a_burst_through_sshd_and_slurm(tmp_path, sshd_server, slurm_cluster, scratch, counting_python):
    python, calls = counting_python
    config = load_config(write_config(
        tmp_path, sshd_server, scratch, templates=str(TEMPLATES), grace_seconds=0,
        scheduler="slurm", python=str(python),
        classes={"default": {"slots": 4, "max_runners": 1, "idle_timeout": 3, "time_limit": "10m"}},
        hpc_env={"workspace": f"{scratch}/workspace", "scripts": f"{scratch}/scripts",
                 "ledger": f"{scratch}/ledger"}))
    files = drop_burst(config, tmp_path / "out", BURST)
    logins_before, sessions_before = sshd_server.logins(), len(sshd_server.sessions())
    cost = cycle_until_finished(config, files, timeout=120)
    wall, cycles, commands = cost.wall, cost.cycles, cost.commands
    remote_commands, transfers = cost.remote_commands, cost.transfers

    check_burst_ran_once(config, files, tmp_path / "out", scratch, sshd_server.user)
    sbatch, squeue = calls("sbatch"), calls("squeue")
    assert sbatch == ["-"]                                    # one sbatch, from the head node
    assert squeue.count("-") == commands <= cycles            # one per cycle that ran on_hpc
    assert len(squeue) - squeue.count("-") == 1               # one in the runner, for its time
    # The first cycle: on_hpc serve (refused once for want of a deploy, then run, answering
    # early and then the cycle's own call) and the deploy's compile; every later one: the
    # cycle's call alone.
    runs_per_cycle = cost.runs_per_cycle
    assert runs_per_cycle[0] == 3 and set(runs_per_cycle[1:]) <= {1}, runs_per_cycle
    figures = {"jobs": BURST, "wall_s": round(wall, 2), "cycles": cycles, "sbatch": len(sbatch),
               "squeue": len(squeue), "ssh_logins": sshd_server.logins() - logins_before,
               "ssh_sessions": len(sshd_server.sessions()) - sessions_before,
               "remote_commands": remote_commands, "rsync_runs": transfers}
    if os.environ.get("DBR_BENCH_OUT"):          # bench/run.py takes its figures from here
        Path(os.environ["DBR_BENCH_OUT"]).write_text(json.dumps(figures))
    print(f"\n{BURST} jobs through sshd and Slurm: {wall:.1f}s, {cycles} cycles, "
          f"sbatch {len(sbatch)}, squeue {len(squeue)} ({squeue.count('-')} by cycles, "
          f"{len(squeue) - squeue.count('-')} by the runner)")
