"""Per-job overhead: N trivial jobs through dropbox-runner, next to the floor and HyperQueue.

Every contestant runs the same trivial script once per job (bash writing the time it
started, ``$EPOCHREALTIME``, to one small file), with the same concurrency (``--slots``):

- floor:    the N scripts run directly, ``xargs -P slots bash``: what the jobs themselves cost;
- local:    dropbox-runner on the embedded backend with local runners;
- slurm:    dropbox-runner on the local backend with runners as jobs of a real Slurm
            (the tests' single-node cluster with ``--start-cluster``, else ``SLURM_CONF``);
- hq:       HyperQueue, server and one worker (``LocalCluster``) inside one ``sbatch -c slots``
            of the same Slurm, the client submitting from outside (``--hq``, needs the
            ``hyperqueue`` package: ``pip install '.[bench]'``).

dropbox-runner runs in two modes: ``once``, a cron-style loop of ``dropbox-runner once``
processes (``--period`` seconds apart), and ``watch``, the daemon, started and idle before
the jobs arrive.  Either runs on an installed system: ``dropbox-runner deploy`` has put
``on_hpc`` on the cluster before the clock starts, as the first cycle after an install or
upgrade does once (some 60 ms here, mostly compiling it), where HyperQueue's own install
is not timed either.  The jobs are written beforehand and renamed into the dropbox at once; the
clock runs from that drop to the last ``.job.finished`` (HyperQueue: from its ``sbatch`` to
``wait_for_jobs`` returning).  Figures:

- wall and its ratio to the floor;
- submitter CPU per job: the submitter processes and the children they waited for (the
  ``on_hpc`` commands), as ``wait4`` reports them; not the runners nor the jobs; in
  brackets its user part (file creation is system time, and its cost here moves 30-fold
  with the folder and with how much was removed there just before).  For ``watch``, from
  the drop on: the daemon's own start (some 120 ms here, its imports and first scan) is
  paid once for every burst it serves, where each ``once`` pays its own;
- dispatch rate: jobs started per second while slots were free, from the first to the last
  start time the jobs wrote (trivial jobs leave slots free almost all the time);
- fsyncs per job (``--fsync-jobs``, local backend): a separate, smaller run of each mode
  under ``strace -f -c -e trace=fsync,fdatasync``, so every process of the pipeline (the
  submitter, ``on_hpc``, runners, SQLite) is counted and the timed runs are not slowed.

Every contestant runs ``--rounds`` times (3 by default), the contestants taking turns
within each round, and each figure is the median of its rounds, the wall's spread beside
it.  One round each was not enough to compare contestants this close: the machine's speed
drifts from one minute to the next, and a Slurm job starts at one of slurmctld's
once-a-second scheduling passes, at the same fraction of every second, so where in the
second a contestant asks for its allocation moves its run by up to a second.  So within a
round every contestant's clock starts at the same fraction of a second of the wall clock
(its drop; HyperQueue's ``sbatch``), and the rounds' fractions are spread evenly over the
second from a random first one: the contestants of a round meet the same scheduling pass,
and over the rounds they meet it as jobs arriving at any moment would.  Without that the
fraction was not random either: each run began as the last one's runner left, itself in
step with the passes.

    python bench/overhead.py --jobs 1000 --start-cluster --hq          # as root
    python bench/overhead.py --jobs 200 --backends local --modes once  # a first look
    python bench/overhead.py --jobs 1000 --start-cluster --hq --backends slurm --queue-wait 10   # a busy cluster

Prints a table, and the whole result as JSON with ``--json``.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
SCRIPT = "printf '%s\\n' \"$EPOCHREALTIME\" > {out}\n"
TEMPLATE = "# dropbox-runner: class=default\n" + SCRIPT.format(out="<<workspace>>/output/<<out>>")
POLL_SECONDS = 0.05
QUEUE_WAIT_ARGS: list[str] = []     # sbatch arguments that make every allocation wait (--queue-wait)
TIMEOUT_SECONDS = 1800
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")     # the unit of /proc/PID/stat's times


@dataclass
class Run:
    contestant: str
    jobs: int
    wall_s: float
    submitter_cpu_s: float | None = None
    submitter_user_s: float | None = None     # of that, in user mode: the part the filesystem moves least
    dispatch_per_s: float | None = None
    ok: int | None = None
    cycles: int | None = None
    fsyncs_per_job: float | None = None
    notes: dict = field(default_factory=dict)

    @property
    def cpu_ms_per_job(self) -> float | None:
        return None if self.submitter_cpu_s is None else 1000 * self.submitter_cpu_s / self.jobs


def dispatch_rate(out_dir: Path) -> float | None:
    """Jobs started per second, from the start times the trivial jobs wrote."""
    starts = []
    for entry in os.scandir(out_dir):
        try:
            starts.append(float(Path(entry.path).read_text().split()[0]))
        except (OSError, ValueError, IndexError):
            continue
    if len(starts) < 2 or max(starts) == min(starts):
        return None
    return (len(starts) - 1) / (max(starts) - min(starts))


# -- the floor ------------------------------------------------------------------------------
def floor(root: Path, jobs: int, slots: int) -> Run:
    scripts, out = root / "floor-scripts", root / "floor-out"
    scripts.mkdir()
    out.mkdir()
    for n in range(jobs):
        (scripts / f"j{n}.sh").write_text(SCRIPT.format(out=out / f"o{n}"))
    names = "\n".join(str(scripts / f"j{n}.sh") for n in range(jobs)).encode()
    started = time.monotonic()
    subprocess.run(["xargs", "-P", str(slots), "-n", "1", "bash"], input=names, check=True)
    wall = time.monotonic() - started
    return Run("floor (xargs -P)", jobs, round(wall, 3), dispatch_per_s=dispatch_rate(out), ok=len(os.listdir(out)))


# -- dropbox-runner --------------------------------------------------------------------------
def write_config(root: Path, scheduler: str, slots: int, launch: str = "step") -> Path:
    templates = root / "templates"
    templates.mkdir()
    (templates / "trivial.template").write_text(TEMPLATE)
    for sub in ("dropbox", "out", "pending"):
        (root / sub).mkdir()
    path = root / "config.yaml"
    path.write_text(yaml.safe_dump({
        "dropbox": str(root / "dropbox"), "backend": "local", "scheduler": scheduler,
        "cluster_root": str(root / "cluster"), "templates": str(templates), "grace_seconds": 0,
        "cache_max_bytes": 0, "tick": "1h",
        "classes": {"default": {"slots": slots, "idle_timeout": 5, "max_runners": 1,
                                **({"launch": "process"} if launch == "process" and scheduler == "slurm" else {}),
                                **({"extra_args": QUEUE_WAIT_ARGS} if QUEUE_WAIT_ARGS and scheduler == "slurm"
                                   else {})}}}))
    return path


def prepare_jobs(root: Path, jobs: int) -> list[Path]:
    """The job files, written beforehand beside the dropbox, to be renamed in at once.
    Each is marked written as the client's ``submit`` marks it (its mtime set a nanosecond
    back, which moves its ctime past it): a file renamed in within the clock tick of its
    last write looks written in place, and waits to settle (1 run in 3 here, for the last
    file, which then ended the run 0.4-0.7 s later)."""
    pending = []
    for n in range(jobs):
        path = root / "pending" / f"t{n:06d}.job"
        path.write_text(yaml.safe_dump({"script": "trivial", "output_map": {"out": str(root / "out" / f"o{n}")}}))
        written = path.stat().st_mtime_ns - 1
        os.utime(path, ns=(written, written))
        pending.append(path)
    return pending


def at_phase(phase: float) -> None:
    """Sleep until the wall clock is ``phase`` (0-1) into a second: where the contestants
    of a round start their clocks (see the module's docstring)."""
    time.sleep((phase - time.time()) % 1.0)


def drop(pending: list[Path], dropbox: Path) -> float:
    started = time.monotonic()
    for path in pending:
        os.rename(path, dropbox / path.name)
    return started


def count_finished(dropbox: Path) -> int:
    with os.scandir(dropbox) as entries:
        return sum(entry.name.endswith(".job.finished") for entry in entries)


def last_result_after(dropbox: Path, dropped_at: float) -> float:
    """Seconds from the drop to the last result in place: the newest ``.job.finished``'s
    ctime, which its rename set (``dropped_at`` is the wall clock's time of the drop).
    This is the issue's measure, drop to the last result, without what a watcher adds:
    the ``once`` process's exit after its last result, or half the polling period of the
    loop that waits for the watch daemon, whose count of the dropbox (2.5 ms of CPU at
    3000 entries, every 50 ms) took a share of the two cores from the daemon it timed.
    That loop now counts only once the daemon has logged a cycle since it last looked."""
    with os.scandir(dropbox) as entries:
        last = max(entry.stat(follow_symlinks=False).st_ctime for entry in entries
                   if entry.name.endswith(".job.finished"))
    return last - dropped_at


def count_ok(dropbox: Path) -> int:
    ok = 0
    for entry in os.scandir(dropbox):
        if entry.name.endswith(".job.finished"):
            ok += "\n  status: ok\n" in Path(entry.path).read_text()
    return ok


def submitter_argv(verb: str, config: Path) -> list[str]:
    return [sys.executable, "-m", "dropbox_runner.cli", verb, "--config", str(config)]


def cpu_of(rusage) -> tuple[float, float]:
    """(user + system, user) seconds: creating a file costs 0.02-0.7 ms of system time on
    this VM's journal-less ext4 depending on the folder and what was removed before, so
    the user part is the steadier figure of the submitter's own work."""
    return rusage.ru_utime + rusage.ru_stime, rusage.ru_utime


def cpu_until_now(pid: int) -> tuple[float, float]:
    """``cpu_of`` a live process so far: what ``wait4`` would report of it and the
    children it has waited for, were it to end now (``/proc/PID/stat``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    user, system, children_user, children_system = (int(ticks) / CLOCK_TICKS for ticks in fields[11:15])
    return user + system + children_user + children_system, user + children_user


def once_loop(root: Path, config: Path, jobs: int, period: float, wrap: list[str],
              phase: float | None = None) -> tuple[float, tuple[float, float], int]:
    dropbox = root / "dropbox"
    pending = prepare_jobs(root, jobs)
    if phase is not None:
        at_phase(phase)
    dropped_at = time.time()
    started = drop(pending, dropbox)
    cpu, user, cycles = 0.0, 0.0, 0
    with open(root / "submitter.log", "ab") as log:
        while True:
            # under strace: one summary per cycle (``-o`` would overwrite the last one)
            argv = wrap[:-1] + [f"{wrap[-1]}.{cycles}"] if wrap else []
            process = subprocess.Popen(argv + submitter_argv("once", config), stdout=log, stderr=log)
            _, status, rusage = os.wait4(process.pid, 0)
            process.returncode = os.waitstatus_to_exitcode(status)
            cpu, user = cpu + cpu_of(rusage)[0], user + cpu_of(rusage)[1]
            cycles += 1
            if process.returncode != 0:
                raise SystemExit(f"dropbox-runner once failed; see {root / 'submitter.log'}")
            if count_finished(dropbox) >= jobs:
                return last_result_after(dropbox, dropped_at), (cpu, user), cycles
            if time.monotonic() - started > TIMEOUT_SECONDS:
                raise SystemExit(f"once loop: not done after {TIMEOUT_SECONDS} s")
            time.sleep(period)


def watch_daemon(root: Path, config: Path, jobs: int, wrap: list[str],
                 phase: float | None = None) -> tuple[float, tuple[float, float], None]:
    dropbox = root / "dropbox"
    pending = prepare_jobs(root, jobs)
    log_path = root / "submitter.log"
    with open(log_path, "ab") as log:
        process = subprocess.Popen(wrap + submitter_argv("watch", config), stdout=log, stderr=log)
    target = process.pid
    try:
        deadline = time.monotonic() + 60
        while b"watching " not in log_path.read_bytes():
            if process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the watch daemon did not start; see {log_path}")
            time.sleep(POLL_SECONDS)
        if wrap:        # under strace: the daemon is strace's child
            target = int(Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()[0])
        if phase is not None:
            at_phase(phase)
        before = cpu_until_now(process.pid)
        dropped_at = time.time()
        started = drop(pending, dropbox)
        with open(log_path, "rb") as log:
            tail = b""
            while True:
                fresh = tail + log.read()
                if b"cycle:" in fresh and count_finished(dropbox) >= jobs:
                    break
                tail = fresh[-len(b"cycle:") + 1:]      # a line read in halves
                if process.poll() is not None:
                    raise SystemExit(f"the watch daemon died; see {log_path}")
                if time.monotonic() - started > TIMEOUT_SECONDS:
                    raise SystemExit(f"watch: not done after {TIMEOUT_SECONDS} s")
                time.sleep(POLL_SECONDS)
        wall = last_result_after(dropbox, dropped_at)
    finally:
        rusage = stop(process.pid, target)
    process.returncode = 0
    total, user = cpu_of(rusage)
    return wall, (total - before[0], user - before[1]), None


def stop(pid: int, target: int):
    """SIGTERM the daemon (again every few seconds: under strace one can be lost) and
    return the rusage of ``pid`` and what it waited for."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(target, signal.SIGTERM)
        except ProcessLookupError:
            pass
        for _ in range(40):
            done, _, rusage = os.wait4(pid, os.WNOHANG)
            if done:
                return rusage
            time.sleep(0.05)
    os.kill(pid, signal.SIGKILL)
    return os.wait4(pid, 0)[2]


def dropbox_runner(root: Path, scheduler: str, mode: str, jobs: int, slots: int, period: float,
                   strace_out: Path | None = None, launch: str = "step", phase: float | None = None) -> Run:
    config = write_config(root, scheduler, slots, launch)
    subprocess.run(submitter_argv("deploy", config), check=True, stdout=subprocess.DEVNULL)     # installed
    wrap = ["strace", "-f", "-c", "-e", "trace=fsync,fdatasync", "-o"] if strace_out else []
    if mode == "once":
        wall, cpu, cycles = once_loop(root, config, jobs, period, wrap and wrap + [str(strace_out)], phase)
    else:
        wall, cpu, cycles = watch_daemon(root, config, jobs, wrap and wrap + [f"{strace_out}.watch"], phase)
    wait_for_runners(root)
    label = (f"dropbox-runner {mode}, {scheduler} runners" + (" (jobs as processes)" if scheduler == "slurm"
                                                                and launch == "process" else "")
             + (f" (every {period:g} s)" if mode == "once" else ""))
    return Run(label, jobs, round(wall, 3), round(cpu[0], 3), round(cpu[1], 3), dispatch_rate(root / "out"),
               count_ok(root / "dropbox"), cycles)


def wait_for_runners(root: Path, limit: float = 60) -> None:
    """Until no process runs from ``root``: a contestant's runners stay up for their idle
    timeout after its last job (some 4.6 s here) and ended in the middle of the next
    contestant's run.  On Slurm, where ``watch`` ran right after ``once``, it was the
    slower in 4 rounds of 6 (medians 2.72 and 2.72 s); with this wait, in 1 of 5 (2.47
    against 2.52 s)."""
    needle = str(root).encode()
    deadline = time.monotonic() + limit
    while any(needle in cmdline(pid) for pid in os.listdir("/proc") if pid.isdigit()):
        if time.monotonic() > deadline:
            raise SystemExit(f"processes under {root} still running {limit:g} s after the run")
        time.sleep(0.2)


def cmdline(pid: str) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as file:
            return file.read()
    except OSError:
        return b""


def fsyncs(strace_out: Path) -> int:
    """Calls of fsync and fdatasync in the ``strace -c`` summaries of a run."""
    total = 0
    for path in strace_out.parent.glob(strace_out.name + ".*"):
        total += sum_calls(path.read_text())
    return total


def sum_calls(summary: str) -> int:
    total = 0
    for line in summary.splitlines():
        fields = line.split()
        if fields and fields[-1] in ("fsync", "fdatasync"):
            total += int(fields[3])     # % time, seconds, usecs/call, calls, [errors,] syscall
    return total


# -- HyperQueue --------------------------------------------------------------------------------
HQ_SERVER = """
import sys, time
from pathlib import Path
from hyperqueue.cluster import LocalCluster, WorkerConfig
cluster = LocalCluster(sys.argv[1], WorkerConfig(cores=int(sys.argv[3])))
Path(sys.argv[1], "up").touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.05)
cluster.stop()
"""


def hyperqueue(root: Path, jobs: int, slots: int, phase: float) -> Run:
    from hyperqueue import Client, Job

    server_dir, stop, out, scripts = root / "hq-server", root / "hq-stop", root / "hq-out", root / "hq-scripts"
    for folder in (server_dir, out, scripts):
        folder.mkdir()
    (root / "hq_server.py").write_text(HQ_SERVER)
    for n in range(jobs):
        (scripts / f"j{n}.sh").write_text(SCRIPT.format(out=out / f"o{n}"))
    at_phase(phase)
    started = time.monotonic()
    sbatch = subprocess.run(["sbatch", "--parsable", "-c", str(slots), "-o", str(root / "hq.log"), *QUEUE_WAIT_ARGS,
                             "--wrap",
                             f"exec {sys.executable} {root / 'hq_server.py'} {server_dir} {stop} {slots}"],
                            capture_output=True, text=True, check=True)
    try:
        while not (server_dir / "up").exists():
            if time.monotonic() - started > 120:
                raise SystemExit(f"HyperQueue did not start in its allocation: {(root / 'hq.log').read_text()}")
            time.sleep(0.02)
        client = Client(str(server_dir))
        job = Job()
        for n in range(jobs):
            job.program(["bash", str(scripts / f"j{n}.sh")], stdout=None, stderr=None)
        submitted = client.submit(job)
        client.wait_for_jobs([submitted])
        wall = time.monotonic() - started
    finally:
        stop.touch()
        deadline = time.monotonic() + 30
        while sbatch.stdout.strip() in subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True,
                                                      text=True).stdout.split() and time.monotonic() < deadline:
            time.sleep(0.1)
    return Run("HyperQueue (LocalCluster in one sbatch)", jobs, round(wall, 3), dispatch_per_s=dispatch_rate(out),
               ok=len(os.listdir(out)))


