"""``dropbox-runner check``: everything a cycle needs, checked before the first one.

Each check is one line, pass or fail, and a failure says how to fix it.  On this machine
checks create nothing; on the cluster, only the workspace folder when it is missing (as
the first cycle would) and a probe folder in it, removed again.  The cluster side is
probed with one command: a stdlib script run by the configured interpreter (``-c``, its
request on stdin) that reports its version, whether the workspace takes the queue's
renames and locks, rsync, and the scheduler's answers, as JSON.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .config import SYSTEM_FOLDERS, Config, ConfigError, load_config
from .on_hpc.resources import class_gpus
from .rendering import TemplateProblem, load_template, render
from .transport import Transport, TransportError, open_transport

MIN_REMOTE_PYTHON = (3, 8)      # on_hpc/ is checked against it (vermin)


@dataclass
class CheckResult:
    name: str
    ok: bool
    detail: str
    fix: str = ""


# Runs on the cluster under the configured python: stdlib only and old syntax (no
# f-strings), so that even a too-old interpreter gets as far as saying its version.
PROBE = r'''
import json, os, shutil, subprocess, sys, tempfile
request = json.loads(sys.stdin.read())
out = {"python": list(sys.version_info[:3]), "executable": sys.executable}
def run(argv, keep=65536):
    try:
        done = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=60,
                              universal_newlines=True)
        return {"rc": done.returncode, "stdout": done.stdout[-keep:], "stderr": done.stderr[-2000:]}
    except (OSError, subprocess.SubprocessError) as error:
        return {"rc": None, "stdout": "", "stderr": str(error)}
workspace = request["workspace"]
try:
    os.makedirs(workspace, mode=0o700, exist_ok=True)
    probe = tempfile.mkdtemp(prefix=".dbr-check-", dir=workspace)
    try:
        os.mkdir(os.path.join(probe, "a"))
        os.rename(os.path.join(probe, "a"), os.path.join(probe, "b"))
        with open(os.path.join(probe, "lock"), "w") as handle:
            import fcntl
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        out["workspace"] = "ok"
    finally:
        shutil.rmtree(probe, ignore_errors=True)
except Exception as error:
    out["workspace"] = "%s: %s" % (type(error).__name__, error)
out["rsync"] = shutil.which("rsync")
if request["scheduler"] == "slurm":
    out["sbatch"] = run(["sbatch", "--version"])
    out["squeue"] = run(["squeue", "--noheader", "--user=%d" % os.getuid(), "--format=%i"])
    out["sinfo"] = run(["sinfo", "--noheader", "--format=%P|%G"])
elif request["scheduler"] == "sge":
    import pwd
    out["qstat"] = run(["qstat", "-xml", "-u", pwd.getpwuid(os.getuid()).pw_name])
    out["queues"] = run(["qconf", "-sql"])
    out["pes"] = run(["qconf", "-spl"])
    out["complexes"] = run(["qconf", "-sc"], keep=100000)     # a site's list is long, and read whole
print(json.dumps(out))
'''


def run_checks(config_file: Path) -> list[CheckResult]:
    """Every check that can run; a config that does not load still gets its on-disk checks."""
    results: list[CheckResult] = []
    try:
        config = load_config(config_file)
        results.append(CheckResult("config", True, f"{config.source} loads"))
    except ConfigError as error:
        try:    # a config that only names missing folders or a missing key: those get a line each below
            config = load_config(config_file, check_folders=False)
            results.append(CheckResult("config", True, f"{config.source} parses; what it names is checked below"))
        except ConfigError:
            results.append(CheckResult("config", False, str(error), f"edit {config_file}"))
            return results
    results += check_local(config)
    if config.backend == "ssh":
        results += check_ssh(config)
        if not all(result.ok for result in results if result.name in ("host key", "key file")):
            return results
    transport = None
    try:
        transport = open_transport(config)
        results += check_cluster(config, transport)
    except TransportError as error:
        results.append(CheckResult("login", False, str(error), _login_fix(config)))
    finally:
        if transport is not None:
            transport.close()
    return results


def format_checks(results: list[CheckResult]) -> str:
    lines = []
    for result in results:
        lines.append(f"{'ok  ' if result.ok else 'FAIL'}  {result.name}: {result.detail}")
        if not result.ok and result.fix:
            lines.append(f"      fix: {result.fix}")
    failed = sum(not result.ok for result in results)
    lines.append(f"\n{len(results) - failed} passed, {failed} failed" if failed else f"\nall {len(results)} passed")
    return "\n".join(lines)


# -- this machine -----------------------------------------------------------------------
def check_local(config: Config) -> list[CheckResult]:
    if config.dropbox in SYSTEM_FOLDERS:
        results = [CheckResult("dropbox", False, f"{config.dropbox} is a system folder",
                               "give the dropbox a folder of its own")]
    else:
        results = [_folder("dropbox", config.dropbox, "tools drop .job files here; this account reads, "
                           "renames and writes results in it")]
    state = Path(config.state_dir)
    if not config.dropbox.is_dir() and config.dropbox in state.parents:
        pass                                    # made with the dropbox: its line says what to do
    elif state.exists() or not state.parent.is_dir():
        results.append(_folder("state_dir", state, "the submitter's own files"))
    elif not os.access(state.parent, os.W_OK | os.X_OK):
        results.append(CheckResult("state_dir", False, f"{state} cannot be made: {state.parent} is not writable",
                                   f"mkdir -p {state} as root and chown it to this account"))
    else:
        results.append(CheckResult("state_dir", True, f"{state} (made by the first cycle)"))
    if config.metrics_file is not None:
        results.append(_folder("metrics folder", config.metrics_file.parent, "node_exporter's textfile folder"))
    results.append(_templates(config))
    return results


def _folder(name: str, path: Path, why: str) -> CheckResult:
    if not path.is_dir():
        return CheckResult(name, False, f"{path} is not a folder ({why})", f"mkdir -p {path}")
    if not os.access(path, os.R_OK | os.W_OK | os.X_OK):
        return CheckResult(name, False, f"{path} is not writable by this account ({why})",
                           f"chown this account {path}, or chmod u+rwx {path}")
    mode = path.stat().st_mode
    if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
        return CheckResult(name, False, f"{path} is writable by every user without the sticky bit: anyone "
                           f"could rename or delete others' jobs and results", f"chmod o-w {path} (or chmod +t)")
    return CheckResult(name, True, f"{path} ({stat.filemode(mode)})")


def _templates(config: Config) -> CheckResult:
    folder = Path(config.templates)
    names = sorted(path.name[: -len(".template")] for path in folder.glob("*.template"))
    if not names:
        return CheckResult("templates", False, f"no *.template in {folder}",
                           f"put templates in {folder} or set templates: in the config")
    problems = []
    for name in names:
        try:
            _render_with_dummies(config, load_template(folder, name))
        except TemplateProblem as problem:
            problems.append(str(problem))
    if problems:
        return CheckResult("templates", False, "; ".join(problems), f"fix the templates in {folder}")
    return CheckResult("templates", True, f"{len(names)} in {folder} render with dummy values")


def _render_with_dummies(config: Config, template: Any) -> str:
    """Render with the config's hpc_env and a dummy for every variable a job would set."""
    variables: dict[str, Any] = dict(config.hpc_env)
    for _ in range(200):
        try:
            return render(template, variables)
        except TemplateProblem as problem:
            missing = str(problem).split("uses <<", 1)
            if len(missing) != 2:
                raise
            variables[missing[1].split(">>", 1)[0]] = "dummy"
    raise TemplateProblem(f"template {template.name!r}: too many variables")


