"""The whole pipeline over the real SSH path: ``run_once`` with backend ssh against a
loopback sshd, the cluster side running as the unprivileged account, its runners started
as that account's local processes (scheduler local).

Connections and rsync runs are counted from sshd's own log.  A larger burst for the
figures in the notes: ``DBR_SSH_BURST=100 pytest -s tests/test_ssh_pipeline.py -k burst``.
"""
import os
import shutil
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from dropbox_runner.on_hpc.files import read_json
from helpers import wait_until
from sshsetup import TEMPLATES, CountingTransport, new_scratch, ssh_client_processes, write_config

from dropbox_runner import cli
from dropbox_runner.client import submit
from dropbox_runner.config import Config, load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.report import CycleReport
from dropbox_runner.submitter import run_once
from dropbox_runner.transport import TransportError, open_transport

BURST = int(os.environ.get("DBR_SSH_BURST", "20"))
CYCLE_PAUSE_SECONDS = 0.3
TIMEOUT_SECONDS = 180


@pytest.fixture
def cluster_folder(sshd):
    """The account's folder for one test; its runners are stopped and it is removed after."""
    folder = new_scratch(sshd)
    yield folder
    _stop_runners(folder / "workspace" / "runners")
    shutil.rmtree(folder, ignore_errors=True)


def _stop_runners(runners: Path) -> None:
    pids = []
    for alive in runners.glob("*.alive.json"):
        pid = (read_json(str(alive), {}) or {}).get("pid")
        runner_id = alive.name[: -len(".alive.json")]
        try:
            if pid and runner_id.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                os.kill(pid, signal.SIGTERM)
                pids.append(pid)
        except (OSError, ProcessLookupError):
            continue
    deadline = time.monotonic() + 15
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if Path(f"/proc/{pid}").exists()
                and not Path(f"/proc/{pid}/stat").read_text().split(") ")[-1].startswith("Z")]
        time.sleep(0.1)


def _config(tmp_path: Path, sshd, folder: Path, transfer: str = "rsync") -> Config:
    return load_config(write_config(
        tmp_path, sshd, folder, remote={"transfer": transfer},
        templates=str(TEMPLATES), grace_seconds=0,
        classes={"default": {"slots": 4, "idle_timeout": 5}},
        hpc_env={"workspace": f"{folder}/workspace", "scripts": f"{folder}/scripts",
                 "ledger": f"{folder}/ledger"}))


def _drop_jobs(tmp_path: Path, config: Config, count: int) -> list[Path]:
    (tmp_path / "inputs").mkdir(exist_ok=True)
    (tmp_path / "outputs").mkdir(exist_ok=True)
    files = []
    for number in range(count):
        text = tmp_path / "inputs" / f"in{number}.txt"
        text.write_text(f"hello number {number}\n")
        files.append(submit(config.dropbox, {
            "script": "upper", "args": {"label": f"job{number}"},
            "input_map": {"text": str(text)},
            "output_map": {"upper": str(tmp_path / "outputs" / f"out{number}.txt")}}))
    return files


@dataclass
class Cycle:
    report: CycleReport | None
    runs: int
    pushes: int
    pulls: int
    logins: int
    sessions: int
    seconds: float


def _cycle(config: Config, sshd, wrap=None) -> Cycle:
    """One cron-like cycle (a fresh transport, closed after), counted on both sides."""
    logins, sessions, started = sshd.logins(), len(sshd.sessions()), time.monotonic()
    transport = CountingTransport(open_transport(config))
    try:
        report = run_once(config, wrap(transport) if wrap else transport)
    finally:
        transport.close()
    return Cycle(report, transport.runs, transport.pushes, transport.pulls,
                 sshd.logins() - logins, len(sshd.sessions()) - sessions, time.monotonic() - started)


def _finished(config: Config, files: list[Path]) -> int:
    done = Dropbox(config.dropbox).scan().finished
    return sum(1 for path in files if path.name in done)


def _check_results(tmp_path: Path, config: Config, files: list[Path], folder: Path) -> None:
    """Every job ok with its output in place, and each run exactly once."""
    dropbox = Dropbox(config.dropbox)
    listing = dropbox.scan()
    assert not listing.new and not listing.submitted
    for number, path in enumerate(files):
        result = dropbox.read_result(path.name)
        assert result["job"]["status"] == "ok", result["job"]
        assert (tmp_path / "outputs" / f"out{number}.txt").read_text() == f"HELLO NUMBER {number}\n"
    ledger = (folder / "ledger").read_text().split()
    assert sorted(ledger) == sorted(f"job{number}" for number in range(len(files)))


