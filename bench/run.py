"""All benchmarks in one run, and the table in the README regenerated from it.

    python bench/run.py            # as root: starts the tests' real Slurm, Grid Engine and sshd
    python bench/run.py --quick    # smaller sizes, for a first look

Each benchmark is its own script printing JSON (bench/*.py); this one runs them as
separate processes, one after another on the same machine, and writes the results
between the README's bench markers (and the whole JSON to bench/results/latest.json).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
README = HERE.parent / "README.md"
START, END = "<!-- bench:start -->", "<!-- bench:end -->"


def run(script: str, *args: str) -> dict:
    print(f"running {script} {' '.join(args)}", file=sys.stderr, flush=True)
    done = subprocess.run([sys.executable, str(HERE / script), *args], capture_output=True, text=True,
                          timeout=3600, env=dict(os.environ, PYTHONSAFEPATH="1"))
    if done.returncode != 0:
        raise SystemExit(f"{script} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def ssh_burst(jobs: int) -> dict:
    """A burst through sshd and Slurm, with the tests' own fixtures: the test that checks
    this path records its counts (logins and sessions from sshd's log) for the table."""
    print(f"running tests/test_slurm_ssh.py with {jobs} jobs", file=sys.stderr, flush=True)
    out = HERE / "results" / "ssh_burst.json"
    out.parent.mkdir(exist_ok=True)
    env = dict(os.environ, PYTHONSAFEPATH="1", DBR_SLURM_SSH_BURST=str(jobs), DBR_BENCH_OUT=str(out))
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           str(HERE.parent / "tests" / "test_slurm_ssh.py"), "-k", "burst"],
                          capture_output=True, text=True, timeout=1800, env=env, cwd=HERE.parent / "tests")
    if done.returncode != 0:
        raise SystemExit(f"the SSH burst failed:\n{done.stdout[-3000:]}")
    return json.loads(out.read_text())


def machine() -> str:
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{platform.node()}: {os.cpu_count()} cores, {memory:.0f} GiB, {platform.platform()}"


def table(results: dict) -> str:
    rows = ["| benchmark | figure |", "| --- | --- |"]
    for name, burst in results["bursts"].items():
        rows.append(f"| burst, {name} | {burst['wall_s']} s wall, {burst['sbatch']['submitter']} sbatch, "
                    f"{burst['squeue']['submitter'] + burst['squeue']['runners']} squeue, {burst['cycles']} cycles, "
                    f"{burst['runners']} runners, submitter CPU {burst['submitter_cpu_s']} s, "
                    f"overhead {burst['overhead_per_job_ms']} ms/job |")
    sge = results["sge_burst"]
    rows.append(f"| burst on Grid Engine, {sge['jobs']} jobs, batched | {sge['wall_s']} s wall, "
                f"{sge['qsub']['submitter']} qsub, {sge['qstat']['submitter'] + sge['qstat']['runners']} qstat, "
                f"{sge['cycles']} cycles, {sge['runners']} runners, submitter CPU {sge['submitter_cpu_s']} s, "
                f"overhead {sge['overhead_per_job_ms']} ms/job |")
    ssh = results["ssh_burst"]
    rows.append(f"| burst through sshd and Slurm, {ssh['jobs']} jobs (cron-style cycles) | {ssh['wall_s']} s wall, "
                f"{ssh['sbatch']} sbatch, {ssh['squeue']} squeue, {ssh['cycles']} cycles, {ssh['ssh_logins']} SSH "
                f"logins, {ssh['remote_commands']} remote commands, {ssh['rsync_runs']} rsync runs |")
    batched, single = results["bursts"]["100 jobs, batched"], results["bursts"]["100 jobs, 1:1"]
    rows.append(f"| 1:1 ÷ batched, 100 jobs | wall {single['wall_s'] / batched['wall_s']:.1f}x, "
                f"sbatch {single['sbatch']['submitter'] / batched['sbatch']['submitter']:.0f}x |")
    for latency in results["latency"]:
        rows.append(f"| watch latency, {latency['backend']} ({latency['runs']} jobs, medians) | drop to queued "
                    f"{latency['drop_to_queued_median_s']:.2f} s, job end to result "
                    f"{latency['end_to_result_median_s']:.2f} s |")
    for case, transfer in results["transfer"]["transfer"].items():
        rows.append(f"| staging over SSH, {case} | submitter {transfer['submitter_s']:.2f} s, plain rsync "
                    f"{transfer['rsync_s']:.2f} s, ratio {transfer['ratio']:.2f} |")
    for scale in results["scale"]["scale"]:
        rows.append(f"| cycle with {scale['old_results']} old results | idle {scale['idle_cycle_s']:.3f} s; "
                    f"taking {scale['new_jobs']} new jobs {scale['intake_cycle_s']:.1f} s "
                    f"({scale['intake_per_job_ms']:.1f} ms/job) |")
    for steps in results.get("steps", []):
        rows.append(f"| a job as a Slurm step vs a process, {steps['cluster']} cluster | step "
                    f"{steps['step']['job_ms_median']:.0f} ms (p90 {steps['step']['job_ms_p90']:.0f}), process "
                    f"{steps['process']['job_ms_median']:.0f} ms (p90 {steps['process']['job_ms_p90']:.0f}) per job |")
    listing = results["scale"]["list"]
    rows.append(f"| `list` over {listing['results']} results | query {1000 * listing['list_query_s']:.1f} ms, "
                f"whole command {listing['list_command_s']:.2f} s |")
    for policy in results["simulate"]["results"]:
        turnaround = policy["turnaround_hours"]
        rows.append(f"| simulated 30 days, {policy['policy']} | turnaround p50 {turnaround['p50']:.1f} h, "
                    f"p90 {turnaround['p90']:.1f} h, {policy['submissions']} submissions, "
                    f"{policy['gpu_hours_held']:.0f} GPU-h held |")
    rows += overhead_rows(results["overhead"])
    return "\n".join(rows)


