"""A real Slurm cluster and a real OpenSSH server on loopback, for tests.

Plain module (no pytest import): the session fixtures in conftest.py use it, and it can be
driven by hand from a root shell::

    from tests.realcluster import start_slurm, start_sshd
    slurm = start_slurm()
    sshd = start_sshd(slurm)
    ...
    sshd.stop(); slurm.stop()

Everything lives in fresh world-readable folders under /tmp (``dbr-slurm-*``, ``dbr-sshd-*``):
the unprivileged "cluster side" account must be able to read slurm.conf, which it could not do
inside pytest's 0700 tmp_path tree.

Facts this relies on are recorded in /work/shared/notes/real-cluster.md (Debian 12, run as root).
"""

from __future__ import annotations

import os
import pwd
import random
import re
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
INSTALL_SCRIPT = REPO_ROOT / "scripts" / "install-system-deps.sh"
SYSTEM_PROGRAMS = ("sshd", "rsync", "slurmctld", "slurmd", "sbatch", "munged")

# Memory: the node declares REAL_MEMORY_MB, every job gets DEF_MEM_PER_CPU_MB per CPU unless it
# asks otherwise (--mem / --mem-per-cpu), so many small jobs fit at once.
REAL_MEMORY_MB = 4000
DEF_MEM_PER_CPU_MB = 100


class ClusterError(RuntimeError):
    """A daemon of the test cluster could not be started or checked."""


# --------------------------------------------------------------------------- helpers


def _which(prog: str) -> str | None:
    found = shutil.which(prog)
    if found:
        return found
    for d in ("/usr/sbin", "/usr/bin", "/sbin", "/bin"):
        p = Path(d) / prog
        if p.is_file() and os.access(p, os.X_OK):
            return str(p)
    return None


def _prog(prog: str) -> str:
    path = _which(prog)
    if path is None:
        raise ClusterError(f"{prog} not found (run scripts/install-system-deps.sh as root)")
    return path


