"""Shared helpers for driving the pipeline in tests."""
from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import yaml

from dropbox_runner.config import Config, load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

TEST_TEMPLATES = Path(__file__).with_name("templates")
BENCH = Path(__file__).resolve().parent.parent / "bench"


class CountingTransport(LocalTransport):
    """The local transport, counting one-shot commands, the kept-open processes it starts
    (``sessions``, kept to look at) and pushes."""

    def __init__(self):
        self.runs, self.pushes = 0, 0
        self.sessions = []

    @property
    def commands(self) -> int:
        """Remote commands of either kind: a kept-open process is one, however many requests it answers."""
        return self.runs + len(self.sessions)

    def run(self, command, stdin=b""):
        self.runs += 1
        return super().run(command, stdin)

    def open_session(self, command):
        self.sessions.append(super().open_session(command))
        return self.sessions[-1]

    def push(self, local_dir, remote_dir):
        self.pushes += 1
        super().push(local_dir, remote_dir)


def load_bench(name: str):
    """``bench/<name>.py`` as a module: bench/ is not a package, and dataclasses need the
    module registered while it executes."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def write_config(root: Path, **overrides: Any) -> Path:
    """A local-backend config under ``root`` (dropbox/, cluster/, outputs/)."""
    for sub in ("dropbox", "outputs", "inputs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "dropbox": str(root / "dropbox"),
        "backend": "local",
        "scheduler": "local",
        "cluster_root": str(root / "cluster"),
        "templates": str(TEST_TEMPLATES),
        "classes": {"default": {"slots": 4, "idle_timeout": 2},
                    "gpu": {"slots": 2, "idle_timeout": 2}},
        "grace_seconds": 0,
        "settle_seconds": 0,
        "hpc_env": {"ledger": str(root / "ledger")},
    }
    data.update(overrides)
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def make_config(root: Path, **overrides: Any) -> Config:
    return load_config(write_config(root, **overrides))


def drop(config: Config, name: str, job: dict[str, Any]) -> Path:
    path = config.dropbox / name
    path.write_text(yaml.safe_dump(job))
    return path


def result(config: Config, name: str) -> dict[str, Any] | None:
    return Dropbox(config.dropbox).read_result(name)


def drain(config: Config, names: list[str], timeout: float = 60, cycle=None) -> dict[str, dict]:
    """Run cycles until every named job has a result; return the results by name."""
    cycle = cycle or (lambda: run_once(config, LocalTransport()))
    deadline = time.monotonic() + timeout
    while True:
        cycle()
        finished = Dropbox(config.dropbox).scan().finished
        if all(name in finished for name in names):
            return {name: result(config, name) for name in names}
        if time.monotonic() > deadline:
            missing = [name for name in names if name not in finished]
            raise AssertionError(f"no result after {timeout}s for {missing}")
        time.sleep(0.2)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "dropbox_runner.cli", *args], capture_output=True,
                          text=True, env=env, timeout=timeout)


def stop_local_runners(config: Config) -> None:
    """Kill what a test's local runners left running (they normally leave when idle)."""
    stop_runners_in(Path(config.workspace))


def stop_runners_in(workspace: Path) -> None:
    for alive in (workspace / "runners").glob("*.alive.json"):
        try:
            pid = yaml.safe_load(alive.read_text())["pid"]
            os.kill(pid, signal.SIGKILL)
        except (OSError, TypeError, KeyError, ValueError):
            pass


def wait_until(condition, timeout: float = 30, interval: float = 0.05, what: str = "condition"):
    """Poll ``condition`` until it returns something true (returned), or fail after ``timeout``.

    The one wait loop for tests: a condition, never a fixed sleep, so a fast machine is not
    slowed down and a slow one gets the whole timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@contextmanager
def mounted_tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` (mount's syntax: 1m, 64k) mounted at ``mount`` while inside: a
    small disk to fill, or another filesystem (root only, as every test here runs)."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)
