"""The submitter's configuration: a YAML file, or hpc_batch's INI file taken as it is.

Every problem in a file is collected and reported at once, with the file's name, so an
operator fixes a config in one pass rather than one error per run.
"""
from __future__ import annotations

import configparser
import hashlib
import os
import re
import socket
import sys
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from . import templates as packaged_templates
from .on_hpc import protocol
from .on_hpc.durations import parse_duration
from .on_hpc.resources import memory_mb
from .on_hpc.schedulers import CONNECTORS, connector_class
from .units import parse_size

PACKAGED_TEMPLATES = Path(packaged_templates.__file__).parent


class ConfigError(Exception):
    """A config file that cannot be used; the message lists every problem in it."""


@dataclass
class ResourceClass:
    """One kind of runner: what it asks the scheduler for and how many jobs it takes."""

    partition: str | None = None
    gres: str | None = None
    cpus: int | None = None
    memory: str | None = None
    time_limit: int | None = None        # seconds; None leaves it to the scheduler
    slots: int = protocol.DEFAULT_SLOTS                 # jobs at once in one runner
    # Left out (None), these three come from the scheduler (protocol.runner_defaults): where
    # runners queue, enough of them for 14 jobs at once and an adaptive linger of up to 30
    # minutes; on the local scheduler one runner and a fixed minute.
    max_runners: int | None = None
    idle_timeout: int | None = None      # seconds a runner waits for work before leaving
    warn_seconds: int = protocol.DEFAULT_WARN_SECONDS   # early warning before the time limit
    extra_args: list[str] = field(default_factory=list)
    runner_per_job: bool = False         # 1:1: one scheduler job per job (no batching)
    # The runner policy (on_hpc/policy.py; README "Runner policy"); defaults from bench/simulate.py.
    user_limit: int = protocol.DEFAULT_USER_LIMIT       # the site's per-user job limit, all classes; 0: none
    speculate: int = protocol.DEFAULT_SPECULATE         # runners kept pending for any backlog at all
    submit_cap: int = protocol.DEFAULT_SUBMIT_CAP       # most runner submissions per class per cycle
    submit_per_hour: int = protocol.DEFAULT_SUBMIT_PER_HOUR   # ... and in any hour
    adaptive_linger: bool | None = None  # linger only while arrivals pay for it
    nodes: int = 1                       # nodes in one allocation; cpus, memory, gres are each node's
    # GPUs one allocation holds: a count (Grid Engine asks gpu_resource for it; local: the first
    # N found), a list of ids (local), "none", or None/"auto" (local: find them)
    gpus: int | list[str] | str | None = None
    launch: str | None = None            # slurm: "step" (default) or "process"
    # Grid Engine (scheduler: sge), where Slurm's partition and gres do not apply:
    queue: str | None = None             # qsub -q
    pe: str | None = None                # the parallel environment whose slots are the cpus
    gpu_resource: str = "gpu"
    memory_resource: str = "h_vmem"      # the complex that memory is asked of, per slot

    def to_request(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass
class Remote:
    """How to reach the cluster's head node over SSH.

    ``host`` may be an alias of the SSH config file, which paramiko and OpenSSH (rsync)
    then read alike.  The passphrase is kept out of ``repr`` so a logged config never
    shows it; ``passphrase_env`` names an environment variable to take it from instead.
    """

    host: str
    port: int | None = None
    user: str | None = None
    key_file: Path | None = None
    passphrase: str | None = field(default=None, repr=False)
    passphrase_env: str | None = None
    known_hosts: Path | None = None      # default ~/.ssh/known_hosts
    ssh_config: Path | None = None       # default ~/.ssh/config (and /etc/ssh/ssh_config)
    transfer: str = "auto"               # rsync | sftp | auto
    connect_timeout: int = 15


@dataclass
class Config:
    dropbox: Path
    source: Path
    backend: str = "local"               # local | ssh
    scheduler: str = "local"             # a name in on_hpc.schedulers.CONNECTORS
    cluster_root: Path | None = None     # the "cluster" folder of the local backend
    hpc_env: dict[str, str] = field(default_factory=dict)
    templates: Path = PACKAGED_TEMPLATES
    state_dir: Path | None = None
    lockfile: Path | None = None
    submitter_id: str = ""
    classes: dict[str, ResourceClass] = field(default_factory=lambda: {"default": ResourceClass()})
    default_class: str = "default"
    max_attempts: int = protocol.DEFAULT_MAX_ATTEMPTS
    grace_seconds: int = 30              # how long a .job that does not parse may still be written
    settle_seconds: int = 2              # a .job is taken once unchanged this long (or closed/renamed: watch)
    heartbeat_timeout: int = protocol.DEFAULT_HEARTBEAT_TIMEOUT
    python: str = ""                     # the cluster's interpreter for on_hpc
    cache_dir: Path | None = None        # default: <state_dir>/cache
    cache_max_bytes: int = 10 << 30      # 0 turns the result cache off
    metrics_file: Path | None = None     # a Prometheus textfile, rewritten after each cycle
    observer: str = "auto"               # watch: inotify | polling | auto (polling on network filesystems)
    tick: int = 30                       # watch: seconds between cycles when nothing happens
    allowed_input_roots: list[Path] = field(default_factory=list)
    allowed_output_roots: list[Path] = field(default_factory=list)
    remote: Remote | None = None

    @property
    def workspace(self) -> str:
        return self.hpc_env["workspace"]

    @property
    def scripts(self) -> str:
        return self.hpc_env["scripts"]


_DURATION_FIELDS = {"time_limit", "idle_timeout", "warn_seconds", "grace_seconds", "settle_seconds",
                    "heartbeat_timeout", "tick"}
_PATH_FIELDS = {"dropbox", "cluster_root", "templates", "state_dir", "lockfile", "metrics_file", "cache_dir",
                "key_file", "known_hosts", "ssh_config"}


def load_config(path: str | os.PathLike[str], check_folders: bool = True) -> Config:
    """Read and check a config.  ``check_folders`` (off only to parse a config meant for
    another machine) also requires the folders and the key it names to exist here."""
    source = Path(path).expanduser().resolve()
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as error:
        raise ConfigError(f"{source}: cannot read: {error.strerror}") from None
    if source.suffix.lower() in (".ini", ".cfg") or text.lstrip().startswith("["):
        data = _ini_to_mapping(source, text)
    else:
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as error:
            raise ConfigError(f"{source}: not valid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the config must be a mapping of keys to values")
    return build_config(data, source, check_folders)


def build_config(data: dict[str, Any], source: Path, check_folders: bool = False) -> Config:
    problems: list[str] = []
    values = _convert(Config, data, problems, "", source.parent)
    if "dropbox" not in values:
        problems.append("dropbox: required (the folder tools drop .job files into)")
    if problems:
        raise ConfigError(f"{source}:\n  " + "\n  ".join(problems))
    config = Config(source=source, **values)
    _fill_defaults(config, problems)
    _check_extra_args(config, problems)
    if check_folders:
        _check_places(config, problems)
    if problems:
        raise ConfigError(f"{source}:\n  " + "\n  ".join(problems))
    return config


def _fill_runner_defaults(settings: ResourceClass, queued: bool) -> None:
    """The runner policy's settings a class leaves out, which depend on its scheduler."""
    defaults = protocol.runner_defaults(queued, max(1, settings.slots), max(1, settings.nodes))
    for key, value in defaults.items():
        if getattr(settings, key) is None:
            setattr(settings, key, value)


def _fill_defaults(config: Config, problems: list[str]) -> None:
    if config.backend not in ("local", "ssh"):
        problems.append(f"backend: {config.backend!r} is not one of local, ssh")
    if config.scheduler not in CONNECTORS:
        problems.append(f"scheduler: {config.scheduler!r} is not one of {', '.join(sorted(CONNECTORS))}")
    if config.scheduler == "sge":
        problems += _grid_engine_problems(config.classes)
    if config.backend == "ssh" and config.remote is None:
        problems.append("remote: required with backend: ssh (host, and optionally user, port, key_file)")
    if config.remote and config.remote.transfer not in ("rsync", "sftp", "auto"):
        problems.append(f"remote.transfer: {config.remote.transfer!r} is not one of rsync, sftp, auto")
    if config.observer not in ("auto", "inotify", "polling"):
        problems.append(f"observer: {config.observer!r} is not one of auto, inotify, polling")
    if config.default_class not in config.classes:
        problems.append(f"default_class: {config.default_class!r} is not among classes")
    queued = config.scheduler in CONNECTORS and connector_class(config.scheduler).queues_runners
    for name, settings in config.classes.items():
        _fill_runner_defaults(settings, queued)
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
            problems.append(f"classes.{name}: class names are identifiers (letters, digits, '_'), "
                            f"as jobs and templates name them")
        for key in ("slots", "max_runners", "nodes", "speculate", "submit_cap", "submit_per_hour"):
            if getattr(settings, key) < 1:
                problems.append(f"classes.{name}.{key}: must be at least 1")
        if settings.user_limit < 0:
            problems.append(f"classes.{name}.user_limit: must not be negative (0: no limit stated)")
        problems += _resource_problems(config, name, settings)
    if config.backend == "local":
        root = config.cluster_root or config.dropbox.parent / "cluster"
        config.cluster_root = root
        config.hpc_env.setdefault("workspace", str(root / "workspace"))
        config.hpc_env.setdefault("scripts", str(root / "scripts"))
        config.hpc_env.setdefault("containers", str(root / "containers"))
        config.python = config.python or sys.executable
    else:
        for key in ("workspace", "scripts"):
            if key not in config.hpc_env:
                problems.append(f"hpc_env.{key}: required with backend: ssh (a folder on the cluster)")
            elif not config.hpc_env[key].startswith("/"):
                problems.append(f"hpc_env.{key}: must be an absolute path on the cluster "
                                f"(on_hpc runs from its own folder there), got {config.hpc_env[key]!r}")
        config.hpc_env.setdefault("containers", "")
        config.python = config.python or "python3"
    config.state_dir = config.state_dir or config.dropbox / ".dropbox-runner"
    config.lockfile = config.lockfile or config.state_dir / "lock"
    config.cache_dir = config.cache_dir or config.state_dir / "cache"
    if not config.submitter_id:
        config.submitter_id = default_submitter_id(config.dropbox)
    elif not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", config.submitter_id):
        problems.append("submitter_id: use 1-40 letters, digits, '-' or '_'")
    if config.scheduler == "sge" and "," in config.hpc_env.get("workspace", ""):
        problems.append("hpc_env.workspace: Grid Engine cannot take a ',' in the runners' log path")


def _grid_engine_problems(classes: dict[str, ResourceClass]) -> list[str]:
    """Slurm's settings mean nothing to Grid Engine: say so rather than drop them."""
    problems = []
    for name, settings in classes.items():
        for key, instead in (("partition", "queue"), ("gres", "gpus")):
            if getattr(settings, key):
                problems.append(f"classes.{name}.{key}: Slurm's; with scheduler: sge use {instead}")
        if (settings.cpus or 1) > 1 and not settings.pe:
            problems.append(f"classes.{name}.cpus: with scheduler: sge, cpus are slots of a parallel "
                            f"environment: name it with pe")
    return problems


def _resource_problems(config: Config, name: str, settings: ResourceClass) -> list[str]:
    problems = []
    if config.scheduler != "local" and isinstance(settings.gpus, list):
        problems.append(f"classes.{name}.gpus: a list of GPU ids is for scheduler: local; "
                        f"{config.scheduler} is asked for a number of GPUs")
    if settings.launch not in (None, "step", "process"):
        problems.append(f"classes.{name}.launch: {settings.launch!r} is not one of step, process")
    elif settings.launch == "step" and config.scheduler != "slurm":
        problems.append(f"classes.{name}.launch: step needs scheduler: slurm")
    if settings.nodes > 1 and (config.scheduler != "slurm" or settings.launch == "process"):
        problems.append(f"classes.{name}.nodes: more than one node needs scheduler: slurm and job steps "
                        f"(plain processes run on the batch node only)")
    if settings.memory is not None:
        try:
            memory_mb(settings.memory)
        except ValueError as error:
            problems.append(f"classes.{name}.memory: {error}")
    return problems


# What a runner's submission relies on (sched_slurm.sbatch_argv, sched_sge.qsub_argv): a
# class's extra_args must not override them, or runners go unrecognised, restart on their
# own or log elsewhere.  Slurm's: long option -> its short form (which may take its value glued).
RUNNER_OPTIONS = {"--parsable": None, "--job-name": "-J", "--output": "-o", "--error": "-e", "--open-mode": None,
                  "--chdir": "-D", "--requeue": None, "--no-requeue": None, "--signal": None, "--wrap": None}
SGE_RUNNER_OPTIONS = {"-terse", "-N", "-o", "-e", "-j", "-wd", "-cwd", "-r", "-b", "-shell"}
# Folders that are never a dropbox: a typo there would have the submitter write into them.
SYSTEM_FOLDERS = {Path(p) for p in ("/", "/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt",
                                    "/proc", "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var",
                                    "/var/tmp", "/var/lib", "/usr/local")}


def _check_extra_args(config: Config, problems: list[str]) -> None:
    for name, settings in config.classes.items():
        for arg in settings.extra_args:
            if config.scheduler == "sge":
                clashes = [arg] if arg in SGE_RUNNER_OPTIONS else []
            else:
                clashes = [long for long, short in RUNNER_OPTIONS.items()
                           if arg == long or arg.startswith(long + "=") or (short and arg.startswith(short))]
            for option in clashes:
                problems.append(f"classes.{name}.extra_args: {arg!r} would override {option}, "
                                f"which the runner's submission sets itself")


def _check_places(config: Config, problems: list[str]) -> None:
    """Folders and files that must already exist: created silently, a typo would go unseen."""
    dropbox = config.dropbox
    if dropbox in SYSTEM_FOLDERS or dropbox == Path.home():
        problems.append(f"dropbox: {dropbox} is a system folder; give the dropbox a folder of its own")
    elif not dropbox.is_dir():
        problems.append(f"dropbox: {dropbox} is not a folder (create it, writable by tools and this account)")
    if config.templates != PACKAGED_TEMPLATES and not config.templates.is_dir():
        problems.append(f"templates: {config.templates} is not a folder")
    if config.metrics_file is not None and not config.metrics_file.parent.is_dir():
        problems.append(f"metrics_file: the folder {config.metrics_file.parent} does not exist "
                        f"(node_exporter's textfile folder)")
    key = config.remote.key_file if config.remote else None
    if key is not None:
        if not key.is_file():
            problems.append(f"remote.key_file: {key} does not exist")
        elif not os.access(key, os.R_OK):
            problems.append(f"remote.key_file: {key} is not readable by this account")


def default_submitter_id(dropbox: Path) -> str:
    """This host plus a hash of the dropbox: stable across runs, distinct per dropbox."""
    host = re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname().split(".")[0])[:20] or "host"
    digest = hashlib.sha256(str(dropbox.resolve()).encode()).hexdigest()[:6]
    return f"{host}-{digest}"


