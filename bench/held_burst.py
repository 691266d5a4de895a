"""A burst taken while the runner waits in the queue: every job stays held.

With runners running, the jobs a burst's cycles hold stay few (they finish as fast as
they are taken); behind a queue wait every job taken is held until the allocation
starts, and each cycle of the burst reads what it holds. This runs one ``once`` over N
trivial jobs on the tests' single-node Slurm with every allocation held back an hour
(``sbatch --begin``), and prints, as JSON: its wall time and CPU per job, its peak memory
(the ``once`` process and the ``on_hpc`` commands it ran, whichever was largest), its
cycles, and the time of the burst's first and last quarter of cycles per job taken (flat
when a cycle's cost does not grow with the jobs held).

    python bench/held_burst.py --jobs 20000 100000      # as root: it starts Slurm
"""
from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (beside this script)

CYCLE_LINE = re.compile(r"cycle: (\d+) taken, .* (\d+) held, .* ([\d.]+)s$", re.MULTILINE)


def burst(jobs: int) -> dict:
    root = Path(tempfile.mkdtemp(prefix="dbr-held-"))
    try:
        config = overhead.write_config(root, "slurm", 4, "process")
        started = overhead.drop(overhead.prepare_jobs(root, jobs), root / "dropbox")
        with open(root / "submitter.log", "ab") as log:
            process = subprocess.Popen(overhead.submitter_argv("once", config), stdout=log, stderr=log)
            _, status, rusage = os.wait4(process.pid, 0)
        wall = time.monotonic() - started
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"once failed; see {root / 'submitter.log'}")
        cycles = [(int(taken), int(held), float(seconds)) for taken, held, seconds in
                  CYCLE_LINE.findall((root / "submitter.log").read_text())]
        taken = sum(cycle[0] for cycle in cycles)
        if taken != jobs:
            raise SystemExit(f"the burst took {taken} of {jobs} jobs; see {root / 'submitter.log'}")
        quarter = max(1, len(cycles) // 4)
        return {"jobs": jobs, "wall_s": round(wall, 2), "cycles": len(cycles),
                "cpu_ms_per_job": round(1000 * overhead.cpu_of(rusage)[0] / jobs, 2),
                "peak_rss_mib": round(rusage.ru_maxrss / 1024),
                "largest_held": max(cycle[1] for cycle in cycles),
                "ms_per_job_first_quarter": per_job(cycles[:quarter]),
                "ms_per_job_last_quarter": per_job(cycles[-quarter:])}
    finally:
        subprocess.run(["scancel", "--user", str(os.getuid())], capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


def per_job(cycles: list[tuple[int, int, float]]) -> float:
    """Milliseconds of cycle time per job taken, median over the cycles given."""
    return round(statistics.median(1000 * seconds / taken for taken, _, seconds in cycles if taken), 2)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, nargs="+", default=[20000])
    options = parser.parse_args(argv)
    overhead.QUEUE_WAIT_ARGS[:] = ["--begin=now+3600"]
    sys.path.insert(0, str(overhead.REPO / "tests"))
    import realcluster
    slurm = realcluster.start_slurm(gpus=0)
    os.environ["SLURM_CONF"] = str(slurm.conf)
    try:
        print(json.dumps([burst(jobs) for jobs in options.jobs], indent=1))
    finally:
        slurm.stop()
        shutil.rmtree(slurm.root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
