"""What the SSH backend's tests share: a private sshd, a scratch folder in the cluster
account's home, a config pointing at both, and a transport that counts its calls.

The sshd is the tests' own (not the session's ``sshd_server``), because these tests stop
and start it, and they need no Slurm.
"""
from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import realcluster
import yaml

from dropbox_runner.config import Config, load_config
from dropbox_runner.transport import CommandResult, Session, Transport

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
        self.reads_in_place = inner.reads_in_place
        self.runs = self.pushes = self.pulls = 0

    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        self.runs += 1
        return self.inner.run(command, stdin)

    def open_session(self, command: str) -> Session:
        """A kept-open ``on_hpc serve`` is one remote command (one channel), however many requests it answers."""
        self.runs += 1
        return self.inner.open_session(command)

    def connected(self) -> bool:
        return self.inner.connected()

    def push(self, local_dir: Path, remote_dir: str) -> None:
        self.pushes += 1
        self.inner.push(local_dir, remote_dir)

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        self.pulls += 1
        self.inner.pull(remote_dir, relative_paths, local_dir)

    def close(self) -> None:
        self.inner.close()


@dataclass
class BurstCycles:
    """What the cron-style cycles that took a burst through sshd cost."""

    wall: float = 0.0
    cycles: int = 0
    commands: int = 0            # cycles that ran a remote command at all
    remote_commands: int = 0
    transfers: int = 0           # rsync runs, both ways
    runs_per_cycle: list[int] = field(default_factory=list)


def drop_burst(config: Config, out: Path, count: int) -> list[Path]:
    """``count`` trivial ledger jobs, each writing ``out/o<n>``."""
    from dropbox_runner.client import submit
    out.mkdir()
    return [submit(config.dropbox, {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                                    "output_map": {"out": str(out / f"o{n}")}})
            for n in range(count)]


def cycle_until_finished(config: Config, files: list[Path], timeout: float) -> BurstCycles:
    """Cron-style cycles, each over a fresh counting transport, until every job has a result."""
    from dropbox_runner.dropbox import Dropbox
    from dropbox_runner.submitter import run_once
    from dropbox_runner.transport import open_transport
    started = time.monotonic()
    cost = BurstCycles()
    while True:
        transport = CountingTransport(open_transport(config))
        try:
            run_once(config, transport)
        finally:
            transport.close()
        cost.cycles += 1
        cost.commands += transport.runs > 0
        cost.remote_commands += transport.runs
        cost.runs_per_cycle.append(transport.runs)
        cost.transfers += transport.pushes + transport.pulls
        finished = Dropbox(config.dropbox).scan().finished
        if all(path.name in finished for path in files):
            cost.wall = time.monotonic() - started
            return cost
        assert time.monotonic() - started < timeout, f"{len(finished)}/{len(files)} finished"
        time.sleep(0.3)


def check_burst_ran_once(config: Config, files: list[Path], out: Path, scratch: Path, user: str) -> list[dict]:
    """Every job of the burst ok, its output in place, run once, all in one runner that ran
    as the cluster account; returns the results' job blocks."""
    import pwd

    from dropbox_runner.dropbox import Dropbox
    results = [Dropbox(config.dropbox).read_result(path.name)["job"] for path in files]
    assert [r["status"] for r in results] == ["ok"] * len(files)
    assert all((out / f"o{n}").read_text() == "done\n" for n in range(len(files)))
    assert sorted((scratch / "ledger").read_text().split()) == sorted(r["id"] for r in results)
    [runner] = {r["runner"] for r in results}
    log = scratch / "workspace" / "runners" / f"{runner}.log"
    assert log.stat().st_uid == pwd.getpwnam(user).pw_uid       # ran as the account
    return results


def ssh_client_processes(port: int) -> list[int]:
    """OpenSSH clients still running for this sshd's port: rsync's, and the multiplexing
    masters of dropbox-runner transports (a master retitles itself ``ssh: <ControlPath>
    [mux]``, so it is known by its private folder's name and by its TCP connection to the
    port: another dropbox-runner on this machine, with masters of its own, is not counted)."""
    connected = _sockets_to_port(port)
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
        if client or (master and _process_sockets(name) & connected):
            found.append(int(name))
    return found


def _sockets_to_port(port: int) -> set[str]:
    """Inodes of the TCP sockets (IPv4 and IPv6) whose remote end is ``port``."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == port:
                inodes.add(fields[9])
    return inodes


def _process_sockets(pid: str) -> set[str]:
    """Inodes of the sockets a process holds open."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    except OSError:
        pass
    return inodes


def modes_below(root: Path, top: Path) -> dict[str, int]:
    """Permission bits of ``top`` and every folder and file under it, by path relative to root."""
    modes = {str(top.relative_to(root)): top.stat().st_mode & 0o777}
    for path in top.rglob("*"):
        modes[str(path.relative_to(root))] = path.lstat().st_mode & 0o777
    return modes