def _convert(cls: type, data: dict[str, Any], problems: list[str], where: str, base: Path) -> dict[str, Any]:
    """Check a mapping against a dataclass's fields, collecting every problem."""
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    values: dict[str, Any] = {}
    for key, raw in data.items():
        name = f"{where}{key}"
        if key not in known:
            problems.append(f"{name}: unknown key (known: {', '.join(sorted(known))})")
            continue
        try:
            values[key] = _convert_value(key, str(known[key].type), raw, problems, name, base)
        except (TypeError, ValueError) as error:
            problems.append(f"{name}: {error}")
    return values


def _convert_value(key: str, kind: str, raw: Any, problems: list[str], name: str, base: Path) -> Any:
    if raw is None and "None" in kind:
        return None
    if key in _DURATION_FIELDS:
        return parse_duration(raw)
    if key == "cache_max_bytes":
        return parse_size(raw)
    if key in _PATH_FIELDS:
        return _path(raw, base)
    if key in ("allowed_input_roots", "allowed_output_roots"):
        return [_path(item, base) for item in _list(raw)]
    if key == "classes":
        if not isinstance(raw, dict) or not raw:
            raise TypeError("expected a mapping of class names to settings")
        return {str(cls): ResourceClass(**_convert(ResourceClass, _mapping(spec), problems, f"{name}.{cls}.", base))
                for cls, spec in raw.items()}
    if key == "remote":
        values = _convert(Remote, _mapping(raw), problems, f"{name}.", base)
        if "host" not in values:
            raise ValueError("host is required")
        return Remote(**values)
    if key == "hpc_env":
        return {str(k): "" if v is None else str(v) for k, v in _mapping(raw).items()}
    if key == "extra_args":
        return [str(item) for item in _list(raw)]
    if key == "gpus":
        if raw in ("none", "auto"):
            return None if raw == "auto" else raw
        if isinstance(raw, int) and not isinstance(raw, bool) and raw >= 0:
            return raw
        # Ids as CUDA_VISIBLE_DEVICES takes them: indexes, or GPU-/MIG- UUIDs.
        if isinstance(raw, list) and all(isinstance(item, int) and not isinstance(item, bool) or
                                         isinstance(item, str) and re.fullmatch(r"[A-Za-z0-9_.:/-]+", item)
                                         for item in raw):
            return [str(item) for item in raw]
        raise TypeError(f"expected a GPU count, a list of GPU ids like [0, 1], none or auto, got {raw!r}")
    if kind.startswith("bool"):
        if not isinstance(raw, bool):
            raise TypeError(f"expected true or false, got {raw!r}")
        return raw
    if kind.startswith("int"):
        if isinstance(raw, bool) or not isinstance(raw, (int, str)) or not str(raw).strip().isdigit():
            raise TypeError(f"expected a whole number, got {raw!r}")
        return int(raw)
    if isinstance(raw, (dict, list)):
        raise TypeError(f"expected a single value, got {type(raw).__name__}")
    return str(raw)