def overhead_rows(overhead: dict) -> list[str]:
    """bench/overhead.py's runs: wall against the floor (and HyperQueue), CPU, dispatch, fsyncs."""
    floor = next(run["wall_s"] for run in overhead["runs"] if run["contestant"].startswith("floor"))
    rows = []
    for run in overhead["runs"]:
        figures = [f"{run['wall_s']:.2f} s wall ({run['wall_s'] / floor:.1f}x the floor)"]
        if run["cpu_ms_per_job"] is not None:
            figures.append(f"submitter CPU {run['cpu_ms_per_job']:.1f} ms/job")
        if run["dispatch_per_s"]:
            figures.append(f"{run['dispatch_per_s']:.0f} starts/s")
        if run["fsyncs_per_job"] is not None:
            figures.append(f"{run['fsyncs_per_job']} fsyncs/job")
        rows.append(f"| {run['jobs']} trivial jobs, {run['contestant']} | {', '.join(figures)} |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    big = 200 if options.quick else 1000
    started = time.monotonic()
    results = {"machine": machine(), "bursts": {
        "100 jobs, batched": run("burst.py", "--jobs", "100", "--start-cluster"),
        "100 jobs, 1:1": run("burst.py", "--jobs", "100", "--runner-per-job", "--start-cluster"),
        f"{big} jobs, batched": run("burst.py", "--jobs", str(big), "--start-cluster"),
    }}
    results["sge_burst"] = run("burst.py", "--scheduler", "sge", "--jobs", "100", "--start-cluster")
    results["ssh_burst"] = ssh_burst(100)
    results["latency"] = [run("latency.py", "--backend", backend, "--runs", "20") for backend in ("local", "ssh")]
    results["transfer"] = run("transfer.py")
    results["scale"] = run("scale.py", *(["--old", "20000", "--new", "2000"] if options.quick else []))
    results["simulate"] = run("simulate.py", "--json", "--no-plot")
    results["overhead"] = run("overhead.py", "--jobs", str(big), "--start-cluster", "--hq", "--json")
    results["steps"] = [run("steps.py"), run("steps.py", "--cgroup")]
    results["seconds"] = round(time.monotonic() - started)
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "latest.json").write_text(json.dumps(results, indent=1))
    text = README.read_text()
    section = (f"{START}\nMeasured by `python bench/run.py{' --quick' if options.quick else ''}` on "
               f"{results['machine']} ({results['seconds']} s):\n\n{table(results)}\n{END}")
    head, _, rest = text.partition(START)
    _, _, tail = rest.partition(END)
    README.write_text(head + section + tail)
    print(table(results))


if __name__ == "__main__":
    main()
