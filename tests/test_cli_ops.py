"""The command line as an operator meets it: options anywhere, the default config, one-line
errors with the path and their exit codes, readable logs, quiet idle cycles, status."""
from __future__ import annotations

import logging
import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from dropbox_runner.on_hpc.protocol import RunnerState
from dropbox_runner.on_hpc.sched_slurm import parse_squeue
from dropbox_runner.on_hpc.schedulers import RunnerInfo
from helpers import drain, drop, run_cli, wait_until, write_config

from dropbox_runner import cli
from dropbox_runner.config import ConfigError, load_config
from dropbox_runner.metrics import record_cycle
from dropbox_runner.status import format_status
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

ISO_LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}[+-]\d\d:\d\d (DEBUG|INFO|WARNING|ERROR) ")


@pytest.fixture(autouse=True)
def _restore_logging():
    """cli.main configures the root logger in this process: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _copy_job(tmp_path: Path, number: int = 1) -> dict:
    source = tmp_path / "inputs" / f"in{number}.txt"
    source.write_text(f"data {number}\n")
    return {"script": "copy", "input_map": {"src": str(source)},
            "output_map": {"dst": str(tmp_path / "outputs" / f"out{number}.txt")}}


def _no_traceback(done) -> None:
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1, done.stderr


# ------------------------------------------------------------------ options and the config path
def test_verbose_and_config_go_before_or_after_the_verb(config, tmp_path):
    path = str(tmp_path / "config.yaml")
    for argv in (["-v", "once", "--config", path], ["once", "-v", "--config", path],
                 ["--config", path, "once", "-v"], ["-c", path, "-v", "once"]):
        done = run_cli(*argv)
        assert done.returncode == 0, (argv, done.stderr)
        assert "cycle:" in done.stderr, argv          # -v shows even an idle cycle


def test_the_config_comes_from_the_environment_then_the_default_path(config, tmp_path, monkeypatch, capsys):
    env = dict(os.environ, DROPBOX_RUNNER_CONFIG=str(tmp_path / "config.yaml"))
    assert run_cli("once", env=env).returncode == 0
    monkeypatch.delenv("DROPBOX_RUNNER_CONFIG", raising=False)
    monkeypatch.setattr(cli, "DEFAULT_CONFIG", tmp_path / "etc" / "config.yaml")
    assert cli.main(["once"]) == cli.EXIT_USAGE
    error = capsys.readouterr().err
    assert str(tmp_path / "etc" / "config.yaml") in error and "DROPBOX_RUNNER_CONFIG" in error
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "config.yaml").write_text((tmp_path / "config.yaml").read_text())
    assert cli.main(["once"]) == cli.EXIT_OK


def test_every_verb_has_a_description_and_help_lists_the_exit_codes():
    parser = cli.build_parser()
    verbs = parser._subparsers._group_actions[0].choices
    assert set(verbs) >= {"once", "watch", "status", "list", "cancel", "resubmit", "cache", "check", "submit",
                          "schema", "trust-host", "deploy", "demo"}
    for name, sub in verbs.items():
        assert sub.description and len(sub.description) > 30, name
        for action in sub._actions:
            assert action.help, (name, action.dest)
    text = run_cli("--help").stdout
    for code in ("0", "1", "2", "4", "5", "70", "124"):
        assert re.search(rf"^\s+{code}\s+\w", text, re.M), code


# ------------------------------------------------------------------ one-line errors, exit codes
def test_submit_mistakes_are_one_line_with_the_path(config, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_copy_job(tmp_path)))
    missing_box = run_cli("submit", str(tmp_path / "no-box"), str(job))
    assert missing_box.returncode == 2 and str(tmp_path / "no-box") in missing_box.stderr
    _no_traceback(missing_box)
    missing_file = run_cli("submit", str(config.dropbox), str(tmp_path / "nope.yaml"))
    assert missing_file.returncode == 2 and "nope.yaml" in missing_file.stderr
    _no_traceback(missing_file)
    for text, expected in (("script: [unclosed", "not valid YAML"), ("- a\n- b\n", "a YAML mapping"),
                           ("script: x\ncolour: red\n", "unknown key 'colour'")):
        job.write_text(text)
        done = run_cli("submit", str(config.dropbox), str(job))
        assert done.returncode == 2 and expected in done.stderr and str(job) in done.stderr, done.stderr
        _no_traceback(done)
    assert [p.name for p in config.dropbox.iterdir()] == []     # nothing was dropped


def test_submit_name_wait_and_timeout(config, tmp_path):
    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump(_copy_job(tmp_path)))
    timed_out = run_cli("submit", str(config.dropbox), str(job), "--name", "mine", "--wait", "--timeout", "0.5",
                        "--period", "0.1")
    assert timed_out.returncode == 124 and "mine.job" in timed_out.stderr
    assert (config.dropbox / "mine.job").exists()                # the job stays in
    again = run_cli("submit", str(config.dropbox), str(job), "--name", "mine.job")
    assert again.returncode == 2 and "already exists" in again.stderr
    bad_name = run_cli("submit", str(config.dropbox), str(job), "--name", "../escape")
    assert bad_name.returncode == 2
    drain(config, ["mine.job"])
    # a stale result of the same name is refused too (it would be taken for the new job's)
    assert run_cli("submit", str(config.dropbox), str(job), "--name", "mine").returncode == 2
    assert run_cli("submit", str(config.dropbox), str(job), "--timeout", "3").returncode == 2   # needs --wait


def test_submit_wait_exits_5_for_an_error_result(config, tmp_path):
    failing = tmp_path / "fail.yaml"
    failing.write_text(yaml.safe_dump({"script": "no_such_template"}))
    waiter = subprocess.Popen([sys.executable, "-m", "dropbox_runner.cli", "submit", str(config.dropbox),
                               str(failing), "--name", "f", "--wait", "--period", "0.1", "--timeout", "60"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (config.dropbox / "f.job").exists(), what="the dropped job")
    run_once(config, LocalTransport())
    out, err = waiter.communicate(timeout=60)
    assert waiter.returncode == 5, err
    assert yaml.safe_load(out)["job"]["status"] == "error"


def test_cancel_and_resubmit_of_unknown_jobs_exit_5(config, tmp_path):
    path = str(tmp_path / "config.yaml")
    done = run_cli("cancel", "--config", path, "ghost")
    assert done.returncode == 5 and "ghost.job: no such job" in done.stdout
    done = run_cli("resubmit", "--config", path, "ghost")
    assert done.returncode == 5 and "no such job" in done.stdout


def test_an_internal_error_is_one_line_and_the_traceback_needs_v(monkeypatch, capsys):
    def broken():
        raise RuntimeError("boom")
    monkeypatch.setattr("dropbox_runner.schema.job_schema", broken)
    assert cli.main(["schema"]) == cli.EXIT_INTERNAL
    error = capsys.readouterr().err
    assert "internal error: RuntimeError: boom" in error and "Traceback" not in error
    assert cli.main(["schema", "-v"]) == cli.EXIT_INTERNAL
    assert "Traceback" in capsys.readouterr().err


def test_a_failing_cluster_command_is_exit_4_with_its_stderr(config, tmp_path):
    drop(config, "waits.job", _copy_job(tmp_path))
    broken = write_config(tmp_path, python="/nonexistent/python3")
    done = run_cli("once", "--config", str(broken))
    assert done.returncode == 4 and "/nonexistent/python3" in done.stderr


# ------------------------------------------------------------------ logs
def test_log_lines_are_iso_8601_with_the_offset_and_idle_cycles_are_quiet(config, tmp_path):
    path = str(tmp_path / "config.yaml")
    idle = run_cli("once", "--config", path)
    assert idle.returncode == 0 and idle.stderr == ""
    drop(config, "one.job", _copy_job(tmp_path))
    busy = run_cli("once", "--config", path)
    lines = busy.stderr.splitlines()
    assert lines and all(ISO_LINE.match(line) for line in lines), busy.stderr
    assert any("cycle: 1 taken" in line for line in lines)


def test_paramiko_tracebacks_stay_out_of_the_log_unless_verbose():
    from dropbox_runner.logsetup import configure
    configure(False)
    assert not logging.getLogger("paramiko.transport").isEnabledFor(logging.ERROR)
    configure(True)
    assert logging.getLogger("paramiko.transport").isEnabledFor(logging.WARNING)
    configure(False)


# ------------------------------------------------------------------ status
def test_status_never_deploys_shows_the_version_and_exits_1_when_unreachable(config, tmp_path):
    path = str(tmp_path / "config.yaml")
    done = run_cli("status", "--config", path)
    assert done.returncode == 0, done.stderr
    assert "dropbox-runner 0." in done.stdout and "not deployed" in done.stdout
    assert not list(Path(config.scripts).glob("on_hpc-*"))          # glob of a missing folder is empty too
    unreachable = write_config(tmp_path / "u", backend="ssh", scheduler="slurm",
                               remote={"host": "127.0.0.1", "port": 1, "transfer": "sftp", "connect_timeout": 5},
                               hpc_env={"workspace": "/w/ws", "scripts": "/w/scripts"})
    done = run_cli("status", "--config", str(unreachable))
    assert done.returncode == 1 and "unreachable" in done.stdout, done.stdout + done.stderr


def test_status_shows_squeues_pending_reason():
    listing = "101|dbr.tag.gpu-1|PENDING|1:00:00|Resources\n102|dbr.tag.gpu-2|RUNNING|59:00|None\n"
    found = parse_squeue(listing, "tag")
    assert found["gpu-1"] == RunnerInfo("gpu-1", "101", RunnerState.PENDING, 3600, "Resources")
    assert found["gpu-2"].reason == ""                        # a running job's "None" is no reason
    text = format_status({"version": "1", "dropbox": "/d", "jobs": {"waiting": 0, "submitted": 1, "finished": 0},
                          "oldest_waiting_seconds": None,
                          "cluster": {"counts": {}, "scheduler_ok": True, "runners": [
                              {"runner": "gpu-1", "class": "gpu", "sched_id": "101", "state": "pending",
                               "time_left": 3600, "jobs": 0, "reason": "Resources"}]}})
    assert re.search(r"gpu-1\s+gpu\s+101\s+pending\s+1:00:00\s+0\s+Resources", text), text


# ------------------------------------------------------------------ config sanity at load time
def test_config_problems_on_disk_are_reported_all_at_once_and_nothing_is_created(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({
        "dropbox": str(tmp_path / "dropbx"), "templates": str(tmp_path / "tmpl"),
        "metrics_file": str(tmp_path / "textfile" / "dbr.prom"),
        "classes": {"default": {"extra_args": ["--qos=normal", "--job-name=x", "-o", "/tmp/log", "--requeue",
                                               "--signal=USR2@10", "--parsable"]}},
    }))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    for expected in ("dropbox: " + str(tmp_path / "dropbx"), "templates: " + str(tmp_path / "tmpl"),
                     "metrics_file: the folder " + str(tmp_path / "textfile"), "'--job-name=x'", "'-o'",
                     "'--requeue'", "'--signal=USR2@10'", "'--parsable'"):
        assert expected in text, expected
    assert "--qos=normal" not in text
    done = run_cli("once", "--config", str(path))
    assert done.returncode == 2 and "config error" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "dropbx").exists()                  # a typo is never created


def test_grid_engine_extra_args_cannot_override_the_runners_qsub_options(tmp_path):
    (tmp_path / "box").mkdir()
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dropbox": str(tmp_path / "box"), "scheduler": "sge", "classes": {
        "default": {"extra_args": ["-P", "lab", "-N", "mine", "-r", "y", "-l", "h_vmem=1G"]}}}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert "'-N' would override" in text and "'-r' would override" in text
    assert "'-P'" not in text and "'-l'" not in text and "'lab'" not in text


@pytest.mark.parametrize("folder", ["/", "/etc", "/tmp", "/usr/local"])
def test_a_system_folder_is_never_a_dropbox(tmp_path, folder):
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump({"dropbox": folder}))
    with pytest.raises(ConfigError, match="is a system folder"):
        load_config(path)


def test_a_missing_or_unreadable_key_file_is_a_config_error_naming_it(tmp_path):
    (tmp_path / "box").mkdir()
    key = tmp_path / "id_ed25519"
    data = {"dropbox": str(tmp_path / "box"), "backend": "ssh", "scheduler": "slurm",
            "hpc_env": {"workspace": "/w/ws", "scripts": "/w/s"}, "remote": {"host": "h", "key_file": str(key)}}
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(ConfigError, match=f"remote.key_file: {key} does not exist"):
        load_config(path)
    key.write_text("secret")
    assert load_config(path).remote.key_file == key


# ------------------------------------------------------------------ metrics tell the truth
def _samples(text: str) -> dict[str, str]:
    return dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_metrics_are_whole_on_idle_cycles_readable_by_others_and_precise(tmp_path):
    (tmp_path / "textfile").mkdir()
    config = load_config(write_config(tmp_path, metrics_file=str(tmp_path / "textfile" / "dbr.prom")))
    drop(config, "one.job", _copy_job(tmp_path))
    drain(config, ["one.job"])
    before = time.time()
    report = run_once(config, LocalTransport())                   # idle: nothing new, nothing held
    assert report is not None and report.held == 0
    prom = tmp_path / "textfile" / "dbr.prom"
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    samples = _samples(prom.read_text())
    for series in ('dropbox_runner_dropbox_jobs{state="waiting"}', 'dropbox_runner_dropbox_jobs{state="submitted"}',
                   'dropbox_runner_cluster_jobs{state="queued"}', 'dropbox_runner_cluster_jobs{state="running"}',
                   'dropbox_runner_runners{class="default",state="pending"}',
                   'dropbox_runner_runners{class="gpu",state="running"}'):
        assert samples[series] == "0", series
    assert samples['dropbox_runner_dropbox_jobs{state="finished"}'] == "1"
    last = float(samples["dropbox_runner_last_success_timestamp_seconds"])
    assert before - 1 <= last <= time.time() + 1                  # %g would have said 1.79e+09
    record_cycle(config, None)
    assert _samples(prom.read_text())['dropbox_runner_cycles_total{outcome="failed"}'] == "1"


# ------------------------------------------------------------------ the demo
def test_the_demo_prints_whole_lines_and_whole_runner_ids_when_piped(tmp_path):
    done = run_cli("demo", "--dir", str(tmp_path / "demo"), "--jobs", "3", timeout=180)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "\r" not in done.stdout and done.stderr == ""          # no log lines glued onto progress
    runners = re.findall(r"\b(default-\d{8}T\d{6}-[0-9a-f]{6})\b", done.stdout)
    assert runners, done.stdout                                     # the whole id, not a common prefix
    error_row = next(line for line in done.stdout.splitlines() if " error " in line)
    assert error_row.rstrip().endswith("... does not exist")       # whole words, and the end that says why


def test_a_metrics_folder_that_vanishes_is_one_warning_not_a_failed_cycle(tmp_path, caplog):
    (tmp_path / "textfile").mkdir()
    config = load_config(write_config(tmp_path, metrics_file=str(tmp_path / "textfile" / "dbr.prom")))
    (tmp_path / "textfile").rmdir()
    drop(config, "one.job", _copy_job(tmp_path))
    results = drain(config, ["one.job"])
    assert results["one.job"]["job"]["status"] == "ok"
    assert "metrics not written to" in caplog.text