# -- SSH ----------------------------------------------------------------------------------
def check_ssh(config: Config) -> list[CheckResult]:
    from .transport.hostkeys import fingerprint, recorded_keys, same_key
    from .transport.ssh import SshTransport

    results = []
    key = config.remote.key_file
    if key is None:
        results.append(CheckResult("key file", True, "none configured: ssh-agent or the default keys"))
    elif not key.is_file() or not os.access(key, os.R_OK):
        results.append(CheckResult("key file", False, f"{key} is missing or not readable by this account",
                                   f"check remote.key_file, or chown this account {key}"))
    elif key.stat().st_mode & 0o077:
        results.append(CheckResult("key file", False, f"{key} is readable by others "
                                   f"({stat.filemode(key.stat().st_mode)}); OpenSSH (rsync) refuses it",
                                   f"chmod 600 {key}"))
    else:
        results.append(CheckResult("key file", True, f"{key}"))
    transport = SshTransport(config)
    try:
        name, server_key = transport.server_host_key()
    except TransportError as error:
        results.append(CheckResult("host key", False, str(error), _login_fix(config)))
        return results
    known = recorded_keys(transport.known_hosts, name)
    if any(same_key(server_key, old) for old in known):
        results.append(CheckResult("host key", True, f"{name} {fingerprint(server_key)} is in {transport.known_hosts}"))
    elif known:
        results.append(CheckResult("host key", False, f"{transport.known_hosts} holds a DIFFERENT key for {name}",
                                   "ask the cluster's administrators, then dropbox-runner trust-host --replace"))
    else:
        results.append(CheckResult("host key", False, f"{name} ({fingerprint(server_key)}) is not in "
                                   f"{transport.known_hosts}", f"dropbox-runner trust-host --config {config.source}"))
    return results