def median_of(rounds: list[Run]) -> Run:
    """One contestant's rounds as one row: the median of each figure, every round's wall
    kept (``notes["walls"]``) for the spread."""
    if len(rounds) == 1:
        return rounds[0]

    def median(name: str):
        values = [getattr(run, name) for run in rounds if getattr(run, name) is not None]
        return round(statistics.median(values), 3) if values else None

    oks = [run.ok for run in rounds if run.ok is not None]
    return Run(rounds[0].contestant, rounds[0].jobs, median("wall_s"), median("submitter_cpu_s"),
               median("submitter_user_s"), median("dispatch_per_s"), min(oks) if oks else None,
               median("cycles"), notes={"walls": [run.wall_s for run in rounds]})


# -- the table -------------------------------------------------------------------------------------
def table(runs: list[Run]) -> str:
    floors = {run.jobs: run.wall_s for run in runs if run.contestant.startswith("floor")}
    hq = {run.jobs: run.wall_s for run in runs if run.contestant.startswith("HyperQueue")}
    rows = ["| jobs | contestant | wall (spread) | ÷ floor | ÷ HyperQueue | submitter CPU/job | dispatch/s "
            "| fsyncs/job | cycles |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for run in runs:
        ratio = f"{run.wall_s / floors[run.jobs]:.1f}x" if run.jobs in floors else ""
        to_hq = f"{run.wall_s / hq[run.jobs]:.2f}x" if run.jobs in hq and "slurm" in run.contestant else ""
        cpu = (f"{run.cpu_ms_per_job:.2f} ms ({1000 * run.submitter_user_s / run.jobs:.2f} user)"
               if run.cpu_ms_per_job is not None else "")
        rate = f"{run.dispatch_per_s:.0f}" if run.dispatch_per_s else ""
        sync = f"{run.fsyncs_per_job:.1f}" if run.fsyncs_per_job is not None else ""
        walls = run.notes.get("walls", [])
        spread = f" ({min(walls):.2f}-{max(walls):.2f})" if len(walls) > 1 else ""
        rows.append(f"| {run.jobs} | {run.contestant} | {run.wall_s:.2f} s{spread} | {ratio} | {to_hq} | {cpu} "
                    f"| {rate} | {sync} | {'' if run.cycles is None else f'{run.cycles:g}'} |")
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, action="append", help="N (repeatable; default 1000 and 10000)")
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--period", type=float, default=0.3, help="seconds between `once` cycles")
    parser.add_argument("--backends", nargs="+", default=["local", "slurm"], choices=["local", "slurm"])
    parser.add_argument("--modes", nargs="+", default=["once", "watch"], choices=["once", "watch"])
    parser.add_argument("--launch", choices=["step", "process"], default="step",
                        help="Slurm runners: jobs as job steps (srun, the default) or as processes")
    parser.add_argument("--hq", action="store_true", help="run HyperQueue in one Slurm allocation too")
    parser.add_argument("--rounds", type=int, default=3, help="runs of each contestant, taking turns; medians")
    parser.add_argument("--fsync-jobs", type=int, default=200, help="jobs in the strace run (0: none)")
    parser.add_argument("--start-cluster", action="store_true",
                        help="start the tests' single-node Slurm (root) instead of using SLURM_CONF")
    parser.add_argument("--queue-wait", type=float, default=0,
                        help="seconds every Slurm allocation waits before it starts (sbatch --begin=now+N), as on "
                             "a busy cluster, for the runners and HyperQueue alike")
    parser.add_argument("--json", action="store_true", help="print the JSON result instead of the table")
    options = parser.parse_args(argv)
    if options.queue_wait:
        QUEUE_WAIT_ARGS[:] = [f"--begin=now+{options.queue_wait:.0f}"]
    sizes = options.jobs or [1000, 10000]
    slurm = None
    if options.start_cluster and ("slurm" in options.backends or options.hq):
        sys.path.insert(0, str(REPO / "tests"))
        import realcluster
        slurm = realcluster.start_slurm(gpus=0)
        os.environ["SLURM_CONF"] = str(slurm.conf)
    runs: list[Run] = []
    started = time.monotonic()
    create_us = [file_create_us()]
    first_phase = round(random.random(), 3)
    phases = [round((first_phase + number / options.rounds) % 1.0, 3) for number in range(options.rounds)]
    try:
        chosen = contestants(options)
        for jobs in sizes:
            rounds: list[list[Run]] = [[] for _ in chosen]
            for phase in phases:
                for done, contestant in zip(rounds, chosen):
                    done.append(within(contestant, jobs, phase))
                    print(table(done[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
            runs += [median_of(done) for done in rounds]
        if options.fsync_jobs and "local" in options.backends and shutil.which("strace"):
            for mode in options.modes:
                count = within(traced, mode, options.fsync_jobs, options.slots, options.period)
                for run in runs:
                    if run.contestant.startswith(f"dropbox-runner {mode}, local"):
                        run.fsyncs_per_job = round(count / options.fsync_jobs, 2)
        create_us.append(file_create_us())
    finally:
        remove_roots()
        if slurm is not None:
            slurm.stop()
            shutil.rmtree(slurm.root, ignore_errors=True)
    result = {"command": " ".join([Path(sys.argv[0]).name, *(argv if argv is not None else sys.argv[1:])]),
              "machine": f"{os.cpu_count()} cores", "seconds": round(time.monotonic() - started),
              "start_phases": phases,
              "file_create_us": create_us,
              "runs": [dict(asdict(run), cpu_ms_per_job=run.cpu_ms_per_job) for run in runs]}
    print(json.dumps(result, indent=1) if options.json else
          table(runs) + "\n\nA file made here cost %.0f µs of CPU before the runs, %.0f µs after." % tuple(create_us))
    return 0


def contestants(options: argparse.Namespace) -> list[Callable[[Path, int, float], Run]]:
    """Each contestant as ``run(root, N jobs, start phase)``, in the order they take turns;
    the floor has no queue, and starts its clock at once."""
    chosen = [lambda root, jobs, phase: floor(root, jobs, options.slots)]
    if options.hq:
        chosen.append(lambda root, jobs, phase: hyperqueue(root, jobs, options.slots, phase))
    for backend in options.backends:
        for mode in options.modes:
            chosen.append(lambda root, jobs, phase, backend=backend, mode=mode: dropbox_runner(
                root, backend, mode, jobs, options.slots, options.period, None, options.launch, phase))
    return chosen


def file_create_us(files: int = 300) -> float:
    """CPU to make one empty file in a fresh folder where the runs make theirs, in µs.

    On this project's VM (ext4 without a journal) it moved between 20 and 900 µs from one
    folder to the next and one minute to the next (it depends on the block group the folder
    landed in), and every job's trip makes several: figures of runs minutes apart compare
    only together with it."""
    folder = tempfile.mkdtemp(prefix="dbr-overhead-probe-")
    try:
        started = time.process_time()
        for number in range(files):
            os.close(os.open(os.path.join(folder, str(number)), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return round(1e6 * (time.process_time() - started) / files, 1)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


USED_ROOTS: list[Path] = []


def within(work, *args):
    """``work(root, *args)`` in a fresh temporary folder, removed at the end of the whole
    run (``remove_roots``), not after each contestant: on this VM's disk (ext4 without a
    journal) removing one contestant's tree of some ten thousand files made file creation
    dearer for the next, which was measured up to 2.8x slower than when it ran first."""
    root = Path(tempfile.mkdtemp(prefix="dbr-overhead-"))
    USED_ROOTS.append(root)
    return work(root, *args)


def remove_roots() -> None:
    for root in USED_ROOTS:
        shutil.rmtree(root, ignore_errors=True)
    USED_ROOTS.clear()


def traced(root: Path, mode: str, jobs: int, slots: int, period: float) -> int:
    """fsync and fdatasync calls of a local-backend run, every process of it counted."""
    dropbox_runner(root, "local", mode, jobs, slots, period, strace_out=root / "strace.txt")
    return fsyncs(root / "strace.txt")


if __name__ == "__main__":
    sys.exit(main())
