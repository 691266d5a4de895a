"""What srun's options do to the cost of a job step: N trivial steps inside one allocation
of the tests' single-node Slurm, one at a time and four at a time, for each option set.

The runner starts each job as ``srun --exact ... --gres=none`` (``on_hpc/sched_slurm.py``);
this asks whether another spelling starts steps faster: without the MPI plugin
(``--mpi=none``), without CPU binding, or sharing the allocation's CPUs (``--overlap``
instead of ``--exact``).  Root only (it starts the cluster).  Prints steps per second.

    python bench/srun_options.py --steps 60
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BASE = "srun --nodes=1 --ntasks=1 --cpus-per-task=1 --quiet --gres=none"
VARIANTS = {
    "--exact (the runner's)": BASE + " --exact",
    "--exact --mpi=none": BASE + " --exact --mpi=none",
    "--exact --mpi=none --cpu-bind=none": BASE + " --exact --mpi=none --cpu-bind=none",
    "--overlap --mpi=none": BASE + " --overlap --mpi=none",
}
WIDTHS = (1, 4)


def batch_script(root: Path, steps: int) -> str:
    """One line per variant and width: the start and end time of ``steps`` steps."""
    lines = ["#!/bin/bash"]
    for index, command in enumerate(VARIANTS.values()):
        for width in WIDTHS:
            launch = " ".join([f"{command} /bin/true 2>/dev/null &"] * width) + " wait"
            lines.append(f"s=$EPOCHREALTIME; for i in $(seq {steps // width}); do {launch}; done; "
                         f"echo {index} {width} $s $EPOCHREALTIME >> {root}/times")
    return "\n".join(lines) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    options = parser.parse_args()
    sys.path.insert(0, str(REPO / "tests"))
    import realcluster

    slurm = realcluster.start_slurm(gpus=0)
    root = Path(tempfile.mkdtemp(prefix="dbr-srun-"))
    try:
        (root / "job.sh").write_text(batch_script(root, options.steps))
        subprocess.run(["sbatch", "--wait", "-c", "4", "-o", str(root / "out"), str(root / "job.sh")],
                       env=dict(os.environ, SLURM_CONF=str(slurm.conf)), check=True, capture_output=True)
        names = list(VARIANTS)
        result = {}
        for line in (root / "times").read_text().splitlines():
            index, width, start, end = line.split()
            rate = (options.steps // int(width)) * int(width) / (float(end) - float(start))
            result.setdefault(names[int(index)], {})[f"{width} at a time"] = round(rate, 1)
        print(json.dumps({"command": " ".join(["srun_options.py", *sys.argv[1:]]), "steps": options.steps,
                          "steps_per_second": result}, indent=1))
    finally:
        slurm.stop()
        shutil.rmtree(slurm.root, ignore_errors=True)
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