def _login_fix(config: Config) -> str:
    if config.backend != "ssh":
        return "check the config's cluster_root and python"
    remote = config.remote
    return (f"try: ssh -p {remote.port or 22} {remote.user + '@' if remote.user else ''}{remote.host} true; "
            f"check remote.host/port/user/key_file")


# -- the cluster side -------------------------------------------------------------------
def check_cluster(config: Config, transport: Transport) -> list[CheckResult]:
    request = json.dumps({"workspace": config.workspace, "scheduler": config.scheduler}).encode()
    done = transport.run(f"{shlex.quote(config.python)} -c {shlex.quote(PROBE)}", request)
    results = [CheckResult("login", True, "commands run on the cluster side")] if config.backend == "ssh" else []
    try:
        answer = json.loads(done.stdout.decode().strip().splitlines()[-1])
    except (ValueError, IndexError):
        error = (done.stderr or done.stdout).decode(errors="replace").strip()[-300:]
        results.append(CheckResult("remote python", False, f"{config.python} did not run the probe "
                                   f"(exit {done.returncode}): {error or 'no output'}",
                                   "set python: to the cluster's Python 3.8+ (an absolute path is safest)"))
        return results
    version = tuple(answer["python"])
    shown = ".".join(map(str, version))
    if version[:2] >= MIN_REMOTE_PYTHON:
        results.append(CheckResult("remote python", True, f"{answer['executable']} {shown}"))
    else:
        results.append(CheckResult("remote python", False, f"{answer['executable']} is {shown}; on_hpc needs "
                                   f"{'.'.join(map(str, MIN_REMOTE_PYTHON))}+", "set python: to a newer one"))
    if answer["workspace"] == "ok":
        results.append(CheckResult("workspace", True, f"{config.workspace}: writable, renames and locks work"))
    else:
        results.append(CheckResult("workspace", False, f"{config.workspace}: {answer['workspace']}",
                                   "set hpc_env.workspace to a folder of this account on a filesystem with "
                                   "POSIX renames and flock (not a read-only or lock-less mount)"))
    if config.backend == "ssh":
        results.append(_rsync(config, answer.get("rsync")))
    if config.scheduler == "slurm":
        results += _slurm(config, answer)
    elif config.scheduler == "sge":
        results += _grid_engine(config, answer)
    return results


def _rsync(config: Config, remote_rsync: str | None) -> CheckResult:
    here = shutil.which("rsync")
    mode = config.remote.transfer
    if here and remote_rsync:
        return CheckResult("rsync", True, f"here {here}, there {remote_rsync}")
    missing = " and ".join(side for side, found in (("here", here), ("on the cluster", remote_rsync)) if not found)
    if mode == "rsync":
        return CheckResult("rsync", False, f"rsync is missing {missing}, and remote.transfer is rsync",
                           "install rsync on both ends (apt-get install rsync), or set remote.transfer: auto")
    return CheckResult("rsync", True, f"missing {missing}: transfers use SFTP (slower for many files)")


def _answers(answer: dict[str, Any], programs: tuple[str, ...], fix: str) -> list[CheckResult]:
    results = []
    for program in programs:
        done = answer.get(program) or {}
        if done.get("rc") == 0:
            results.append(CheckResult(program, True, (done["stdout"].strip().splitlines() or ["answers"])[0]))
        else:
            results.append(CheckResult(program, False, f"{program} failed: {(done.get('stderr') or '').strip()}", fix))
    return results


