"""What the settle rule costs a cron-style burst: jobs dropped atomically (the client's
rename) just before a cycle, with ``settle_seconds`` 0 and the default 2, on the local
backend.  The cycle that first sees files changed in the last ``settle_seconds`` waits
for them (at most that long) instead of leaving them to the next cron minute.  Prints one
JSON object.

    python bench/settle.py --jobs 100
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import yaml

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

TEMPLATES = Path(__file__).resolve().parent.parent / "tests" / "templates"


def burst(jobs: int, settle: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        for sub in ("dropbox", "outputs"):
            (root / sub).mkdir()
        config_path = root / "config.yaml"
        config_path.write_text(yaml.safe_dump({
            "dropbox": str(root / "dropbox"), "cluster_root": str(root / "cluster"), "templates": str(TEMPLATES),
            "grace_seconds": 0, "settle_seconds": settle, "cache_max_bytes": 0,
            "classes": {"default": {"slots": 8, "idle_timeout": 2}}, "hpc_env": {"ledger": str(root / "ledger")}}))
        config = load_config(config_path)
        for number in range(jobs):
            submit(config.dropbox, {"script": "ledger", "args": {"seconds": 0},
                                    "output_map": {"out": str(root / "outputs" / f"o{number}.txt")}})
        started = time.monotonic()
        first_cycle = None
        cycles = 0
        while len(Dropbox(config.dropbox).scan().finished) < jobs:
            before = time.monotonic()
            run_once(config, LocalTransport())
            cycles += 1
            first_cycle = first_cycle if first_cycle is not None else time.monotonic() - before
            time.sleep(0.2)
        return {"wall_s": round(time.monotonic() - started, 2), "first_cycle_s": round(first_cycle, 2),
                "cycles": cycles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100)
    options = parser.parse_args()
    print(json.dumps({f"settle_seconds={settle}": burst(options.jobs, settle) for settle in (0, 2)}))


if __name__ == "__main__":
    main()
