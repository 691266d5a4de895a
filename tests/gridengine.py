"""A real single-node Grid Engine cell (Debian's Son of Grid Engine 8.1.9), for tests.

Plain module (no pytest import), like realcluster.py: the session fixture ``sge_cluster`` in
conftest.py uses it, and it can be driven by hand from a root shell::

    from tests.gridengine import start_gridengine
    sge = start_gridengine()
    sge.run("qstat", "-f")
    sge.stop()

Each cell lives in a fresh world-readable folder under /tmp (``dbr-sge-*``) with its own
SGE_ROOT (links to the installed binaries plus the cell's ``common`` folder), classic
spooling, and free qmaster/execd ports, so parallel sessions on one machine coexist.  A client
reaches a cell through four environment variables (``GridEngine.env_vars``).

What had to be learnt to make Debian's packages run a cell in a container, as root:
- the packages are installed unconfigured (debconf ``gridengineconfig false``, see
  scripts/install-system-deps.sh); ``spoolinit`` + ``spooldefaults`` (what Debian's own
  ``init_cluster`` runs) then build a cell anywhere;
- 127.0.0.1 resolves to ``localhost`` while ``gethostname()`` says something else, and
  qmaster refuses such a client ("access denied ... not identical to clients host name")
  unless ``common/host_aliases`` makes the two names one host;
- ``admin_user none`` keeps the daemons root (they switch user for each job), and
  ``min_uid 0`` lets the tests' root-run pipelines submit too;
- the scheduler runs every 15 s by default: the fixture makes it 1 s, and drops the queue's
  load threshold (a busy shared test machine would otherwise put the queue in alarm).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

import realcluster
from realcluster import (
    ClusterError,
    _alive,
    _free_ports,
    _mkdtemp,
    _pids_mentioning,
    _read_pid,
    _run,
    _terminate,
    _wait_for,
    ensure_account,
    tail,
)

SGE_BIN = Path("/usr/lib/gridengine")          # Debian: the daemons and the real clients
SGE_SHARE = Path("/var/lib/gridengine")        # Debian's SGE_ROOT: bin, lib, utilbin, util
SGE_PROGRAMS = (SGE_BIN / "sge_qmaster", SGE_BIN / "sge_execd", Path("/usr/bin/qsub"))
QUEUE = "all.q"
GPU_QUEUE = "gpu.q"
PE = "smp"
GPU_COMPLEX = "gpu"
# Grid Engine 8.1 counts GPUs but binds none: sites do it in a prolog or starter method.
# The cell's gpu.q, the only queue with GPUs, runs one job at a time, which holds them all.
GPU_STARTER = """#!/bin/sh
CUDA_VISIBLE_DEVICES={devices}; export CUDA_VISIBLE_DEVICES
exec "$@"
"""


@dataclass
class GridEngine:
    root: Path         # the cell's folder: SGE_ROOT, spools, config files written for qconf
    host: str          # the one execution host (and master), as Grid Engine names it
    qmaster_port: int
    execd_port: int
    slots: int = 8
    gpus: int = 2
    cell: str = "default"
    queue: str = QUEUE
    gpu_queue: str = GPU_QUEUE
    pe: str = PE

    @property
    def sge_root(self) -> Path:
        return self.root / "sge"

    @property
    def qmaster_spool(self) -> Path:
        return self.root / "spool" / "qmaster"

    @property
    def execd_spool(self) -> Path:
        return self.root / "spool" / "execd"

    def env_vars(self) -> dict[str, str]:
        """What a client (qsub, qstat, qdel) needs to reach this cell."""
        return {"SGE_ROOT": str(self.sge_root), "SGE_CELL": self.cell,
                "SGE_QMASTER_PORT": str(self.qmaster_port), "SGE_EXECD_PORT": str(self.execd_port)}

    def env(self) -> dict[str, str]:
        return {**os.environ, **self.env_vars()}

    def run(self, *argv, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """A Grid Engine client (qconf, qsub, qstat, qdel...) against this cell, as root."""
        return _run(argv, env=self.env(), check=check, timeout=timeout)

    def job_ids(self) -> list[str]:
        """Every job the cell still lists, of any user."""
        proc = self.run("qstat", "-u", "*", "-xml", timeout=15)
        if proc.returncode != 0:
            return []
        return [e.text for e in ElementTree.fromstring(proc.stdout).iter("JB_job_number")]

    def wait_idle(self, timeout: float = 30) -> None:
        if not _wait_for(lambda: not self.job_ids(), timeout, 0.25):
            raise ClusterError(f"jobs still listed after {timeout}s:\n"
                               + self.run("qstat", "-u", "*").stdout)

    def delete_all(self) -> None:
        """qdel every job of every user (root is the cell's manager)."""
        if self.job_ids():
            self.run("qdel", "-f", "-u", "*", timeout=15)

    def logs(self, lines: int = 40) -> str:
        parts = [f"--- {path} ---\n{tail(path, lines)}" for path in self._message_files()]
        return "\n".join(parts) or f"<no messages files under {self.root}/spool>"

    def _message_files(self) -> list[Path]:
        return [self.qmaster_spool / "messages", *sorted(self.execd_spool.glob("*/messages"))]

    def _daemon_pids(self) -> list[int]:
        files = [self.qmaster_spool / "qmaster.pid", *self.execd_spool.glob("*/execd.pid")]
        return [p for p in map(_read_pid, files) if p and _alive(p)]

    def stop(self) -> None:
        """Delete leftover jobs, stop both daemons, end anything still running in this cell."""
        if (self.qmaster_spool / "qmaster.pid").exists():
            try:
                self.delete_all()
                _wait_for(lambda: not self.job_ids(), 15, 0.25)
            except (OSError, subprocess.TimeoutExpired, ElementTree.ParseError):
                pass
        _terminate(self._daemon_pids())
        # Job processes carry SGE_ROOT=<this cell> in their environment.
        for _ in range(3):
            left = _pids_mentioning(str(self.sge_root))
            if not left:
                break
            _terminate(left, timeout=3)


BOOTSTRAP = """\
admin_user              none
default_domain          none
ignore_fqdn             true
spooling_method         classic
spooling_lib            libspoolc
spooling_params         {common};{qmaster_spool}
binary_path             {bin}
qmaster_spool_dir       {qmaster_spool}
security_mode           none
listener_threads        2
worker_threads          2
scheduler_threads       1
"""

PE_CONF = """\
pe_name            {pe}
slots              9999
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    $pe_slots
control_slaves     FALSE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary FALSE
qsort_args         NONE
"""


def ensure_gridengine_installed() -> None:
    """Install Grid Engine with scripts/install-system-deps.sh when it is missing."""
    if all(p.exists() for p in SGE_PROGRAMS):
        return
    proc = _run(["bash", str(realcluster.INSTALL_SCRIPT)], timeout=900)
    missing = [str(p) for p in SGE_PROGRAMS if not p.exists()]
    if missing:
        raise ClusterError(f"still missing after {realcluster.INSTALL_SCRIPT}: {missing}\n"
                           f"{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")


def start_gridengine(slots: int = 8, gpus: int = 2, user: str = "dbrcluster") -> GridEngine:
    """Start sge_qmaster + sge_execd (one host) with queue ``all.q`` (``slots`` slots),
    queue ``gpu.q`` (one job at a time, the ``gpus`` GPUs of the forced consumable ``gpu``,
    bound by a starter method) and parallel environment ``smp``, and check that the
    unprivileged ``user`` can run a job before returning."""
    if os.geteuid() != 0:
        raise ClusterError("start_gridengine needs root (its daemons run jobs as other users)")
    ensure_gridengine_installed()
    root = _mkdtemp("dbr-sge-")
    qmaster_port, execd_port = _free_ports(2)
    sge = GridEngine(root=root, host=socket.gethostname(), qmaster_port=qmaster_port,
                     execd_port=execd_port, slots=slots, gpus=gpus)
    try:
        _make_cell(sge)
        _start(sge, user)
    except (ClusterError, subprocess.TimeoutExpired, subprocess.CalledProcessError, OSError) as e:
        logs = sge.logs()
        sge.stop()
        detail = getattr(e, "stderr", "") or ""
        raise ClusterError(f"Grid Engine test cell in {root} failed to start: {e}\n{detail}\n{logs}") from e
    return sge


def _make_cell(sge: GridEngine) -> None:
    """SGE_ROOT with the cell's common folder and a classic spool, as Debian's init_cluster."""
    common = sge.sge_root / sge.cell / "common"
    common.mkdir(parents=True)
    for name in ("bin", "lib", "utilbin", "util"):
        (sge.sge_root / name).symlink_to(SGE_SHARE / name)
    for folder in (sge.qmaster_spool, sge.execd_spool):
        folder.mkdir(parents=True)
    for folder in (sge.root, sge.sge_root, sge.sge_root / sge.cell, common, sge.root / "spool", sge.execd_spool):
        folder.chmod(0o755)
    (common / "bootstrap").write_text(BOOTSTRAP.format(common=common, qmaster_spool=sge.qmaster_spool,
                                                       bin=SGE_BIN))
    (common / "act_qmaster").write_text(sge.host + "\n")
    if sge.host != "localhost":
        (common / "host_aliases").write_text(f"{sge.host} localhost\n")
    defaults = Path("/usr/share/gridengine/default-configuration").read_text()
    # Grid Engine tracks a job's processes by an extra group id from gid_range and ends
    # them all with the job: cells on one machine must not share ids (nor its ports).
    gids = 100000 + 100 * sge.qmaster_port
    overrides = {"execd_spool_dir": str(sge.execd_spool), "min_uid": "0", "min_gid": "0",
                 "mailer": "/bin/true", "load_report_time": "00:00:05", "gid_range": f"{gids}-{gids + 99}"}
    for key, value in overrides.items():
        defaults = re.sub(rf"(?m)^{key}\s+.*$", f"{key} {value}", defaults)
    configuration = sge.root / "configuration"
    configuration.write_text(defaults)
    resources = Path("/usr/share/gridengine/util/resources")
    spool = [SGE_BIN / "spoolinit", "classic", "libspoolc", f"{common};{sge.qmaster_spool}", "init"]
    for argv in (spool,
                 [SGE_BIN / "spooldefaults", "configuration", configuration],
                 [SGE_BIN / "spooldefaults", "complexes", resources / "centry"],
                 [SGE_BIN / "spooldefaults", "usersets", resources / "usersets"],
                 [SGE_BIN / "spooldefaults", "managers", "root"]):
        _run(argv, env=sge.env(), check=True)


def _qconf_file(sge: GridEngine, option: str, name: str, text: str) -> None:
    path = sge.root / name
    path.write_text(text)
    sge.run("qconf", option, path, check=True)


def _start(sge: GridEngine, user: str) -> None:
    proc = _run([SGE_BIN / "sge_qmaster"], env=sge.env())
    if proc.returncode != 0:
        raise ClusterError(f"sge_qmaster exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    if not _wait_for(lambda: sge.run("qconf", "-sh", timeout=10).returncode == 0, 30):
        raise ClusterError("sge_qmaster does not answer qconf -sh")
    sge.run("qconf", "-as", sge.host, check=True)
    # Scheduling every second, and a finished job forgotten at once.
    sconf = sge.run("qconf", "-ssconf", check=True).stdout
    for key, value in {"schedule_interval": "0:0:1", "flush_submit_sec": "1", "flush_finish_sec": "1"}.items():
        sconf = re.sub(rf"(?m)^{key}\s+.*$", f"{key} {value}", sconf)
    _qconf_file(sge, "-Msconf", "sched_configuration", sconf)
    # GPUs are a per-job consumable (a runner asks for all its jobs' GPUs at once), and a
    # forced one: only jobs that ask for GPUs go to gpu.q, the queue that has them.
    complexes = sge.run("qconf", "-sc", check=True).stdout.rstrip("\n")
    _qconf_file(sge, "-Mc", "complexes", complexes + f"\n{GPU_COMPLEX} {GPU_COMPLEX} INT <= FORCED JOB 0 0\n")
    _qconf_file(sge, "-Ap", "pe", PE_CONF.format(pe=sge.pe))
    proc = _run([SGE_BIN / "sge_execd"], env=sge.env())
    if proc.returncode != 0:
        raise ClusterError(f"sge_execd exited {proc.returncode}: {proc.stdout}{proc.stderr}")
    if not _wait_for(lambda: sge.host in sge.run("qconf", "-sel", timeout=10).stdout.split(), 30):
        raise ClusterError(f"sge_execd did not register host {sge.host}")
    template = sge.run("qconf", "-sq", check=True).stdout
    # Each job's TMPDIR is <tmpdir>/<job>.<task>.<queue>: under /tmp, two cells on one
    # machine would share (and delete) each other's, as both count jobs from 1.
    tmpdir = sge.root / "tmp"
    tmpdir.mkdir()
    tmpdir.chmod(0o1777)
    starter = sge.root / "gpu_starter.sh"
    starter.write_text(GPU_STARTER.format(devices=",".join(str(n) for n in range(sge.gpus))))
    starter.chmod(0o755)
    for name, settings in ((sge.queue, {"slots": str(sge.slots)}),
                           (sge.gpu_queue, {"slots": "1", "starter_method": str(starter),
                                            "complex_values": f"{GPU_COMPLEX}={sge.gpus}"})):
        queue = template
        for key, value in {"qname": name, "hostlist": sge.host, "pe_list": sge.pe, "load_thresholds": "NONE",
                           "shell": "/bin/sh", "tmpdir": str(tmpdir), **settings}.items():
            queue = re.sub(rf"(?m)^{key}\s+.*$", f"{key} {value}", queue)
        _qconf_file(sge, "-Aq", name, queue)
    # The proof the tests need: the unprivileged account submits a job and it runs.
    probe_dir = sge.root / "probe"
    probe_dir.mkdir()
    pw = ensure_account(user)
    os.chown(probe_dir, pw.pw_uid, pw.pw_gid)
    marker = probe_dir / "probe.out"
    probe = ["su", user, "-s", "/bin/sh", "-c",
             " ".join(f"{k}={v}" for k, v in sge.env_vars().items())
             + f" qsub -terse -b y -o {marker} -j y -l h_rt=60 -pe {sge.pe} 1 -cwd /bin/echo probe-ok"]
    proc = _run(probe, cwd="/tmp")
    if proc.returncode != 0 or not proc.stdout.strip().isdigit():
        raise ClusterError(f"qsub as {user} failed ({proc.returncode}): {proc.stdout}{proc.stderr}")
    if not _wait_for(lambda: marker.exists() and "probe-ok" in marker.read_text(), 60, 0.25):
        raise ClusterError(f"the probe job of {user} did not run:\n" + sge.run("qstat", "-u", "*", "-f").stdout)
    sge.wait_idle(30)
