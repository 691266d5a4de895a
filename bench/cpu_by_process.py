"""CPU a job by process: one burst of trivial jobs with local runners under process accounting.

``bench/overhead.py`` reports the submitter's CPU as ``wait4`` gives it (the ``once`` or
``watch`` process with the head-node commands it waited for), and the wall, which two
cores share among everything that runs.  This splits one burst's CPU by process, from the
kernel's accounting record of each process as it exits (``accton``; ``dump-acct`` reads
the file, both in Debian's ``acct``; root):

- the submitter: the ``once`` processes or the ``watch`` daemon (children of this script);
- the head node: ``on_hpc serve`` and the other commands the submitter started;
- the runner: ``on_hpc run``, known as the parent of the jobs;
- the sweeps: the detached processes that remove collected jobs;
- the jobs, counted only: the record's ticks (10 ms) are coarser than a trivial job.

    python bench/cpu_by_process.py --jobs 1000 --mode once    # TMPDIR picks the disk
"""
from __future__ import annotations

import argparse
import collections
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import overhead  # noqa: E402  (beside this script)

TICKS_PER_SECOND = 100          # dump-acct's times: AHZ ticks
RUNNER_IDLE_SECONDS = 6         # the bench's runners leave this long after their last job


@dataclass
class Process:
    comm: str
    cpu_ms: float
    pid: int
    ppid: int


def parse_dump(text: str) -> list[Process]:
    """``dump-acct``'s lines: comm | version | user | system | elapsed | uid | gid | mem |
    io | pid | ppid | ...; times in ticks."""
    processes = []
    for line in text.splitlines():
        fields = [field.strip() for field in line.split("|")]
        if len(fields) < 11:
            continue
        cpu = (float(fields[2]) + float(fields[3])) * 1000 / TICKS_PER_SECOND
        processes.append(Process(fields[0], cpu, int(fields[9]), int(fields[10])))
    return processes


def classify(processes: list[Process], bench_pid: int) -> dict[int, str]:
    """Each process's kind, by its parent (as it was when the process exited): a runner
    outlives the head node that started it, so it is known by its children, the jobs."""
    pythons = {process.pid for process in processes if process.comm.startswith("python")}
    runner_pids = {process.ppid for process in processes if process.comm == "bash" and process.ppid in pythons}
    kinds: dict[int, str] = {}
    for process in processes:
        if process.pid in runner_pids:
            kinds[process.pid] = "runner"
        elif process.ppid == bench_pid and process.comm.startswith("python"):
            kinds[process.pid] = "submitter"
    submitters = {pid for pid, kind in kinds.items() if kind == "submitter"}
    for process in processes:
        if process.pid in kinds:
            continue
        if process.ppid in runner_pids:
            kinds[process.pid] = "jobs"
        elif process.ppid in submitters and process.comm.startswith("python"):
            kinds[process.pid] = "head node"
        elif process.comm.startswith("python"):
            kinds[process.pid] = "sweeps"       # detached: their parent is gone when they end
    return kinds


def measure(jobs: int, mode: str, period: float) -> tuple[float, dict[str, tuple[int, float]]]:
    """One burst under accounting: its wall and, by kind, (processes, CPU ms)."""
    root = Path(tempfile.mkdtemp(prefix="dbr-cpu-"))
    record = root / "pacct"
    record.touch()
    try:
        config = overhead.write_config(root, "local", 4, "process")
        subprocess.run(overhead.submitter_argv("deploy", config), check=True, stdout=subprocess.DEVNULL)
        subprocess.run(["accton", str(record)], check=True, capture_output=True)
        try:
            if mode == "once":
                wall = overhead.once_loop(root, config, jobs, period, [])[0]
            else:
                wall = overhead.watch_daemon(root, config, jobs, [])[0]
            overhead.wait_for_runners(root, limit=RUNNER_IDLE_SECONDS * 10)
        finally:
            subprocess.run(["accton", "off"], capture_output=True)
        dump = subprocess.run(["dump-acct", str(record)], check=True, capture_output=True, text=True).stdout
        processes = parse_dump(dump)
        kinds = classify(processes, os.getpid())
    finally:
        shutil.rmtree(root, ignore_errors=True)
    totals: dict[str, list[float]] = collections.defaultdict(lambda: [0, 0.0])
    for process in processes:
        kind = kinds.get(process.pid)
        if kind:
            totals[kind][0] += 1
            totals[kind][1] += process.cpu_ms
    return wall, {kind: (int(count), cpu) for kind, (count, cpu) in totals.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--mode", choices=["once", "watch"], default="once")
    parser.add_argument("--period", type=float, default=0.3, help="seconds between `once` processes")
    options = parser.parse_args(argv)
    if not (shutil.which("accton") and shutil.which("dump-acct")) or os.geteuid() != 0:
        sys.exit("needs root and Debian's acct (accton, dump-acct): apt-get install acct")
    wall, totals = measure(options.jobs, options.mode, options.period)
    print(f"{options.jobs} jobs, {options.mode}, local runners, {os.environ.get('TMPDIR', '/tmp')}: {wall:.2f} s")
    print("| process | processes | CPU | a job |\n| --- | --- | --- | --- |")
    for kind in ("submitter", "head node", "runner", "sweeps", "jobs"):
        count, cpu = totals.get(kind, (0, 0.0))
        per_job = "(ticks too coarse)" if kind == "jobs" else f"{cpu / options.jobs:.2f} ms"
        print(f"| {kind} | {count} | {cpu:.0f} ms | {per_job} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