def _path(raw: Any, base: Path) -> Path:
    if not isinstance(raw, str) or not raw:
        raise TypeError(f"expected a path, got {raw!r}")
    return (base / Path(raw).expanduser()).resolve()


def _mapping(raw: Any) -> dict[str, Any]:
    if not isinstance(raw, dict):
        raise TypeError(f"expected a mapping, got {type(raw).__name__}")
    return raw


def _list(raw: Any) -> list[Any]:
    if isinstance(raw, str):
        return raw.split()
    if not isinstance(raw, list):
        raise TypeError(f"expected a list, got {type(raw).__name__}")
    return raw


# -- hpc_batch's INI ------------------------------------------------------------------------
_INI_SECTIONS = {
    "remote": {"host", "port", "user", "key_file", "passphrase", "passphrase_env", "known_hosts"},
    "hpc": {"gres", "partition", "memory", "gpuram"},
    "cronjob": {"dropbox", "lockfile", "templates", "state_dir"},
}


def _ini_to_mapping(source: Path, text: str) -> dict[str, Any]:
    """hpc_batch's INI means SSH and Slurm; its [hpc] section is the default class."""
    parser = configparser.ConfigParser(interpolation=None)
    try:
        parser.read_string(text, source=str(source))
    except configparser.Error as error:
        raise ConfigError(f"{source}: not a valid INI file: {error}") from None
    problems = []
    for section in parser.sections():
        allowed = _INI_SECTIONS.get(section)
        if section == "hpc_env":
            continue
        if allowed is None:
            problems.append(f"[{section}]: unknown section (known: remote, hpc, cronjob, hpc_env)")
            continue
        problems += [f"[{section}] {key}: unknown key" for key in parser[section] if key not in allowed]
    if problems:
        raise ConfigError(f"{source}:\n  " + "\n  ".join(problems))
    section = lambda name: dict(parser[name]) if parser.has_section(name) else {}  # noqa: E731
    hpc = section("hpc")
    hpc.pop("gpuram", None)   # informational in hpc_batch; Slurm is asked through gres
    cronjob = section("cronjob")
    data: dict[str, Any] = {
        "backend": "ssh",
        "scheduler": "slurm",
        "remote": section("remote"),
        "hpc_env": section("hpc_env"),
        "classes": {"default": hpc},
        "templates": cronjob.pop("templates", str(source.parent / "tools")),
    }
    data.update(cronjob)
    return data
