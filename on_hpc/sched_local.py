"""The embedded scheduler: runners are detached processes on this machine.

It is what makes dropbox-runner work on a laptop with no cluster, and it runs the same
queue code as Slurm does, so it is also how the pipeline is tested quickly.
"""
import os
import signal
import time

from .files import listdir, read_json
from .gpus import local_gpus
from .protocol import RunnerState
from .resources import Node, memory_mb, node_cpus, wants_gpus
from .schedulers import Connector, RunnerInfo, kill_job_group


class LocalConnector(Connector):
    name = "local"

    def submit(self, spec, spec_path, argv, env):
        import subprocess  # when first needed (commands.py)
        log_path = os.path.join(self.store.runners_dir(), spec["id"] + ".log")
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                start_new_session=True, close_fds=True, cwd=self.store.root,
            )
        return str(process.pid)

    def list_runners(self):
        found = {}
        for name in listdir(self.store.runners_dir()):
            if not name.endswith(".alive.json"):
                continue
            runner_id = name[: -len(".alive.json")]
            alive = read_json(os.path.join(self.store.runners_dir(), name), {})
            pid = alive.get("pid")
            if pid and _is_runner_process(pid, runner_id):
                deadline = alive.get("deadline")
                left = None if deadline is None else max(0, int(deadline - time.time()))
                found[runner_id] = RunnerInfo(runner_id, str(pid), RunnerState.RUNNING, left)
        return found

    def last_known_runners(self):
        return self.list_runners()

    def cancel(self, sched_ids):
        for sched_id in sched_ids:
            try:
                os.kill(int(sched_id), signal.SIGTERM)
            except (ProcessLookupError, ValueError):
                pass

    def kill_leftovers(self, job_id, claim):
        """A runner killed outright leaves its job's process group running: end it."""
        kill_job_group(claim.get("pgid"), job_id)

    def allocation_gpus(self):
        return local_gpus(None, False)

    def allocation_nodes(self, resources):
        """This machine, with the class's CPUs (or its slots) and memory, and its GPUs
        (``gpus``: NoGpus when a GPU class finds none)."""
        gpus = local_gpus(resources.get("gpus"), wants_gpus(resources))
        return [Node(os.uname().nodename, node_cpus(resources), memory_mb(resources.get("memory")), gpus)]



def _is_runner_process(pid, runner_id):
    try:
        with open("/proc/%d/cmdline" % pid, "rb") as handle:
            return runner_id.encode() in handle.read()
    except (OSError, ValueError):
        return False