@pytest.mark.parametrize("transfer", ["rsync", "sftp"])
def test_a_burst_of_jobs_over_ssh(tmp_path, sshd, cluster_folder, transfer):
    config = _config(tmp_path, sshd, cluster_folder, transfer)
    files = _drop_jobs(tmp_path, config, BURST)
    started = time.monotonic()
    cycles: list[Cycle] = []
    while _finished(config, files) < len(files):
        assert time.monotonic() - started < TIMEOUT_SECONDS, f"not done: {cycles[-1]}"
        cycles.append(_cycle(config, sshd))
        time.sleep(CYCLE_PAUSE_SECONDS)
    wall = time.monotonic() - started
    _check_results(tmp_path, config, files, cluster_folder)

    first = cycles[0]
    assert first.report.sent == BURST and first.pushes == 3     # the jobs at once, and the deploy's two
    for cycle in cycles:
        transfers = cycle.pushes + cycle.pulls
        if transfer == "rsync":
            # One login for commands, one for the rsync master when data moved; each command
            # and each rsync is one session on them.
            assert cycle.logins == 1 + (transfers > 0), cycle
            assert cycle.sessions == cycle.runs + transfers, cycle
        else:
            # SFTP rides on the command connection: one login, one sftp session at most.
            assert cycle.logins == 1, cycle
            assert cycle.sessions == cycle.runs + (transfers > 0), cycle
        assert cycle.pulls <= 1 and cycle.runs <= (3 if cycle is first else 2), cycle   # the deploy's compile
    assert all(cycle.runs == 1 for cycle in cycles[1:])
    wait_until(lambda: not ssh_client_processes(sshd.port))       # every cycle ended its master
    print(f"\n{BURST} jobs over loopback SSH ({transfer}): {len(cycles)} cycles in {wall:.1f}s; "
          f"logins {sum(c.logins for c in cycles)} (max {max(c.logins for c in cycles)} per cycle), "
          f"commands {sum(c.runs for c in cycles)}, transfers {sum(c.pushes + c.pulls for c in cycles)} "
          f"(pushes {sum(c.pushes for c in cycles)}, pulls {sum(c.pulls for c in cycles)}); "
          f"cycle time median {sorted(c.seconds for c in cycles)[len(cycles) // 2]:.2f}s")


class _StopBefore:
    """A transport that stops sshd just before its first call of one method."""

    def __init__(self, inner, sshd, method: str):
        self.inner, self.sshd, self.method, self.fired = inner, sshd, method, False

    def __getattr__(self, name):
        call = getattr(self.inner, name)
        if name != self.method or self.fired:
            return call

        def stop_then_call(*args, **kwargs):
            self.fired = True
            self.sshd.stop()
            return call(*args, **kwargs)
        return stop_then_call


def test_sshd_stopped_mid_cycle_loses_nothing_and_runs_nothing_twice(tmp_path, sshd, cluster_folder, caplog):
    config = _config(tmp_path, sshd, cluster_folder)
    files = _drop_jobs(tmp_path, config, 8)
    try:
        # The server goes away after the jobs were sent, before the queue command.
        with pytest.raises(TransportError):
            _cycle(config, sshd, lambda transport: _StopBefore(transport, sshd, "run"))
        listing = Dropbox(config.dropbox).scan()
        assert len(listing.submitted) == 8 and not listing.finished and not listing.new

        # While it is down, a cron cycle says so in one line and exits non-zero.
        assert cli.main(["once", "--config", str(config.source)]) == cli.EXIT_CLUSTER_DOWN
        assert "cluster unreachable, jobs wait for the next cycle" in caplog.text
    finally:
        sshd.start()

    # Later it goes away again just before finished outputs are pulled.
    started, cut_pull = time.monotonic(), True
    while _finished(config, files) < len(files):
        assert time.monotonic() - started < TIMEOUT_SECONDS
        stopper = []

        def wrap(transport, stopper=stopper):
            stopper.append(_StopBefore(transport, sshd, "pull"))
            return stopper[0]
        try:
            _cycle(config, sshd, wrap if cut_pull else None)
        except TransportError:
            assert stopper and stopper[0].fired
            cut_pull = False
            assert not Dropbox(config.dropbox).scan().finished
            sshd.start()
        time.sleep(CYCLE_PAUSE_SECONDS)
    assert not cut_pull
    _check_results(tmp_path, config, files, cluster_folder)


def test_the_watch_daemon_over_ssh(tmp_path, sshd, cluster_folder):
    """Drops are seen at once, results come back through the long-running wait, SIGTERM
    ends it cleanly; the head node sees a few connections, not a poll every few seconds."""
    import subprocess
    import sys
    config_path = write_config(tmp_path, sshd, cluster_folder, templates=str(TEMPLATES), grace_seconds=0,
                               tick="1h", classes={"default": {"slots": 2, "idle_timeout": 30}})
    config = load_config(config_path)
    (tmp_path / "out").mkdir()
    logins_before = sshd.logins()
    log_path = tmp_path / "watch.log"
    with open(log_path, "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "dropbox_runner.cli", "watch", "--config",
                                   str(config_path)], stdout=log, stderr=log)
    try:
        for number in range(3):
            path = submit(config.dropbox, {"script": "sleep", "args": {"seconds": 1}, "cache": False,
                                           "output_map": {"out": str(tmp_path / "out" / f"o{number}.txt")}})
            wait_until(lambda path=path: Path(f"{path}.finished").exists(), 30)
            assert Dropbox(config.dropbox).read_result(path.name)["job"]["status"] == "ok"
        # One command connection, one rsync master, one for the finish waiter: kept open.
        assert sshd.logins() - logins_before <= 4
    finally:
        daemon.send_signal(signal.SIGTERM)
        assert daemon.wait(timeout=60) == 0
    assert "stopped" in log_path.read_text()
