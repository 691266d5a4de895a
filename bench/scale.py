"""Scale of the dropbox: a cycle's cost must grow with new work, not with old results.

Builds dropboxes with and without 100,000 old ``.finished`` files and measures, on the
local backend: an idle cycle, a cycle that takes 10,000 new jobs, and ``list`` over
10,000 results (then ``list`` of every state and ``status`` with as many jobs waiting).
Prints one JSON object (bench/run.py turns it into README rows).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dropbox_runner.config import load_config
from dropbox_runner.history import History
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport
from dropbox_runner.verbs import list_jobs

TEMPLATES = Path(__file__).resolve().parent.parent / "tests" / "templates"
OLD_RESULT = yaml.safe_dump({"script": "copy", "job": {"status": "ok", "message": "processed OK", "rc": 0}})


def make_setup(root: Path, old: int) -> Path:
    for sub in ("dropbox", "outputs"):
        (root / sub).mkdir(parents=True)
    config = root / "config.yaml"
    config.write_text(yaml.safe_dump({
        "dropbox": str(root / "dropbox"), "cluster_root": str(root / "cluster"), "templates": str(TEMPLATES),
        "grace_seconds": 0, "classes": {"default": {"slots": 2, "idle_timeout": 1}}}))
    for number in range(old):
        (root / "dropbox" / f"old{number:06d}.job.finished").write_text(OLD_RESULT)
    return config


def drop_jobs(root: Path, count: int) -> None:
    for number in range(count):
        job = {"script": "echo_args", "args": {"first": number, "second": "x"}, "cache": False,
               "output_map": {"out": str(root / "outputs" / f"o{number}.txt")}}
        (root / "dropbox" / f"new{number:06d}.job").write_text(yaml.safe_dump(job))


def timed_cycle(config) -> float:
    started = time.perf_counter()
    run_once(config, LocalTransport())
    return time.perf_counter() - started


def stop_runners(config) -> None:
    for alive in (Path(config.workspace) / "runners").glob("*.alive.json"):
        try:
            os.kill(json.loads(alive.read_text())["pid"], signal.SIGKILL)
        except (OSError, ValueError, KeyError):
            pass


def measure(old: int, new: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="dbr-scale-"))
    try:
        config = load_config(make_setup(root, old))
        idle = timed_cycle(config)
        drop_jobs(root, new)
        burst = timed_cycle(config)
        stop_runners(config)
        return {"old_results": old, "new_jobs": new, "idle_cycle_s": idle, "intake_cycle_s": burst,
                "intake_per_job_ms": 1000 * burst / max(new, 1)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def measure_list(results: int) -> dict[str, float]:
    root = Path(tempfile.mkdtemp(prefix="dbr-list-"))
    try:
        config_path = make_setup(root, 0)
        config = load_config(config_path)
        history = History(config.state_dir / "history.sqlite")
        with history.batch():
            for number in range(results):
                history.record(f"job{number:06d}.job", "finished", f"id{number}", status="ok", message="processed OK")
        started = time.perf_counter()
        rows = list_jobs(config, history, ["finished"], None, 200)
        in_process = time.perf_counter() - started
        command = timed_command("list", config_path, "--state", "finished")
        assert len(rows) == 200
        # As many jobs again waiting in the dropbox: `list` of every state and `status`
        # must not read each of them.
        drop_jobs(root, results)
        return {"results": results, "list_query_s": in_process, "list_command_s": command,
                "waiting": results, "list_all_command_s": timed_command("list", config_path),
                "status_command_s": timed_command("status", config_path)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def timed_command(verb: str, config_path: Path, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dropbox_runner.cli", verb, "--config", str(config_path), *args],
                   check=verb != "status", capture_output=True)     # status: exit 1 with no cluster yet
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--old", type=int, default=100_000)
    parser.add_argument("--new", type=int, default=10_000)
    parser.add_argument("--list-results", type=int, default=10_000)
    options = parser.parse_args()
    print(json.dumps({"scale": [measure(0, options.new), measure(options.old, options.new)],
                      "list": measure_list(options.list_results)}, indent=1))


if __name__ == "__main__":
    main()
