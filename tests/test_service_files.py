"""The cron file, its wrapper and the systemd unit, as an operator installs them: from a
virtual environment, under cron's bare environment, with failures reaching cron's mail
once and the log rotated."""
from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import yaml
from helpers import write_config

from dropbox_runner.cronjob import rotate

ROOT = Path(__file__).resolve().parent.parent
CRON_FILE = ROOT / "cron" / "dropbox-runner"
UNIT = ROOT / "cron" / "dropbox-runner.service"
DOCUMENTED_VENV = "/opt/dropbox-runner/venv/bin/"
# What cron gives a job on Debian: no login shell, no venv on PATH.
CRON_ENV = {"PATH": "/usr/bin:/bin", "HOME": "/root", "SHELL": "/bin/sh", "LOGNAME": "root"}


def _installed(program: str) -> str:
    """The program as installed beside the interpreter running the tests (the venv's bin)."""
    path = Path(sys.executable).parent / program
    assert path.exists(), f"{path}: the tests run from an install that has no {program}"
    return str(path)


def _cron_line() -> list[str]:
    lines = [line for line in CRON_FILE.read_text().splitlines()
             if line.strip() and not line.startswith("#") and "=" not in line.split()[0]]
    assert len(lines) == 1, lines
    return lines[0].split()


def test_the_cron_file_is_read_by_debians_cron():
    assert re.fullmatch(r"[A-Za-z0-9_-]+", CRON_FILE.name)          # run-parts' rule: no dot
    fields = _cron_line()
    assert fields[:5] == ["*"] * 5 and fields[5] == "submitter"     # /etc/cron.d has a user field
    assert fields[6] == DOCUMENTED_VENV + "dropbox-runner-cron"


def _run_wrapper(config: Path, log: Path) -> subprocess.CompletedProcess:
    return subprocess.run([_installed("dropbox-runner-cron"), str(config), str(log)], env=CRON_ENV,
                          capture_output=True, text=True, timeout=120)


def test_the_cron_wrapper_runs_cycles_from_a_venv_under_crons_environment(tmp_path):
    config = write_config(tmp_path)
    data = yaml.safe_load(config.read_text())
    (tmp_path / "inputs" / "in.txt").write_text("hello\n")
    job = {"script": "copy", "input_map": {"src": str(tmp_path / "inputs" / "in.txt")},
           "output_map": {"dst": str(tmp_path / "outputs" / "out.txt")}}
    (Path(data["dropbox"]) / "one.job").write_text(yaml.safe_dump(job))
    log = tmp_path / "logs" / "cron.log"
    for _ in range(60):
        done = _run_wrapper(config, log)
        assert done.returncode == 0 and done.stdout == "" and done.stderr == "", done   # no mail when all is well
        if (Path(data["dropbox"]) / "one.job.finished").exists():
            break
    assert (tmp_path / "outputs" / "out.txt").read_text() == "hello\n"
    assert "one.job: taken" in log.read_text()


def test_cron_mails_the_first_failure_and_the_recovery_only(tmp_path):
    config = write_config(tmp_path)
    good = config.read_text()
    config.write_text(good + "colour: red\n")
    log = tmp_path / "cron.log"
    first = _run_wrapper(config, log)
    assert first.returncode == 2
    assert "failed with exit 2" in first.stderr and "colour: unknown key" in first.stderr and str(log) in first.stderr
    again = _run_wrapper(config, log)
    assert again.returncode == 2 and again.stderr == ""             # the same failure: no second mail
    assert log.read_text().count("colour: unknown key") == 2        # ...but the log has every run
    config.write_text(good)
    back = _run_wrapper(config, log)
    assert back.returncode == 0 and "succeed again" in back.stderr
    quiet = _run_wrapper(config, log)
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_the_wrapper_rotates_its_log(tmp_path):
    log = tmp_path / "cron.log"
    for number in range(8):
        log.write_text(f"run {number}\n" * 100)
        rotate(log, max_bytes=100, keep=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cron.log.1", "cron.log.2", "cron.log.3"]
    assert log.with_name("cron.log.1").read_text().startswith("run 7")
    config = write_config(tmp_path / "c")
    log.write_text("x" * 5000)
    done = subprocess.run([_installed("dropbox-runner-cron"), "--max-log-bytes", "1000", str(config), str(log)],
                          env=CRON_ENV, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert log.with_name("cron.log.1").read_text() == "x" * 5000 and log.stat().st_size < 1000


def test_the_systemd_unit_verifies(tmp_path):
    text = UNIT.read_text()
    assert f"ExecStart={DOCUMENTED_VENV}dropbox-runner watch" in text
    # systemd-analyze checks that the program exists: point it at this install's
    unit = tmp_path / "dropbox-runner.service"
    unit.write_text(text.replace(DOCUMENTED_VENV + "dropbox-runner", _installed("dropbox-runner")))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True, timeout=60)
    problems = [line for line in (done.stdout + done.stderr).splitlines() if "dropbox-runner" in line]
    assert done.returncode == 0 and not problems, done.stdout + done.stderr