def ensure_system_deps() -> None:
    """Install slurm/munge/sshd/rsync with scripts/install-system-deps.sh when any is missing."""
    if all(_which(p) for p in SYSTEM_PROGRAMS):
        return
    if os.geteuid() != 0:
        raise ClusterError(
            "system programs missing (" + ", ".join(p for p in SYSTEM_PROGRAMS if not _which(p))
            + ") and not root: run scripts/install-system-deps.sh as root"
        )
    proc = subprocess.run(["bash", str(INSTALL_SCRIPT)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClusterError(
            f"{INSTALL_SCRIPT} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    missing = [p for p in SYSTEM_PROGRAMS if not _which(p)]
    if missing:
        raise ClusterError(f"still missing after {INSTALL_SCRIPT}: {missing}")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list[int]:
    ports: list[int] = []
    while len(ports) < n:
        p = _free_port()
        if p not in ports:
            ports.append(p)
    return ports


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file, for error messages."""
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as e:
        return f"<{path}: {e}>"
    return "\n".join(text.splitlines()[-lines:])


def _read_pid(pid_file: Path) -> int | None:
    try:
        return int(Path(pid_file).read_text().strip())
    except (OSError, ValueError):
        return None


def _alive(pid: int) -> bool:
    try:
        # A zombie still "exists"; treat it as dead.
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return st[st.rindex(")") + 2] != "Z"
    except (OSError, ValueError, IndexError):
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _terminate(pids: list[int], timeout: float = 10.0) -> None:
    """SIGTERM, wait, then SIGKILL whatever is left."""
    pids = [p for p in pids if p and _alive(p)]
    for p in pids:
        _kill(p, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.1)
    for p in pids:
        if _alive(p):
            _kill(p, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and any(_alive(p) for p in pids):
        time.sleep(0.05)


def _all_pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            st = f.read()
        return int(st[st.rindex(")") + 2 :].split()[1])
    except (OSError, ValueError, IndexError):
        return None


def _descendants(root_pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for pid in _all_pids():
        pp = _ppid(pid)
        if pp is not None:
            children.setdefault(pp, []).append(pid)
    out: list[int] = []
    todo = [root_pid]
    while todo:
        for c in children.get(todo.pop(), []):
            out.append(c)
            todo.append(c)
    return out


def _self_and_ancestors() -> set[int]:
    pids = set()
    pid: int | None = os.getpid()
    while pid and pid not in pids:
        pids.add(pid)
        pid = _ppid(pid)
    return pids


def _pids_mentioning(marker: str) -> list[int]:
    """Processes whose command line or environment contains marker (ours excluded)."""
    mine = _self_and_ancestors()
    hits = []
    needle = marker.encode()
    for pid in _all_pids():
        if pid in mine:
            continue
        for what in ("cmdline", "environ"):
            try:
                with open(f"/proc/{pid}/{what}", "rb") as f:
                    if needle in f.read():
                        hits.append(pid)
                        break
            except OSError:
                pass
    return [p for p in hits if _alive(p)]


def _wait_for(pred, timeout: float, interval: float = 0.2) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(interval)


def _run(argv, **kw) -> subprocess.CompletedProcess:
    kw.setdefault("capture_output", True)
    kw.setdefault("text", True)
    kw.setdefault("timeout", 60)
    return subprocess.run([str(a) for a in argv], **kw)


def _mkdtemp(prefix: str) -> Path:
    root = Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))
    root.chmod(0o755)
    return root


# --------------------------------------------------------------------------- munge


def ensure_munge() -> None:
    """Start munged (system-wide, left running) unless a credential round-trips already."""

    def ok() -> bool:
        try:
            return subprocess.run(
                "munge -n | unmunge", shell=True, capture_output=True, timeout=10
            ).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    if ok():
        return
    run_dir = Path("/run/munge")
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        shutil.chown(run_dir, "munge", "munge")
    except (LookupError, OSError):
        pass
    run_dir.chmod(0o755)
    key = Path("/etc/munge/munge.key")
    if not key.exists():
        mk = _which("mungekey") or _which("create-munge-key")
        if mk is None:
            raise ClusterError(f"{key} missing and no mungekey program to make one")
        _run([mk] if mk.endswith("create-munge-key") else [mk, "--create", "--keyfile", key])
        try:
            shutil.chown(key, "munge", "munge")
        except (LookupError, OSError):
            pass
        key.chmod(0o400)
    proc = _run([_prog("munged"), "--force"])
    if not _wait_for(ok, 10):
        raise ClusterError(
            "munged did not come up (munge -n | unmunge fails):\n"
            f"munged rc={proc.returncode} {proc.stdout}{proc.stderr}\n"
            + tail(Path("/var/log/munge/munged.log"))
        )


# --------------------------------------------------------------------------- Slurm


@dataclass
class Slurm:
    conf: Path  # slurm.conf (what SLURM_CONF points at)
    node: str  # the one node's name
    root: Path  # its folder: conf, logs, pid files, state, spool, fake GPU devices
    cpus: int = 8
    gpus: int = 2
    ctld_port: int = 0
    slurmd_port: int = 0
    nodes: list[str] = field(default_factory=list)  # every node's name (one slurmd each)

    # paths inside root
    @property
    def ctld_log(self) -> Path:
        return self.root / "log" / "slurmctld.log"

    @property
    def slurmd_log(self) -> Path:
        return self.root / "log" / "slurmd.log"

    @property
    def ctld_pid_file(self) -> Path:
        return self.root / "run" / "slurmctld.pid"

    @property
    def slurmd_pid_file(self) -> Path:
        return self.root / "run" / "slurmd.pid"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["SLURM_CONF"] = str(self.conf)
        return env

    def run(self, *argv, check: bool = False, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run a Slurm client (sbatch, squeue, scancel, sinfo, scontrol...) against this cluster."""
        return _run(argv, env=self.env(), check=check, timeout=timeout)

    def job_ids(self) -> list[str]:
        """Jobs squeue still lists (pending, running, completing)."""
        proc = self.run("squeue", "-h", "-o", "%i", timeout=15)
        if proc.returncode != 0:
            return []
        return proc.stdout.split()

    def node_state(self, name: str | None = None) -> str:
        proc = self.run("sinfo", "-h", "-n", name or self.node, "-o", "%t", timeout=15)
        return proc.stdout.strip() if proc.returncode == 0 else ""

    def wait_idle(self, timeout: float = 30) -> None:
        """Until squeue lists no job at all."""
        if not _wait_for(lambda: not self.job_ids(), timeout, 0.25):
            raise ClusterError(
                f"jobs still queued after {timeout}s:\n"
                + self.run("squeue", "-o", "%i %u %T %r %j").stdout
            )

    def logs(self, lines: int = 40) -> str:
        return (
            f"--- {self.ctld_log} ---\n{tail(self.ctld_log, lines)}\n"
            f"--- {self.slurmd_log} ---\n{tail(self.slurmd_log, lines)}"
        )

    def _daemon_pids(self) -> list[int]:
        pids = [_read_pid(self.slurmd_pid_file), _read_pid(self.ctld_pid_file)]
        return [p for p in pids if p and _alive(p) and str(self.conf).encode() in _cmdline(p)]

    def stop(self) -> None:
        """Cancel leftover jobs, stop slurmd and slurmctld, kill anything left using this conf."""
        ctld = _read_pid(self.ctld_pid_file)
        if ctld and _alive(ctld):
            ids = self.job_ids()
            if ids:
                self.run("scancel", *ids, timeout=15)
                _wait_for(lambda: not self.job_ids(), 15, 0.25)
        # Job steps (slurmstepd and the job's processes) carry SLURM_CONF in their environment.
        marker = f"SLURM_CONF={self.conf}"
        _wait_for(lambda: not _stepds(marker), 10, 0.2)
        slurmd = _read_pid(self.slurmd_pid_file)
        if slurmd and str(self.conf).encode() in _cmdline(slurmd):
            _terminate([slurmd])
        if ctld and str(self.conf).encode() in _cmdline(ctld):
            _terminate([ctld])
        # Fallback: anything still mentioning our conf path (daemons, slurmstepd, job processes).
        for _ in range(3):
            left = _pids_mentioning(str(self.conf))
            if not left:
                break
            _terminate(left, timeout=3)


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def _stepds(marker: str) -> list[int]:
    return [p for p in _pids_mentioning(marker) if _cmdline(p).startswith(b"slurmstepd")]


SLURM_CONF_TEMPLATE = """\
# Written by tests/realcluster.py: a single-node cluster on loopback for tests.
ClusterName={cluster}
SlurmctldHost=localhost(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType={proctrack}
TaskPlugin={task}
FirstJobId={first_job_id}
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
# The node line below wins over what slurmd detects (more CPUs than cores: parallel tests).
SlurmdParameters=config_overrides
ReturnToService=2
KillWait=5
MinJobAge=5
InactiveLimit=0
Waittime=0
MessageTimeout=10
SlurmdTimeout=300
SchedulerType=sched/backfill
SchedulerParameters=sched_interval=1,bf_interval=1,batch_sched_delay=0,sched_min_interval=0
DefMemPerCPU={def_mem}
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/run/slurmctld.pid
SlurmdPidFile={root}/run/slurmd.pid
SlurmctldLogFile={root}/log/slurmctld.log
SlurmdLogFile={root}/log/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
GresTypes=gpu
{node_lines}
PartitionName=debug Nodes={nodes} Default=YES MaxTime=INFINITE State=UP OverSubscribe=NO
"""


def start_slurm(gpus: int = 2, cpus: int | None = None, *, cgroup: bool = False, nodes: int = 1) -> Slurm:
    """Start slurmctld + slurmd (one node, `gpus` fake GPUs) and wait until the node is idle.

    cpus defaults to max(8, nproc): config_overrides lets the node run that many 1-CPU jobs at
    once even on a 2-core machine.  ``cgroup``: Slurm enforces each job step's CPUs and memory
    (proctrack/cgroup, task/cgroup on the machine's cgroup v1 hierarchy, task/affinity binding
    CPUs), so cpus must then not exceed the real CPUs; the first job id is random, so two such
    clusters on one machine never share a cgroup folder (and each has node names of its
    own).  ``nodes`` > 1 starts one slurmd per node name on this machine, each on its own
    port (see ``Slurm.nodes``).
    """
    if os.geteuid() != 0:
        raise ClusterError("start_slurm needs root (SlurmUser=root, jobs run as other users)")
    ensure_system_deps()
    ensure_munge()
    if cpus is None:
        cpus = os.cpu_count() or 1 if cgroup else max(8, os.cpu_count() or 1)
    root = _mkdtemp("dbr-slurm-")
    for d in ("state", "spool", "run", "log"):
        (root / d).mkdir()
        (root / d).chmod(0o755)
    names = ["dbrnode"] + ["dbrnode%d" % (i + 1) for i in range(1, nodes)]
    if cgroup:
        # slurmd names its cgroup folders after the node (slurm_<node>/uid_<uid>/job_<id>):
        # a name of its own keeps two such clusters on one machine apart.
        names = [f"{name}c{root.name.rsplit('-', 1)[-1].lower()}" for name in names]
    ctld_port, slurmd_port, *node_ports = _free_ports(2 + nodes)
    gres = ""
    gres_lines = ["AutoDetect=off"]
    if gpus > 0:
        gres = f" Gres=gpu:{gpus}"
        dev = root / "dev"
        dev.mkdir()
        dev.chmod(0o755)
        for i in range(gpus):
            os.mknod(dev / f"fakegpu{i}", stat.S_IFCHR | 0o666, os.makedev(1, 3))
        files = f"{dev}/fakegpu[0-{gpus - 1}]" if gpus > 1 else f"{dev}/fakegpu0"
        gres_lines += [f"NodeName={name} Name=gpu File={files}" for name in names]
    (root / "gres.conf").write_text("\n".join(gres_lines) + "\n")
    node_lines = []
    for index, name in enumerate(names):
        port = f" Port={node_ports[index]}" if nodes > 1 else ""
        node_lines.append(f"NodeName={name} NodeAddr=127.0.0.1 NodeHostname={name}{port} CPUs={cpus} "
                          f"RealMemory={REAL_MEMORY_MB}{gres} State=UNKNOWN")
    text = SLURM_CONF_TEMPLATE.format(
        cluster="dbr" + root.name.rsplit("-", 1)[-1].lower().replace("_", ""),
        ctld_port=ctld_port,
        slurmd_port=slurmd_port,
        def_mem=DEF_MEM_PER_CPU_MB,
        root=root,
        proctrack="proctrack/cgroup" if cgroup else "proctrack/pgid",
        task="task/cgroup,task/affinity" if cgroup else "task/none",
        first_job_id=random.randrange(10_000, 50_000_000) if cgroup else 1,
        node_lines="\n".join(node_lines),
        nodes=",".join(names),
    )
    if nodes > 1:
        # One pid file, log and spool folder per slurmd (%n: the node name).
        for key in ("SlurmdPidFile", "SlurmdLogFile", "SlurmdSpoolDir"):
            text = re.sub(rf"^{key}=(.*?)(\.pid|\.log)?$", lambda m, key=key: f"{key}={m[1]}-%n{m[2] or ''}", text,
                          flags=re.MULTILINE)
    conf = root / "slurm.conf"
    conf.write_text(text)
    if cgroup:
        (root / "cgroup.conf").write_text(CGROUP_CONF)
    for f in root.glob("*.conf"):
        f.chmod(0o644)
    slurm = Slurm(
        conf=conf, node=names[0], root=root, cpus=cpus, gpus=gpus,
        ctld_port=ctld_port, slurmd_port=slurmd_port, nodes=names,
    )
    try:
        proc = _run([_prog("slurmctld"), "-c", "-f", conf], env=slurm.env())
        if proc.returncode != 0:
            raise ClusterError(f"slurmctld exited {proc.returncode}: {proc.stdout}{proc.stderr}")
        if not _wait_for(lambda: slurm.run("sinfo", "-h", timeout=10).returncode == 0, 20):
            raise ClusterError("slurmctld does not answer sinfo")
        for name in names:
            proc = _run([_prog("slurmd"), "-N", name, "-f", conf], env=slurm.env())
            if proc.returncode != 0:
                raise ClusterError(f"slurmd -N {name} exited {proc.returncode}: {proc.stdout}{proc.stderr}")
        if not _wait_for(lambda: all(slurm.node_state(name) == "idle" for name in names), 30, 0.25):
            raise ClusterError("nodes not idle: " + ", ".join(f"{n} {slurm.node_state(n)!r}" for n in names))
    except (ClusterError, subprocess.TimeoutExpired, OSError) as e:
        logs = slurm.logs()
        slurm.stop()
        raise ClusterError(f"Slurm test cluster in {root} failed to start: {e}\n{logs}") from e
    return slurm


CGROUP_CONF = """\
# Written by tests/realcluster.py: Slurm confines each step to its CPUs and memory.
CgroupPlugin=cgroup/v1
CgroupAutomount=no
CgroupMountpoint=/sys/fs/cgroup
ConstrainCores=yes
ConstrainRAMSpace=yes
AllowedRAMSpace=100
ConstrainSwapSpace=no
# The fake GPUs are /dev/null's device numbers: confining devices would take /dev/null away.
ConstrainDevices=no
"""


# --------------------------------------------------------------------------- sshd


@dataclass
class Sshd:
    host: str
    port: int
    user: str
    home: Path
    key_file: Path
    known_hosts: Path
    host_key_pub: Path
    log_path: Path
    root: Path
    config: Path = field(default=Path())
    authorized_keys: Path = field(default=Path())
    _proc: subprocess.Popen | None = field(default=None, repr=False)

    def ssh_argv(self) -> list[str]:
        """OpenSSH client argv prefix; append the remote command (one string)."""
        return [
            "ssh",
            "-F", "/dev/null",
            "-p", str(self.port),
            "-i", str(self.key_file),
            "-o", "IdentitiesOnly=yes",
            "-o", f"UserKnownHostsFile={self.known_hosts}",
            "-o", "GlobalKnownHostsFile=/dev/null",
            "-o", "StrictHostKeyChecking=yes",
            "-o", "BatchMode=yes",
            "-o", "ConnectTimeout=10",
            f"{self.user}@{self.host}",
        ]

    def ssh(self, command: str, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run one remote command with the OpenSSH client (one login, one session)."""
        return _run([*self.ssh_argv(), command], timeout=timeout)

    def _log_lines(self) -> list[str]:
        try:
            return self.log_path.read_text(errors="replace").splitlines()
        except OSError:
            return []

    def logins(self) -> int:
        """'Accepted publickey' lines logged so far (all runs of this sshd, health check included)."""
        return sum("Accepted publickey for" in line for line in self._log_lines())

    def sessions(self) -> list[str]:
        """'Starting session: ...' lines: one per remote command / shell / subsystem (sftp) channel."""
        return [line for line in self._log_lines() if "Starting session:" in line]

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> None:
        """Start sshd (again) on the same port with the same keys; wait until it listens."""
        if self.running():
            return
        listening_before = sum("Server listening on" in line for line in self._log_lines())
        Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
        out = open(self.root / "sshd.stdout", "ab")
        try:
            self._proc = subprocess.Popen(
                [_prog("sshd"), "-D", "-f", str(self.config), "-E", str(self.log_path)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        finally:
            out.close()

        def listening() -> bool:
            if self._proc.poll() is not None:
                return True
            n = sum("Server listening on" in line for line in self._log_lines())
            return n > listening_before

        ok = _wait_for(listening, 15, 0.05)
        if not ok or self._proc.poll() is not None:
            rc = self._proc.poll()
            self.stop()
            raise ClusterError(
                f"sshd on 127.0.0.1:{self.port} did not start (rc={rc}):\n"
                f"{tail(self.log_path)}\n{tail(self.root / 'sshd.stdout')}"
            )

    def stop(self) -> None:
        """Stop sshd and kill its open connections (as if the server went away)."""
        proc = self._proc
        pids: list[int] = []
        if proc is not None and proc.poll() is None:
            # Connection processes are the listener's children (they setsid(), so a process-group
            # kill would miss them): kill the whole tree, leaves first, then the listener.
            pids = _descendants(proc.pid)
            for p in reversed(pids):
                _kill(p, signal.SIGKILL)
            _terminate([proc.pid], timeout=5)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)
        self._proc = None
        # Fallback: anything still running with our config path (e.g. after a lost Popen).
        left = _pids_mentioning(str(self.config))
        if left:
            _terminate(left, timeout=3)
        _wait_for(lambda: not any(_alive(p) for p in pids), 5, 0.05)

    def close(self) -> None:
        """stop() and remove the authorized_keys file this server installed in the account."""
        self.stop()
        try:
            self.authorized_keys.unlink()
        except OSError:
            pass


def ensure_account(user: str) -> pwd.struct_passwd:
    """An unprivileged login account with a home; password field '*' (UsePAM no refuses '!')."""
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        proc = _run(["useradd", "-m", "-s", "/bin/bash", user])
        if proc.returncode != 0 and "already exists" not in proc.stderr:
            raise ClusterError(f"useradd {user} failed: {proc.stderr}") from None
        pw = pwd.getpwnam(user)
    _run(["usermod", "-p", "*", user], check=True)
    home = Path(pw.pw_dir)
    if not home.is_dir():
        home.mkdir(parents=True)
        os.chown(home, pw.pw_uid, pw.pw_gid)
        home.chmod(0o750)
    return pw


def start_sshd(slurm: Slurm | None = None, user: str = "dbrcluster", env: dict[str, str] | None = None) -> Sshd:
    """Start a private sshd on 127.0.0.1:<free port> that logs in `user` with a fresh key.

    With `slurm`, sessions get SLURM_CONF (sshd SetEnv) so sbatch/squeue reach that cluster;
    `env` adds more variables (a Grid Engine cell's SGE_ROOT, SGE_CELL and ports).
    Checks one login (rsync, python3, and squeue when slurm is given) before returning.
    """
    if os.geteuid() != 0:
        raise ClusterError("start_sshd needs root (own sshd, account creation)")
    ensure_system_deps()
    pw = ensure_account(user)
    home = Path(pw.pw_dir)
    root = _mkdtemp("dbr-sshd-")

    # Keys: host key and client key both made here; the client key is root's (the test runner's).
    host_key = root / "ssh_host_ed25519_key"
    client_key = root / "client_key"
    for path, comment in ((host_key, "dbr-test-host"), (client_key, "dbr-test-client")):
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", path], check=True)
    port = _free_port()
    host = "127.0.0.1"
    host_key_pub = host_key.with_name(host_key.name + ".pub")
    known_hosts = root / "known_hosts"
    kt, kb = host_key_pub.read_text().split()[:2]
    known_hosts.write_text(f"[{host}]:{port} {kt} {kb}\n")
    known_hosts.chmod(0o644)

    # authorized_keys in the account's ~/.ssh (StrictModes stays on: owner and modes as on a real
    # account); one file per server instance so parallel sessions do not trample each other.
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(exist_ok=True)
    os.chown(ssh_dir, pw.pw_uid, pw.pw_gid)
    ssh_dir.chmod(0o700)
    for stale in ssh_dir.glob("authorized_keys.dbr-sshd-*"):
        if not (Path("/tmp") / stale.name.split(".", 1)[1]).exists():
            stale.unlink(missing_ok=True)
    auth_keys = ssh_dir / f"authorized_keys.{root.name}"
    auth_keys.write_text((root / "client_key.pub").read_text())
    os.chown(auth_keys, pw.pw_uid, pw.pw_gid)
    auth_keys.chmod(0o600)

    log_path = root / "sshd.log"
    config = root / "sshd_config"
    lines = [
        "# Written by tests/realcluster.py",
        f"ListenAddress {host}",
        f"Port {port}",
        f"HostKey {host_key}",
        f"PidFile {root}/sshd.pid",
        "LogLevel VERBOSE",
        "UsePAM no",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PubkeyAuthentication yes",
        f"AuthorizedKeysFile .ssh/{auth_keys.name}",
        "StrictModes yes",
        "PermitRootLogin no",
        f"AllowUsers {user}",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
        "MaxSessions 100",
        "MaxStartups 100:30:200",
        "Subsystem sftp internal-sftp",
    ]
    setenv = dict(env or {})
    if slurm is not None:
        setenv["SLURM_CONF"] = str(slurm.conf)
    if setenv:    # one line: sshd keeps the first SetEnv it reads
        lines.append("SetEnv " + " ".join(f"{key}={value}" for key, value in setenv.items()))
    config.write_text("\n".join(lines) + "\n")
    config.chmod(0o644)
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    check = _run([_prog("sshd"), "-t", "-f", config])
    if check.returncode != 0:
        raise ClusterError(f"sshd -t rejects {config}:\n{check.stdout}{check.stderr}")

    sshd = Sshd(
        host=host, port=port, user=user, home=home, key_file=client_key,
        known_hosts=known_hosts, host_key_pub=host_key_pub, log_path=log_path, root=root,
        config=config, authorized_keys=auth_keys,
    )
    sshd.start()
    probe = "rsync --version >/dev/null && python3 -c 'import sys' && echo HOME=$HOME"
    if slurm is not None:
        probe += " && squeue -h >/dev/null && echo SLURM_CONF=$SLURM_CONF"
    try:
        proc = sshd.ssh(probe, timeout=30)
    except subprocess.TimeoutExpired as e:
        proc = subprocess.CompletedProcess(e.cmd, -1, "", f"timeout: {e}")
    expect = f"HOME={home}"
    if proc.returncode != 0 or expect not in proc.stdout or (
        slurm is not None and f"SLURM_CONF={slurm.conf}" not in proc.stdout
    ):
        logs = tail(log_path)
        sshd.close()
        raise ClusterError(
            f"ssh {user}@{host}:{port} health check failed (rc={proc.returncode}):\n"
            f"stdout: {proc.stdout}\nstderr: {proc.stderr}\n--- {log_path} ---\n{logs}"
        )
    return sshd
