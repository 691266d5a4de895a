"""Slurm: runners are batch jobs.

Commands are built by pure functions and parsed by pure functions, so the Slurm dialect
is tested with plain strings; ``squeue`` is called once per cycle for all runners (the
Slurm manual asks tools not to poll it in loops).
"""
import hashlib
import os
import re
import shlex
import subprocess

from .files import read_json, write_json
from .schedulers import ENDING, PENDING, RUNNING, RunnerInfo, SchedulerUnavailable

STATE_MAP = {
    "PENDING": PENDING, "CONFIGURING": PENDING, "REQUEUED": PENDING, "REQUEUE_HOLD": PENDING,
    "REQUEUE_FED": PENDING, "RESIZING": PENDING,
    "RUNNING": RUNNING,
    "COMPLETING": ENDING, "STOPPED": ENDING, "SUSPENDED": ENDING, "SIGNALING": ENDING,
    "STAGE_OUT": ENDING,
}
JOB_NAME_PREFIX = "dbr."


def job_name(store_tag, runner_id):
    return "%s%s.%s" % (JOB_NAME_PREFIX, store_tag, runner_id)


def sbatch_argv(name, log_path, resources, command):
    """The sbatch call for one runner; ``command`` is the argv the allocation runs."""
    argv = ["sbatch", "--parsable", "--job-name=" + name, "--output=" + log_path,
            "--open-mode=append"]
    if resources.get("partition"):
        argv.append("--partition=" + resources["partition"])
    if resources.get("gres"):
        argv.append("--gres=" + resources["gres"])
    if resources.get("cpus"):
        argv.append("--cpus-per-task=%d" % resources["cpus"])
    if resources.get("memory"):
        argv.append("--mem=" + str(resources["memory"]))
    if resources.get("time_limit"):
        argv.append("--time=%d" % max(1, (resources["time_limit"] + 59) // 60))
    if resources.get("warn_seconds"):
        # B: signals the batch shell only (our runner), which ends its jobs itself.
        argv.append("--signal=B:USR1@%d" % resources["warn_seconds"])
    argv.extend(resources.get("extra_args") or [])
    argv.append("--wrap=exec " + " ".join(shlex.quote(part) for part in command))
    return argv


def parse_sbatch(stdout):
    """``--parsable`` prints ``jobid`` or ``jobid;cluster``."""
    text = stdout.strip().splitlines()[-1] if stdout.strip() else ""
    job_id = text.split(";")[0]
    if not job_id.isdigit():
        raise ValueError("sbatch printed no job id: %r" % stdout)
    return job_id


SQUEUE_FORMAT = "%i|%j|%T|%L"


def squeue_argv():
    return ["squeue", "--me", "--noheader", "--format=" + SQUEUE_FORMAT]


def parse_squeue(stdout, store_tag):
    """Runners of this workspace, by runner id, from the one squeue listing."""
    prefix = JOB_NAME_PREFIX + store_tag + "."
    found = {}
    for line in stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 4 or not parts[1].startswith(prefix):
            continue
        sched_id, name, state, left = parts
        runner_id = name[len(prefix):]
        found[runner_id] = RunnerInfo(runner_id, sched_id, STATE_MAP.get(state, ENDING),
                                      parse_time_left(left))
    return found


def parse_time_left(text):
    """Seconds from squeue's ``%L`` ([days-]hours:minutes:seconds); None if unlimited."""
    match = re.match(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$", text.strip())
    if not match:
        return None
    days, hours, minutes, seconds = (int(group or 0) for group in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + seconds


def scancel_argv(sched_ids):
    return ["scancel"] + list(sched_ids)


class SlurmConnector(object):
    name = "slurm"

    def __init__(self, store):
        self.store = store
        self.tag = store_tag(store.root)
        self._cache = os.path.join(store.runners_dir(), "squeue-last.json")

    def submit(self, spec, spec_path, argv, env):
        log_path = os.path.join(self.store.runners_dir(), spec["id"] + ".log")
        call = sbatch_argv(job_name(self.tag, spec["id"]), log_path, spec["resources"], argv)
        done = subprocess.run(call, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              universal_newlines=True, cwd=self.store.root)
        if done.returncode != 0:
            raise RuntimeError("sbatch failed (%d): %s" % (done.returncode, done.stderr.strip()))
        return parse_sbatch(done.stdout)

    def list_runners(self):
        try:
            done = subprocess.run(squeue_argv(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  universal_newlines=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as error:
            raise SchedulerUnavailable("squeue: %s" % error)
        if done.returncode != 0:
            raise SchedulerUnavailable("squeue failed (%d): %s" % (done.returncode, done.stderr.strip()))
        runners = parse_squeue(done.stdout, self.tag)
        write_json(self._cache, {key: list(value) for key, value in runners.items()})
        return runners

    def last_known_runners(self):
        return {key: RunnerInfo(*value) for key, value in read_json(self._cache, {}).items()}

    def cancel(self, sched_ids):
        if sched_ids:
            subprocess.run(scancel_argv(sched_ids), stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def kill_leftovers(self, job_id, claim):
        """Slurm ends every process of a finished allocation itself."""

    def allocation_seconds(self, spec):
        job_id = os.environ.get("SLURM_JOB_ID")
        if not job_id:
            return spec.get("time_limit")
        done = subprocess.run(["squeue", "--noheader", "--jobs=" + job_id, "--format=%L"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
        left = parse_time_left(done.stdout) if done.returncode == 0 else None
        return left if left is not None else spec.get("time_limit")

    def allocation_gpus(self):
        for variable in ("CUDA_VISIBLE_DEVICES", "SLURM_STEP_GPUS", "SLURM_JOB_GPUS"):
            value = os.environ.get(variable, "")
            if value:
                return [gpu for gpu in value.split(",") if gpu]
        return []


def store_tag(root):
    """A short, stable tag of the workspace, so two installations on one account never
    mistake each other's runners."""
    return hashlib.sha256(os.path.abspath(root).encode()).hexdigest()[:6]
