"""What a job step costs: trivial jobs through one Slurm runner, started as job steps
(``srun --exact``) and as plain processes, on the tests' single-node Slurm.

For each way the same number of jobs that do nothing but write their output run one at a
time (``slots: 1``) in one runner; the figure is each job's run time as the runner
measured it (from its start to its end: for a step, srun's whole life), median and 90th
percentile, and the whole burst's wall time (cycles every 0.3 s included).
``--cgroup`` starts the cluster with cgroups confining each step (task/cgroup,
proctrack/cgroup), as a production cluster that enforces memory would be.  Root only.
Prints one JSON object.

    python bench/steps.py --jobs 40 [--cgroup]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
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


def burst(root: Path, jobs: int, launch: str) -> dict:
    (root / "dropbox").mkdir(parents=True)
    (root / "out").mkdir()
    (root / "config.yaml").write_text(yaml.safe_dump({
        "dropbox": str(root / "dropbox"), "backend": "local", "scheduler": "slurm",
        "cluster_root": str(root / "cluster"), "templates": str(TEMPLATES), "grace_seconds": 0,
        "classes": {"default": {"slots": 1, "cpus": 1, "idle_timeout": 5, "launch": launch}}}))
    config = load_config(root / "config.yaml")
    paths = [submit(config.dropbox, {"script": "sleep", "cache": False, "args": {"seconds": 0},
                                     "output_map": {"out": str(root / "out" / f"o{n}")}})
             for n in range(jobs)]
    started = time.monotonic()
    while True:
        run_once(config, LocalTransport())
        finished = Dropbox(config.dropbox).scan().finished
        if all(path.name in finished for path in paths):
            break
        if time.monotonic() - started > 600:
            raise SystemExit(f"only {len(finished)}/{jobs} finished after 600 s")
        time.sleep(0.3)
    results = [Dropbox(config.dropbox).read_result(path.name)["job"] for path in paths]
    wall = time.monotonic() - started
    durations = sorted(r["duration"] for r in results)
    return {
        "launch": launch, "jobs": jobs, "ok": sum(r["status"] == "ok" for r in results),
        "runners": len({r["runner"] for r in results}),
        "steps": sum(bool(r.get("scheduler_step_id")) for r in results),
        "job_ms_median": round(1000 * statistics.median(durations), 1),
        "job_ms_p90": round(1000 * durations[int(0.9 * (len(durations) - 1))], 1),
        "burst_wall_s": round(wall, 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=40)
    parser.add_argument("--cgroup", action="store_true", help="cgroups confine each step")
    options = parser.parse_args(argv)
    sys.path.insert(0, str(REPO / "tests"))
    import realcluster
    slurm = realcluster.start_slurm(cgroup=options.cgroup)
    os.environ["SLURM_CONF"] = str(slurm.conf)
    root = Path(tempfile.mkdtemp(prefix="dbr-steps-"))
    try:
        report = {"cluster": "cgroup" if options.cgroup else "plain",
                  "process": burst(root / "process", options.jobs, "process"),
                  "step": burst(root / "step", options.jobs, "step")}
        report["step_minus_process_ms"] = round(report["step"]["job_ms_median"]
                                                - report["process"]["job_ms_median"], 1)
        print(json.dumps(report))
    finally:
        shutil.rmtree(root, ignore_errors=True)
        slurm.stop()
        shutil.rmtree(slurm.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
