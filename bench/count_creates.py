"""Files, folders and links made per job, by kind of process, over a `once` loop of N jobs.

Making an inode (a file or a folder) is the dearest step of a small job's trip on a disk
like this VM's (0.2-0.7 ms of CPU each, against 10-25 µs for a rename, link, unlink or
read), so what a change to the hot path saves shows first in these counts.  The trivial
jobs of ``bench/overhead.py`` are renamed into the dropbox at once, then ``dropbox-runner
once`` runs under ``strace -f -ff`` until all are finished; each traced process is sorted
by what it executed (the submitter, an ``on_hpc`` command, a runner, a job's shell), and
its successful calls are counted per job: ``create`` (an ``open`` with ``O_CREAT``),
``mkdir``, ``link``, ``rename``, ``unlink`` (files and folders), ``rmdir``, the syncs,
plain ``open``; failed calls are counted apart.  Needs ``strace``.

    python bench/count_creates.py --jobs 200
"""
from __future__ import annotations

import argparse
import collections
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from overhead import count_finished, drop, prepare_jobs, write_config

TRACED = "openat,open,mkdir,mkdirat,link,linkat,symlink,rename,renameat,renameat2,unlink,unlinkat,rmdir," \
         "execve,fsync,fdatasync,syncfs"
CALLS = ("mkdir", "link", "rename", "unlink", "rmdir", "fsync", "fdatasync", "syncfs", "symlink")
MAX_CYCLES = 40


def kind_of(trace: str) -> str:
    """Which process a trace is, from the program it executed (a fork that did not exec is
    the submitter's)."""
    executed = re.search(r'execve\("[^"]*", \[(.*?)\]', trace)
    if not executed:
        return "submitter"
    argv = executed.group(1)
    if "on_hpc" in argv:
        return "runner" if "runner" in argv else "on_hpc command"
    if "dropbox_runner" in argv:
        return "submitter"
    return "exec " + argv.split(",")[0][:40]


def count(trace: str) -> collections.Counter[str]:
    counts: collections.Counter[str] = collections.Counter()
    for line in trace.splitlines():
        if " = -1" in line:
            counts["failed"] += 1
            continue
        if line.startswith(("openat(", "open(")):
            counts["create" if "O_CREAT" in line else "open"] += 1
        for call in CALLS:
            if re.match(call + r"(at|at2)?\(", line):
                counts[call] += 1
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--keep", action="store_true", help="keep the run's folder (traces included)")
    args = parser.parse_args()
    if not shutil.which("strace"):
        sys.exit("count_creates needs strace")
    root = Path(tempfile.mkdtemp(prefix="dbr-count-"))
    config = write_config(root, "local", args.slots)
    drop(prepare_jobs(root, args.jobs), root / "dropbox")
    traces = root / "trace"
    traces.mkdir()
    cycles = 0
    while count_finished(root / "dropbox") < args.jobs and cycles < MAX_CYCLES:
        subprocess.run(["strace", "-f", "-ff", "-o", str(traces / f"c{cycles}"), "-e", f"trace={TRACED}",
                        sys.executable, "-m", "dropbox_runner.cli", "once", "--config", str(config)],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cycles += 1
        time.sleep(0.3)
    finished = count_finished(root / "dropbox")
    kinds: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for path in traces.iterdir():
        trace = path.read_text(errors="replace")
        kinds[kind_of(trace)].update(count(trace))
    print(f"{finished} of {args.jobs} jobs finished in {cycles} cycles; per job:")
    for kind, counts in sorted(kinds.items()):
        print(f"  {kind}: " + ", ".join(f"{call} {number / args.jobs:.2f}" for call, number in sorted(counts.items())))
    if args.keep:
        print(f"kept in {root}")
    else:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
