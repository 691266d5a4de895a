"""A burst of jobs through a real Slurm or Grid Engine on the local backend: how many
submissions and listings, how many cycles, how long.

The scheduler's submit and list commands (sbatch/squeue, qsub/qstat) are wrapped by
counting shims first on PATH; a call made inside a runner (which has the allocation's id
in its environment) is counted apart from the cycles'.  Uses the scheduler the environment
names (``SLURM_CONF``; ``SGE_ROOT``/``SGE_CELL``/``SGE_QMASTER_PORT``), or starts the tests'
single-node cluster with ``--start-cluster`` (root only).  Prints one JSON object.

    python bench/burst.py --jobs 100 --start-cluster
    python bench/burst.py --scheduler sge --jobs 100 --start-cluster
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

REPO = Path(__file__).resolve().parent.parent
TEMPLATES = REPO / "tests" / "templates"
SHIM = '#!/bin/sh\nprintf \'%s\\n\' "${{{job_id}:--}}" >> {log}\nexec {real} "$@"\n'


@dataclass(frozen=True)
class Scheduler:
    """What differs between the schedulers for this benchmark."""

    title: str
    submit: str                 # the command that submits a runner
    listing: str                # the command that lists runners
    job_id_variable: str        # set inside a runner: tells its calls from the cycles'
    class_settings: dict[str, Any] = field(default_factory=dict)


SCHEDULERS = {
    "slurm": Scheduler("Slurm", "sbatch", "squeue", "SLURM_JOB_ID"),
    # Grid Engine's queue has no default limit here; the runner needs one to plan by.
    "sge": Scheduler("Grid Engine", "qsub", "qstat", "JOB_ID", {"time_limit": "1h"}),
}


def shims(folder: Path, scheduler: Scheduler) -> None:
    folder.mkdir()
    for program in (scheduler.submit, scheduler.listing):
        real = shutil.which(program)
        if real is None:
            raise SystemExit(f"{program} not found: install {scheduler.title} (scripts/install-system-deps.sh)")
        (folder / program).write_text(SHIM.format(job_id=scheduler.job_id_variable,
                                                  log=folder / f"{program}.calls", real=real))
        (folder / program).chmod(0o755)
    os.environ["PATH"] = f"{folder}:{os.environ['PATH']}"


def calls(folder: Path, program: str) -> dict[str, int]:
    path = folder / f"{program}.calls"
    lines = path.read_text().split() if path.exists() else []
    return {"submitter": lines.count("-"), "runners": sum(line != "-" for line in lines)}


def cpu_seconds() -> float:
    """This process and its finished children (the cluster-side commands it ran)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def burst(root: Path, jobs: int, slots: int, period: float, runner_per_job: bool = False,
          scheduler_name: str = "slurm") -> dict:
    scheduler = SCHEDULERS[scheduler_name]
    shims(root / "shims", scheduler)
    (root / "dropbox").mkdir()
    (root / "out").mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({
        "dropbox": str(root / "dropbox"), "backend": "local", "scheduler": scheduler_name,
        "cluster_root": str(root / "cluster"), "templates": str(TEMPLATES), "grace_seconds": 0,
        # One runner for the burst, as HyperQueue's one allocation: the batching, not the
        # policy's racing of several pending runners (bench/simulate.py measures that).
        "classes": {"default": {"slots": slots, "max_runners": 1, "idle_timeout": 3,
                                "runner_per_job": runner_per_job, **scheduler.class_settings}}}))
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
    parallel = 1 if runner_per_job else slots
    run_time = sum(r["duration"] or 0 for r in results)
    return {
        "jobs": jobs, "slots": slots, "cycle_period_s": period,
        "ok": sum(r["status"] == "ok" for r in results),
        "runs_completed": len(ledger.read_text().split()),
        "runners": len({r["runner"] for r in results}),
        "scheduler": scheduler_name,
        scheduler.submit: calls(root / "shims", scheduler.submit),
        scheduler.listing: calls(root / "shims", scheduler.listing),
        "cycles": cycles, "wall_s": round(wall, 2), "submitter_cpu_s": round(cpu, 2),
        "runner_per_job": runner_per_job,
        # wall time less the jobs' own run time spread over the slots, per job
        "overhead_per_job_ms": round(1000 * (wall - run_time / parallel) / jobs, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.3, help="seconds between cycles")
    parser.add_argument("--runner-per-job", action="store_true", help="the 1:1 baseline")
    parser.add_argument("--scheduler", choices=sorted(SCHEDULERS), default="slurm")
    parser.add_argument("--start-cluster", action="store_true",
                        help="start the tests' single-node cluster (root) instead of the one the environment names")
    options = parser.parse_args(argv)
    cluster = start_cluster(options.scheduler) if options.start_cluster else None
    root = Path(tempfile.mkdtemp(prefix=f"dbr-{options.scheduler}-burst-"))
    try:
        print(json.dumps(burst(root, options.jobs, options.slots, options.period, options.runner_per_job,
                               options.scheduler)))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        if cluster is not None:
            cluster.stop()
            shutil.rmtree(cluster.root, ignore_errors=True)
    return 0


def start_cluster(scheduler_name: str):
    """The tests' single-node cluster, with this process's environment pointed at it."""
    sys.path.insert(0, str(REPO / "tests"))
    if scheduler_name == "sge":
        import gridengine
        cell = gridengine.start_gridengine()
        os.environ.update(cell.env_vars())
        return cell
    import realcluster
    slurm = realcluster.start_slurm()
    os.environ["SLURM_CONF"] = str(slurm.conf)
    return slurm


if __name__ == "__main__":
    sys.exit(main())
