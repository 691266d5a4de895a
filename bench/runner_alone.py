"""The runner by itself: N trivial jobs already queued, one local runner draining them.

``bench/overhead.py`` times the whole pipeline, where the submitter and the other
processes of a shared machine move the runner's dispatch rate two-fold from run to run.
This one runs ``on_hpc``'s runner in this process (``Runner(spec).run()``) on jobs staged
beforehand, and reports its own CPU per job, user and system apart (``os.times``: the
jobs' processes are children and not counted), and its wall time from start to leaving,
less the idle linger.  Which ``on_hpc`` runs is the one imported as ``on_hpc`` (printed;
not ``dropbox_runner.on_hpc``, which an editable install maps to its own tree): compare two
trees with ``PYTHONPATH=<tree>``, alternating.

    PYTHONPATH=. python bench/runner_alone.py --jobs 1000 --slots 4
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import on_hpc
from on_hpc.files import write_json
from on_hpc.jobstore import JobStore
from on_hpc.runner import Runner

IDLE_SECONDS = 0.3


def stage(store: JobStore, jobs: int) -> None:
    for n in range(jobs):
        job_id = "bench.j%05d" % n
        folder = store.job_dir(job_id)
        os.makedirs(folder)
        with open(os.path.join(folder, "job.sh"), "w") as handle:
            handle.write("true\n")
        write_json(os.path.join(folder, "job.json"), {"id": job_id, "class": "default"}, durable=False)
        store.make_ready(job_id, {})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=4)
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="dbr-runner-alone-", dir="/var/tmp") as root:
        store = JobStore(root)
        store.ensure_layout()
        stage(store, options.jobs)
        spec = {"id": "default-bench", "class": "default", "root": root, "scheduler": "local",
                "slots": options.slots, "idle_timeout": IDLE_SECONDS, "time_limit": None, "warn_seconds": 0,
                "max_attempts": 3, "resources": {"cpus": options.slots}}
        sys.stdout = open(os.devnull, "w")          # the runner's log lines
        before, started = os.times(), time.monotonic()
        Runner(spec).run()
        wall, after = time.monotonic() - started - IDLE_SECONDS, os.times()
        sys.stdout = sys.__stdout__
        done = len(os.listdir(store.done_dir()))
    user, system = after.user - before.user, after.system - before.system
    print(json.dumps({"on_hpc": os.path.dirname(on_hpc.__file__), "jobs": options.jobs, "done": done,
                      "jobs_per_s": round(done / wall),
                      "runner_user_ms_per_job": round(1000 * user / options.jobs, 3),
                      "runner_sys_ms_per_job": round(1000 * system / options.jobs, 3)}))


if __name__ == "__main__":
    main()
