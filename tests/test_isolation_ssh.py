"""Room on the cluster over the real SSH path: the account's folder is a 4 MiB tmpfs, the
push is a real rsync that runs out of space, and the free space comes back in the real
``on_hpc cycle`` answer."""
import os
import pwd
import shutil
import subprocess

import pytest
from helpers import drain, drop
from sshsetup import TEMPLATES, new_scratch, write_config
from test_ssh_pipeline import _stop_runners

from dropbox_runner.config import load_config
from dropbox_runner.submitter import run_once
from dropbox_runner.transport import open_transport


@pytest.fixture
def small_remote(sshd):
    folder = new_scratch(sshd)
    folder.mkdir()
    account = pwd.getpwnam(sshd.user)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=4m,mode=0700,uid={account.pw_uid},gid={account.pw_gid}",
                    "tmpfs", str(folder)], check=True)
    yield folder
    _stop_runners(folder / "workspace" / "runners")
    if subprocess.run(["umount", str(folder)], check=False).returncode:
        subprocess.run(["umount", "-l", str(folder)], check=False)
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def remote_folder(sshd):
    folder = new_scratch(sshd)
    yield folder
    _stop_runners(folder / "workspace" / "runners")
    shutil.rmtree(folder, ignore_errors=True)


def free_bytes(path):
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def test_an_input_too_big_for_the_cluster_fails_alone_over_rsync(tmp_path, sshd, small_remote):
    config = load_config(write_config(
        tmp_path, sshd, small_remote, remote={"transfer": "rsync"}, templates=str(TEMPLATES),
        grace_seconds=0, settle_seconds=0, classes={"default": {"slots": 4, "idle_timeout": 5}},
        hpc_env={"workspace": f"{small_remote}/workspace", "scripts": f"{small_remote}/scripts",
                 "ledger": f"{small_remote}/ledger"}))
    (tmp_path / "inputs").mkdir()
    (tmp_path / "outputs").mkdir()

    def job(name, size):
        source = tmp_path / "inputs" / f"{name}.txt"
        with open(source, "wb") as handle:
            handle.write(b"x\n" * (size // 2))
        return {"script": "upper", "args": {"label": name}, "input_map": {"text": str(source)}, "cache": False,
                "output_map": {"upper": str(tmp_path / "outputs" / f"{name}.txt")}}

    transport = open_transport(config)
    try:
        def cycle():
            return run_once(config, transport)

        drop(config, "first.job", job("first", 100))
        assert drain(config, ["first.job"], cycle=cycle, timeout=120)["first.job"]["job"]["status"] == "ok"
        # The disk filled since the last answer: the hint is stale and rsync runs out of space.
        (config.state_dir / "workspace-space.json").write_text('{"free_bytes": 1000000000}')
        drop(config, "huge.job", job("huge", 6 << 20))
        drop(config, "small.job", job("small", 100))
        report = cycle()
        assert any("ran out of space" in error for error in report.environment_errors), report
        assert not (config.dropbox / "huge.job.finished").exists()
        results = drain(config, ["huge.job", "small.job"], cycle=cycle, timeout=120)
        cycle()
    finally:
        transport.close()
    assert "do not fit in the cluster workspace" in results["huge.job"]["job"]["message"]
    assert results["small.job"]["job"]["status"] == "ok"
    assert os.listdir(small_remote / "workspace" / "jobs") == []
    assert free_bytes(small_remote) > 3 << 20


def test_an_output_the_job_made_unreadable_fails_only_that_job(tmp_path, sshd, remote_folder):
    """The job runs as the cluster account and chmods its output to 000: rsync, as that
    account, cannot read it.  The one pull for all done jobs fails; each is pulled alone."""
    from helpers import wait_until

    config = load_config(write_config(
        tmp_path, sshd, remote_folder, remote={"transfer": "rsync"}, templates=str(TEMPLATES),
        grace_seconds=0, settle_seconds=0, classes={"default": {"slots": 4, "idle_timeout": 5}},
        hpc_env={"workspace": f"{remote_folder}/workspace", "scripts": f"{remote_folder}/scripts",
                 "ledger": f"{remote_folder}/ledger"}))
    (tmp_path / "outputs").mkdir()
    drop(config, "sealed.job", {"script": "unreadable_output", "cache": False,
                                "output_map": {"out": str(tmp_path / "outputs" / "sealed.txt")}})
    drop(config, "fine.job", {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                              "output_map": {"out": str(tmp_path / "outputs" / "fine.txt")}})
    transport = open_transport(config)
    try:
        run_once(config, transport)
        done = remote_folder / "workspace" / "done"
        wait_until(lambda: done.is_dir() and len(os.listdir(done)) == 2, timeout=60, what="both jobs done")
        results = drain(config, ["sealed.job", "fine.job"], cycle=lambda: run_once(config, transport), timeout=120)
    finally:
        transport.close()
    sealed = results["sealed.job"]["job"]
    assert sealed["status"] == "error" and "could not be brought back" in sealed["message"], sealed
    assert "Permission denied" in sealed["message"]
    assert results["fine.job"]["job"]["status"] == "ok"
    assert not (tmp_path / "outputs" / "sealed.txt").exists()
