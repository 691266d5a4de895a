"""Inputs are taken once, over the real SSH path: a loopback sshd, rsync and SFTP.

rsync is run with ``--copy-links`` and SFTP follows local links on push, so a link left
in what is sent would be followed at sending time.  The attacker swaps a checked input
for a link to the submitter's own SSH key between intake and sending; the cluster must
receive the checked bytes, and the key must reach no output and no result.
"""
import shutil
from pathlib import Path

import pytest
from sshsetup import TEMPLATES, new_scratch, write_config

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import Submitter, run_once
from dropbox_runner.transport import open_transport


@pytest.fixture
def scratch(sshd):
    folder = new_scratch(sshd)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def _config(tmp_path, sshd, scratch, transfer):
    return load_config(write_config(
        tmp_path, sshd, scratch, remote={"transfer": transfer}, templates=str(TEMPLATES), grace_seconds=0,
        classes={"default": {"slots": 2, "idle_timeout": 1}},
        hpc_env={"workspace": f"{scratch}/workspace", "scripts": f"{scratch}/scripts", "ledger": f"{scratch}/ledger"},
        allowed_input_roots=[str(tmp_path / "inputs")], allowed_output_roots=[str(tmp_path / "outputs")]))


def _cycles_until_done(config, path, limit=60):
    for _ in range(limit):
        transport = open_transport(config)
        try:
            run_once(config, transport)
        finally:
            transport.close()
        if path.name in Dropbox(config.dropbox).scan().finished:
            return Dropbox(config.dropbox).read_result(path.name)
    raise AssertionError(f"no result for {path.name}")


@pytest.mark.parametrize("transfer", ["rsync", "sftp"])
def test_an_input_swapped_for_a_link_to_the_ssh_key_sends_the_checked_file(tmp_path, sshd, scratch, transfer):
    config = _config(tmp_path, sshd, scratch, transfer)
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("checked text\n")
    job = submit(config.dropbox, {"script": "upper", "args": {"label": "swap"}, "cache": False,
                                  "input_map": {"text": str(source)},
                                  "output_map": {"upper": str(tmp_path / "outputs" / "out.txt")}})
    submitter = Submitter(config, None)      # intake alone: nothing is sent yet
    try:
        submitter.intake.take_new_jobs(Dropbox(config.dropbox).scan(), set())
    finally:
        submitter.close()
    source.unlink()
    source.symlink_to(sshd.key_file)
    result = _cycles_until_done(config, job)
    assert result["job"]["status"] == "ok", result["job"]
    assert (tmp_path / "outputs" / "out.txt").read_text() == "CHECKED TEXT\n"
    key = Path(sshd.key_file).read_text()
    sent = [path for path in Path(scratch).rglob("*") if path.is_file()]
    assert not any(key.strip().splitlines()[1] in path.read_text(errors="replace") for path in sent)


def test_the_ssh_key_itself_is_never_an_input(tmp_path, sshd, scratch):
    config = _config(tmp_path, sshd, scratch, "rsync")
    config.allowed_input_roots = []          # even with no roots at all
    (tmp_path / "outputs").mkdir()
    job = submit(config.dropbox, {"script": "upper", "args": {"label": "key"}, "cache": False,
                                  "input_map": {"text": str(sshd.key_file)},
                                  "output_map": {"upper": str(tmp_path / "outputs" / "key.txt")}})
    result = _cycles_until_done(config, job)
    assert result["job"]["status"] == "error" and "which jobs may never use" in result["job"]["message"]
    assert not (tmp_path / "outputs" / "key.txt").exists()


@pytest.mark.parametrize("transfer", ["rsync", "sftp"])
def test_a_link_left_in_the_job_output_is_never_followed_back(tmp_path, sshd, scratch, transfer):
    """Files the cluster account can read are the target here: a link the job leaves in its
    output folder (a tool unpacking an archive) must not bring them back."""
    config = _config(tmp_path, sshd, scratch, transfer)
    (tmp_path / "outputs").mkdir()
    job = submit(config.dropbox, {"script": "link_output", "cache": False, "args": {"target": "/etc/hostname"},
                                  "output_map": {"out": str(tmp_path / "outputs" / "out.txt")}})
    result = _cycles_until_done(config, job)
    assert result["job"]["status"] == "error" and "did not write out" in result["job"]["message"], result["job"]
    assert not (tmp_path / "outputs" / "out.txt").exists()