def _slurm(config: Config, answer: dict[str, Any]) -> list[CheckResult]:
    results = _answers(answer, ("sbatch", "squeue"), "make Slurm's commands work for this account on the cluster "
                       "(PATH, SLURM_CONF, munge); try it in an ssh session")
    sinfo = answer.get("sinfo") or {}
    if sinfo.get("rc") != 0:
        results.append(CheckResult("partitions", False, f"sinfo failed: {(sinfo.get('stderr') or '').strip()}",
                                   "make sinfo work for this account on the cluster"))
        return results
    partitions: dict[str, set[str]] = {}
    for line in sinfo["stdout"].splitlines():
        name, _, gres = line.strip().partition("|")
        partitions.setdefault(name.rstrip("*"), set()).update(_gres_names(gres))
    for name, settings in sorted(config.classes.items()):
        results.append(_class_fits(name, settings.partition, settings.gres, partitions))
    return results


def _gres_names(field: str) -> set[str]:
    """``gpu:v100:2(S:0),gpu:1`` -> {"gpu", "gpu:v100"}: what a --gres request may name."""
    names = set()
    for item in field.split(","):
        parts = item.split("(")[0].split(":")
        if parts[0] and parts[0] != "(null)":
            names.add(parts[0])
            if len(parts) == 3:
                names.add(f"{parts[0]}:{parts[1]}")
    return names


def _class_fits(name: str, partition: str | None, gres: str | None, partitions: dict[str, set[str]]) -> CheckResult:
    what = f"class {name}"
    if partition and partition not in partitions:
        return CheckResult(what, False, f"partition {partition!r} does not exist (sinfo lists "
                           f"{', '.join(sorted(partitions)) or 'none'})", f"set classes.{name}.partition")
    if gres:
        wanted = gres.rsplit(":", 1)[0] if gres.rsplit(":", 1)[-1].isdigit() else gres
        offered = partitions[partition] if partition else set().union(*partitions.values())
        if wanted not in offered:
            return CheckResult(what, False, f"no node {'in ' + repr(partition) if partition else ''} offers gres "
                               f"{wanted!r} (offered: {', '.join(sorted(offered)) or 'none'})",
                               f"set classes.{name}.gres to what the cluster has")
    return CheckResult(what, True, f"partition {partition or '(default)'}, gres {gres or 'none'}")


def _grid_engine(config: Config, answer: dict[str, Any]) -> list[CheckResult]:
    """qstat answers, and each class's queue, parallel environment and resources exist."""
    qstat = answer.get("qstat") or {}
    if qstat.get("rc") != 0:
        return [CheckResult("qstat", False, f"qstat failed: {(qstat.get('stderr') or '').strip()}",
                            "make Grid Engine's commands work for this account on the cluster (PATH, SGE_ROOT, "
                            "SGE_CELL, SGE_QMASTER_PORT); try it in an ssh session")]
    results = [CheckResult("qstat", True, "answers")]
    offered = {}
    for key in ("queues", "pes", "complexes"):
        done = answer.get(key) or {}
        # qconf exits non-zero for an empty list ("no parallel environment defined")
        rows = [line.split() for line in done.get("stdout", "").splitlines()
                if line.strip() and not line.startswith("#")] if done.get("rc") == 0 else []
        # a complex may be asked for by its name or its shortcut
        offered[key] = {word for row in rows for word in (row[:2] if key == "complexes" else row[:1])}
    for name, settings in sorted(config.classes.items()):
        gpus = class_gpus(settings.to_request())
        wanted = [("queues", "queue", settings.queue, "queue"), ("pes", "parallel environment", settings.pe, "pe"),
                  ("complexes", "GPU complex", settings.gpu_resource if gpus else None, "gpu_resource"),
                  ("complexes", "memory complex", settings.memory_resource if settings.memory else None,
                   "memory_resource")]
        missing = [row for row in wanted if row[2] and row[2] not in offered[row[0]]]
        if missing:
            key, what, value, field = missing[0]
            results.append(CheckResult(f"class {name}", False, f"no {what} {value!r} (qconf lists "
                                       f"{', '.join(sorted(offered[key])) or 'none'})",
                                       f"set classes.{name}.{field} to what the cluster has"))
        else:
            results.append(CheckResult(f"class {name}", True, f"queue {settings.queue or '(any)'}, "
                                       f"pe {settings.pe or 'none'}, gpus {gpus or 'none'}"))
    return results
