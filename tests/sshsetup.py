"""What the SSH backend's tests share: a private sshd, a scratch folder in the cluster
account's home, a config pointing at both, and a transport that counts its calls.

The sshd is the tests' own (not the session's ``sshd_server``), because these tests stop
and start it, and they need no Slurm.
"""
from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import realcluster
import yaml

from dropbox_runner.config import Config, load_config
from dropbox_runner.transport import CommandResult, Transport

TEMPLATES = Path(__file__).parent / "templates"


def start_private_sshd() -> realcluster.Sshd:
    return realcluster.start_sshd(None)


def stop_private_sshd(sshd: realcluster.Sshd) -> None:
    sshd.close()
    shutil.rmtree(sshd.root, ignore_errors=True)


def new_scratch(sshd: realcluster.Sshd) -> Path:
    """A folder name in the account's home; the code under test creates it."""
    return sshd.home / f"dbr-test-{uuid.uuid4().hex[:8]}"


def write_config(folder: Path, sshd: realcluster.Sshd, scratch: Path, remote: dict[str, Any] | None = None,
                 **settings: Any) -> Path:
    """A YAML config for backend ssh against ``sshd``; returns its path."""
    (folder / "dropbox").mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "dropbox": str(folder / "dropbox"),
        "backend": "ssh",
        "scheduler": "local",
        "remote": {"host": sshd.host, "port": sshd.port, "user": sshd.user, "key_file": str(sshd.key_file),
                   "known_hosts": str(sshd.known_hosts), "connect_timeout": 5, **(remote or {})},
        "hpc_env": {"workspace": f"{scratch}/workspace", "scripts": f"{scratch}/scripts"},
        "python": "/usr/bin/python3",
    }
    data.update(settings)
    path = folder / "dropbox-runner.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def ssh_config(folder: Path, sshd: realcluster.Sshd, remote: dict[str, Any] | None = None) -> Config:
    return load_config(write_config(folder, sshd, new_scratch(sshd), remote))


class CountingTransport:
    """Passes every call through and counts it, to compare with what sshd logged."""

    def __init__(self, inner: Transport):
        self.inner = inner
        self.runs = self.pushes = self.pulls = 0

    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        self.runs += 1
        return self.inner.run(command, stdin)

    def push(self, local_dir: Path, remote_dir: str) -> None:
        self.pushes += 1
        self.inner.push(local_dir, remote_dir)

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        self.pulls += 1
        self.inner.pull(remote_dir, relative_paths, local_dir)

    def close(self) -> None:
        self.inner.close()


def ssh_client_processes(port: int) -> list[int]:
    """OpenSSH clients still running: rsync's, for this sshd's port, and the multiplexing
    masters of any dropbox-runner transport (a master retitles itself
    ``ssh: <ControlPath> [mux]``, so it is known by its private folder's name)."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as handle:
                cmdline = handle.read()
        except OSError:
            continue
        argv = cmdline.split(b"\0")
        client = argv[0].endswith(b"ssh") and str(port).encode() in argv and b"ControlMaster=auto" in argv
        master = cmdline.startswith(b"ssh: ") and b"/dbr-ssh-" in cmdline and b"[mux]" in cmdline
        if client or master:
            found.append(int(name))
    return found


def modes_below(root: Path, top: Path) -> dict[str, int]:
    """Permission bits of ``top`` and every folder and file under it, by path relative to root."""
    modes = {str(top.relative_to(root)): top.stat().st_mode & 0o777}
    for path in top.rglob("*"):
        modes[str(path.relative_to(root))] = path.lstat().st_mode & 0o777
    return modes

