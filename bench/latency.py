"""Latency of the watch daemon: from a job's drop to its being queued on the cluster, and
from its end on the cluster to its ``.finished`` in the dropbox; medians over N jobs.

The cluster side runs on this machine (locally, or as the account behind a private sshd
on loopback), so both clocks are the same clock.  The queue marker keeps the time it was
made through its renames (ready -> claimed -> done), and ``finished.json`` is written when
the job ends; both are read right after the result appears, before the next cycle removes
them.  Prints one JSON object.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from dropbox_runner.client import submit  # noqa: E402

TEMPLATES = HERE.parent / "tests" / "templates"
SETTINGS = {"templates": str(TEMPLATES), "grace_seconds": 0, "tick": "1h",
            "classes": {"default": {"slots": 2, "idle_timeout": 300}}}


def local_config(root: Path) -> Path:
    path = root / "config.yaml"
    (root / "dropbox").mkdir()
    path.write_text(yaml.safe_dump({"dropbox": str(root / "dropbox"), "cluster_root": str(root / "cluster"),
                                    **SETTINGS}))
    return path


def measure(config_path: Path, workspace: Path, root: Path, runs: int) -> dict:
    log = open(root / "watch.log", "w")
    daemon = subprocess.Popen([sys.executable, "-m", "dropbox_runner.cli", "watch", "--config", str(config_path)],
                              stdout=log, stderr=log)
    dropbox = Path(yaml.safe_load(config_path.read_text())["dropbox"])
    to_queue, to_result = [], []
    try:
        time.sleep(1.5)
        for number in range(runs + 1):            # the first run deploys and starts the runner
            job = {"script": "sleep", "args": {"seconds": 0.5}, "cache": False,
                   "output_map": {"out": str(root / f"out{number}.txt")}}
            dropped = time.time()
            path = submit(dropbox, job)
            result_path = Path(f"{path}.finished")
            while not result_path.exists():
                time.sleep(0.005)
            arrived = result_path.stat().st_mtime
            job_id = yaml.safe_load(result_path.read_text())["job"]["id"]
            queued = (workspace / "done" / job_id).stat().st_mtime
            ended = (workspace / "jobs" / job_id / "finished.json").stat().st_mtime
            if number:
                to_queue.append(queued - dropped)
                to_result.append(arrived - ended)
    finally:
        daemon.terminate()
        daemon.wait(timeout=60)
        log.close()
    return {"runs": runs, "drop_to_queued_median_s": statistics.median(to_queue),
            "end_to_result_median_s": statistics.median(to_result),
            "drop_to_queued_max_s": max(to_queue), "end_to_result_max_s": max(to_result)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backend", choices=["local", "ssh"], default="local")
    parser.add_argument("--runs", type=int, default=20)
    options = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="dbr-latency-"))
    if options.backend == "local":
        config_path = local_config(root)
        workspace = root / "cluster" / "workspace"
        print(json.dumps({"backend": "local", **measure(config_path, workspace, root, options.runs)}))
        return
    import sshsetup
    sshd = sshsetup.start_private_sshd()
    try:
        scratch = sshsetup.new_scratch(sshd)
        config_path = sshsetup.write_config(root, sshd, scratch, **SETTINGS)
        print(json.dumps({"backend": "ssh", **measure(config_path, scratch / "workspace", root, options.runs)}))
    finally:
        sshsetup.stop_private_sshd(sshd)
        subprocess.run(["pkill", "-u", sshd.user], check=False)


if __name__ == "__main__":
    main()
