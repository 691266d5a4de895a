"""A burst of jobs through a real Grid Engine on the local backend: how many qsub and qstat
calls, how many cycles, how long (the Grid Engine twin of bench/slurm_burst.py).

``qsub`` and ``qstat`` are wrapped by counting shims first on PATH; a call made inside a
runner (which has ``JOB_ID``) is counted apart from the cycles'.  Uses the cell that
``SGE_ROOT``/``SGE_CELL``/``SGE_QMASTER_PORT`` name, or starts the tests' single-node cell
with ``--start-cluster`` (root only).  Prints one JSON object.

    python bench/sge_burst.py --jobs 100 --start-cluster
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "tests" / "templates"
SHIM = '#!/bin/sh\nprintf \'%s\\n\' "${{JOB_ID:--}}" >> {log}\nexec {real} "$@"\n'


def shims(folder: Path) -> None:
    folder.mkdir()
    for program in ("qsub", "qstat"):
        real = shutil.which(program)
        if real is None:
            raise SystemExit(f"{program} not found: install Grid Engine (scripts/install-system-deps.sh)")
        (folder / program).write_text(SHIM.format(log=folder / f"{program}.calls", real=real))
        (folder / program).chmod(0o755)
    os.environ["PATH"] = f"{folder}:{os.environ['PATH']}"


def calls(folder: Path, program: str) -> dict[str, int]:
    path = folder / f"{program}.calls"
    lines = path.read_text().split() if path.exists() else []
    return {"submitter": lines.count("-"), "runners": sum(line != "-" for line in lines)}


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def burst(root: Path, jobs: int, slots: int, period: float) -> dict:
    shims(root / "shims")
    (root / "dropbox").mkdir()
    (root / "out").mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({
        "dropbox": str(root / "dropbox"), "backend": "local", "scheduler": "sge",
        "cluster_root": str(root / "cluster"), "templates": str(TEMPLATES), "grace_seconds": 0,
        "classes": {"default": {"slots": slots, "idle_timeout": 3, "time_limit": "1h"}}}))
    config = load_config(root / "config.yaml")
    ledger = root / "ledger"
    paths = [submit(config.dropbox, {"script": "ledger", "cache": False,
                                     "args": {"seconds": 0, "ledger": str(ledger)},
                                     "output_map": {"out": str(root / "out" / f"o{n}")}})
             for n in range(jobs)]
    started, cpu_started = time.monotonic(), cpu_seconds()
    cycles = 0
    while True:
        run_once(config, LocalTransport())
        cycles += 1
        finished = Dropbox(config.dropbox).scan().finished
        if all(path.name in finished for path in paths):
            break
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {len(finished)}/{jobs} finished after 600 s")
        time.sleep(period)
    wall = time.monotonic() - started
    cpu = cpu_seconds() - cpu_started
    results = [Dropbox(config.dropbox).read_result(path.name)["job"] for path in paths]
    run_time = sum(r["duration"] or 0 for r in results)
    return {
        "jobs": jobs, "slots": slots, "cycle_period_s": period,
        "ok": sum(r["status"] == "ok" for r in results),
        "runs_completed": len(ledger.read_text().split()),
        "runners": len({r["runner"] for r in results}),
        "qsub": calls(root / "shims", "qsub"), "qstat": calls(root / "shims", "qstat"),
        "cycles": cycles, "wall_s": round(wall, 2), "submitter_cpu_s": round(cpu, 2),
        "overhead_per_job_ms": round(1000 * (wall - run_time / slots) / jobs, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.3, help="seconds between cycles")
    parser.add_argument("--start-cluster", action="store_true",
                        help="start the tests' single-node Grid Engine cell (root) instead of using SGE_ROOT")
    options = parser.parse_args(argv)
    cell = None
    if options.start_cluster:
        sys.path.insert(0, str(REPO / "tests"))
        import gridengine
        cell = gridengine.start_gridengine()
        os.environ.update(cell.env_vars())
    root = Path(tempfile.mkdtemp(prefix="dbr-sge-burst-"))
    try:
        print(json.dumps(burst(root, options.jobs, options.slots, options.period)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if cell is not None:
            cell.stop()
            shutil.rmtree(cell.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
