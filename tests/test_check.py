"""`dropbox-runner check` against the real sshd and Slurm: a good set-up passes every line,
and each set-up mistake an operator can make is found by its own line, with a fix."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import yaml
from helpers import run_cli
from sshsetup import new_scratch, write_config

from dropbox_runner.check import format_checks, run_checks

TEMPLATES = Path(__file__).parent / "templates"


@pytest.fixture
def setup(tmp_path, sshd_server, slurm_cluster):
    """A good ssh + slurm config, and a way to write variants of it."""
    scratch = new_scratch(sshd_server)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)
    (tmp_path / "textfile").mkdir()

    def variant(remote=None, **settings) -> Path:
        values = dict(scheduler="slurm", templates=str(templates), metrics_file=str(tmp_path / "textfile" / "d.prom"),
                      classes={"default": {"slots": 2}, "gpu": {"partition": "debug", "gres": "gpu:1"}})
        values.update(settings)
        return write_config(tmp_path, sshd_server, scratch, remote, **values)

    yield variant, tmp_path
    shutil.rmtree(scratch, ignore_errors=True)


def _failed(results) -> dict[str, str]:
    return {result.name: f"{result.detail} | fix: {result.fix}" for result in results if not result.ok}


def test_a_good_setup_passes_every_check_and_exits_0(setup):
    variant, _ = setup
    path = variant()
    done = run_cli("check", "--config", str(path))
    assert done.returncode == 0, done.stdout + done.stderr
    for name in ("config", "dropbox", "state_dir", "metrics folder", "templates", "key file", "host key", "login",
                 "remote python", "workspace", "rsync", "sbatch", "squeue", "class default", "class gpu"):
        assert f"ok    {name}:" in done.stdout, name
    assert "FAIL" not in done.stdout


def test_local_mistakes_each_found_with_a_fix(setup):
    variant, root = setup
    (root / "templates" / "broken.template").write_text("echo <<label|nosuchfilter>>\n")
    path = variant()
    (root / "dropbox").chmod(0o777)
    failed = _failed(run_checks(path))
    assert set(failed) == {"dropbox", "templates"}, failed
    assert "chmod o-w" in failed["dropbox"] and "broken" in failed["templates"]
    (root / "dropbox").chmod(0o755)
    shutil.rmtree(root / "textfile")
    shutil.rmtree(root / "dropbox")
    failed = _failed(run_checks(variant(dropbox=str(root / "dropbx"))))
    assert {"dropbox", "metrics folder"} <= set(failed) and not {"config", "state_dir"} & set(failed), failed
    assert "mkdir -p" in failed["dropbox"]
    failed = _failed(run_checks(variant(dropbox="/etc")))
    assert "system folder" in failed["dropbox"], failed
    assert not (root / "dropbx").exists()                # check creates nothing


def test_a_config_that_does_not_load_fails_with_every_problem(setup):
    variant, _ = setup
    done = run_cli("check", "--config", str(variant(max_attempts="lots", colour="red")))
    assert done.returncode == 5
    assert "FAIL  config:" in done.stdout and "colour: unknown key" in done.stdout and "max_attempts" in done.stdout


def test_key_mistakes(setup, sshd_server):
    variant, root = setup
    loose = root / "loose_key"
    shutil.copy(sshd_server.key_file, loose)
    loose.chmod(0o644)
    failed = _failed(run_checks(variant(remote={"key_file": str(loose)})))
    assert "key file" in failed and "chmod 600" in failed["key file"], failed
    failed = _failed(run_checks(variant(remote={"key_file": str(root / "no_such_key")})))
    assert set(failed) == {"key file"}, failed


def test_an_untrusted_host_key_is_found_and_trust_host_is_the_fix(setup):
    variant, root = setup
    empty = root / "known_hosts_empty"
    empty.write_text("")
    failed = _failed(run_checks(variant(remote={"known_hosts": str(empty)})))
    assert set(failed) == {"host key"}, failed
    assert "trust-host" in failed["host key"]


def test_a_failing_login_is_found(setup, sshd_server):
    variant, root = setup
    other = root / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    failed = _failed(run_checks(variant(remote={"key_file": str(other)})))
    assert set(failed) == {"login"}, failed
    assert "ssh -p" in failed["login"]


def test_cluster_side_mistakes(setup, sshd_server):
    variant, root = setup
    failed = _failed(run_checks(variant(python="/nonexistent/python3")))
    assert set(failed) == {"remote python"}, failed
    failed = _failed(run_checks(variant(hpc_env={"workspace": "/proc/dbr-workspace", "scripts": "/tmp/x"})))
    assert set(failed) == {"workspace"}, failed
    # a cluster account whose PATH has neither rsync nor Slurm's commands
    shims = Path(tempfile.mkdtemp(prefix="dbr-check-", dir="/tmp"))      # where the cluster account can read
    shims.chmod(0o755)
    bare = shims / "python3"
    bare.write_text('#!/bin/sh\nPATH=/nonexistent exec /usr/bin/python3 "$@"\n')
    bare.chmod(0o755)
    try:
        failed = _failed(run_checks(variant(python=str(bare), remote={"transfer": "rsync"})))
    finally:
        shutil.rmtree(shims)
    assert {"rsync", "sbatch", "squeue", "partitions"} == set(failed), failed
    assert "apt-get install rsync" in failed["rsync"]


def test_classes_the_cluster_cannot_give_are_found(setup):
    variant, _ = setup
    results = run_checks(variant(classes={"default": {"partition": "nosuch"},
                                          "gpu": {"partition": "debug", "gres": "gpu:a100:1"},
                                          "fpga": {"gres": "fpga:1"}}))
    failed = _failed(results)
    assert set(failed) == {"class default", "class gpu", "class fpga"}, format_checks(results)
    assert "'nosuch' does not exist" in failed["class default"] and "debug" in failed["class default"]
    assert "gpu:a100" in failed["class gpu"]


def test_check_json_output(setup):
    variant, _ = setup
    done = run_cli("check", "--json", "--config", str(variant(classes={"default": {"partition": "nosuch"}})))
    assert done.returncode == 5
    rows = yaml.safe_load(done.stdout)
    assert {"name": "class default", "ok": False} == {k: rows[-1][k] for k in ("name", "ok")}


def test_status_shows_why_slurm_keeps_a_runner_pending(setup, sshd_server, slurm_cluster, tmp_path):
    variant, root = setup
    path = variant(classes={"default": {"slots": 1, "extra_args": ["--hold"]}}, grace_seconds=0)  # held: pending
    (root / "out").mkdir()
    source = root / "in.txt"         # not the config file: that is a zone no job may read
    source.write_text("x\n")
    try:
        from dropbox_runner.client import submit
        submit(root / "dropbox", {"script": "copy", "input_map": {"src": str(source)},
                                  "output_map": {"dst": str(root / "out" / "o")}})
        cycle = run_cli("once", "-v", "--config", str(path))
        assert cycle.returncode == 0, cycle.stderr
        done = run_cli("status", "--config", str(path))
        assert done.returncode == 0, done.stderr
        assert re.search(r"pending\s+\S+\s+0\s+JobHeldUser", done.stdout), done.stdout + cycle.stderr
    finally:
        slurm_cluster.run("scancel", "-u", sshd_server.user)


def test_a_refused_login_is_one_log_line_without_paramikos_traceback(setup):
    variant, root = setup
    other = root / "stranger_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    path = variant(remote={"key_file": str(other)}, grace_seconds=0)
    (root / "out").mkdir()
    source = root / "in.txt"         # not the config file: that is a zone no job may read
    source.write_text("x\n")
    from dropbox_runner.client import submit
    submit(root / "dropbox", {"script": "copy", "input_map": {"src": str(source)},
                              "output_map": {"dst": str(root / "out" / "o")}})
    done = run_cli("once", "--config", str(path))
    assert done.returncode == 1, done.stderr
    errors = [line for line in done.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "cluster unreachable" in errors[0], done.stderr
    assert "Traceback" not in done.stderr and "paramiko" not in done.stderr.lower(), done.stderr
