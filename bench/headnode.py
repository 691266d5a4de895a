"""The head node's cycle (``on_hpc cycle``) with N jobs held: its own cost, without the
scheduler (a stub that lists no runner and accepts every submission) or the submitter.

A workspace with N staged jobs of one class (time limit set, so the refusal check runs
too); the first cycle queues them all, the next ones find nothing new, as the cycles of a
long backlog do.  Prints wall and CPU seconds of each cycle as JSON.  ``--code`` names
another checkout's folder holding ``on_hpc/``, to compare two versions on one machine.

    python bench/headnode.py --jobs 10000 [--code /path/to/other/checkout]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def stage(root: str, jobs: int) -> list[str]:
    ids = []
    for number in range(jobs):
        job_id = f"sub.j{number:06d}.x"
        folder = Path(root, "jobs", job_id)
        folder.mkdir(parents=True)
        (folder / "job.sh").write_text("true\n")
        (folder / "job.json").write_text(json.dumps({"class": "default", "expected_seconds": 60, "submitter": "sub"}))
        ids.append(job_id)
    return ids


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--cycles", type=int, default=3)
    parser.add_argument("--code", default=str(REPO), help="folder holding the on_hpc package to measure")
    options = parser.parse_args()
    sys.path.insert(0, options.code)
    from on_hpc import headnode
    from on_hpc.schedulers import Connector

    class Stub(Connector):
        name = "stub"
        lists_at_submission = True

        def submit(self, spec, spec_path, argv, env):
            return "1"

        def list_runners(self):
            return {}

        def last_known_runners(self):
            return {}

        def cancel(self, sched_ids):
            pass

        def cancel_pending(self, sched_ids):
            return sched_ids

    root = tempfile.mkdtemp(prefix="dbr-headnode-")
    try:
        request = {"root": root, "scheduler": "local", "submitter": "sub", "in_flight": stage(root, options.jobs),
                   "classes": {"default": {"slots": 4, "time_limit": 3600, "max_runners": 1}}}
        cycles = []
        for _ in range(options.cycles):
            wall, cpu = time.perf_counter(), time.process_time()
            headnode.cycle(request, sched=Stub(None))
            cycles.append({"wall_s": round(time.perf_counter() - wall, 3),
                           "cpu_s": round(time.process_time() - cpu, 3)})
        print(json.dumps({"command": " ".join(["headnode.py", *sys.argv[1:]]), "jobs": options.jobs,
                          "code": os.path.abspath(options.code), "cycles": cycles}, indent=1))
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
