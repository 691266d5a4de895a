"""Job descriptions (hpc_batch's ``.job`` format) and their validation.

Validation collects every problem in a job, so the tool that wrote it learns all of them
from one result file.  Problems are the job's fault and end in an error result; nothing
here raises for the environment.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import yamltext
from .entries import UnusableEntry, bounded_message, load_bounded_yaml, read_regular
from .on_hpc.durations import parse_duration
from .on_hpc.resources import memory_mb
from .safefs import Boundaries, descriptor_path

IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SCRIPT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")
RESERVED_VARIABLES = {"workspace", "scripts", "containers"}
# Every key a .job may hold, and what it means: the validation below and the JSON Schema
# (schema.py, `dropbox-runner schema`) are both built on this table.
JOB_FIELDS = {
    "script": "the template to run: <script>.template in the templates folder",
    "args": "template variables, single values only",
    "input_map": "absolute paths of input files, by template variable",
    "output_map": "absolute paths where outputs must end up, by template variable",
    "class": "the resource class (overrides the template's)",
    "expected_time": "run time to reserve: 90, 90s, 30m, 2h, 1d or 1-02:00:00",
    "cache": "false for a tool that is not deterministic (never answered from the result cache)",
    "cpus": "CPUs the job needs (default: one slots-th of a node of its class)",
    "memory": "memory the job needs: 500M, 4G, or a bare number of MiB (default: one slots-th of a node's)",
    "gpus": "GPUs the job needs (default: one slots-th of a node's GPUs, at least one in a GPU class)",
}
KNOWN_KEYS = set(JOB_FIELDS)
MAX_JOB_FILE_BYTES = 1 << 20


class JobInvalid(Exception):
    """The job cannot run as written; ``problems`` says why, one line each."""

    def __init__(self, problems: list[str], incomplete: bool = False, digest: str | None = None):
        super().__init__("; ".join(problems))
        self.problems = problems
        self.incomplete = incomplete    # does not parse: may still be being written
        self.digest = digest            # sha256 of the job file's bytes, when they were read


@dataclass
class JobDescription:
    script: str
    args: dict[str, Any]
    input_map: dict[str, str]
    output_map: dict[str, str]
    job_class: str | None = None
    expected_seconds: int | None = None
    cache: bool | None = None
    resources: dict[str, int] = field(default_factory=dict)   # cpus, memory_mb, gpus it asked for
    raw: dict[str, Any] = field(default_factory=dict)


def read_job(path: str | Path) -> tuple[dict[str, Any], str]:
    """The YAML mapping in a ``.job`` file and the sha256 of the bytes it was parsed from
    (read once, so the digest names what was parsed); JobInvalid when it is not one.

    A ``.job`` that is a symbolic link or not a regular file is refused without being
    read (``entries.read_regular``): its content could be any file this account can read."""
    try:
        data = read_regular(path, MAX_JOB_FILE_BYTES)
    except UnusableEntry as error:
        raise JobInvalid([f"the job file cannot be used: {error}; refused without being read"]) from None
    digest = hashlib.sha256(data).hexdigest()
    return parse_job_document(data, digest), digest


def parse_job_document(data: bytes, digest: str | None = None) -> dict[str, Any]:
    """The YAML mapping in a job file's bytes; JobInvalid when it is not one (or is
    beyond the bounds of ``entries.load_bounded_yaml``).  Only a file that may still be
    being written (empty, not YAML yet, not yet a mapping) is ``incomplete``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise JobInvalid([f"the job file is not UTF-8 text (byte 0x{data[error.start]:02x} at offset "
                          f"{error.start}); nothing was run"], digest=digest) from None
    if not text.strip():
        raise JobInvalid(["the job file is empty"], incomplete=True, digest=digest)
    try:
        loaded = load_bounded_yaml(text)
    except yaml.YAMLError as error:
        raise JobInvalid([bounded_message(f"the job file is not valid YAML: {' '.join(str(error).split())}",
                                          500)], incomplete=True, digest=digest) from None
    except UnusableEntry as error:
        raise JobInvalid([f"the job file cannot be read: {error}"], digest=digest) from None
    if not isinstance(loaded, dict):
        raise JobInvalid([f"the job file must hold a mapping (script, args, input_map, output_map), "
                          f"not {type(loaded).__name__}"], incomplete=True, digest=digest)
    return loaded


def parse_job(data: dict[str, Any]) -> JobDescription:
    """Check the shape of a description; files are checked by ``check_files``."""
    problems: list[str] = list(unsafe_text(data))
    for key in sorted(set(map(str, data)) - KNOWN_KEYS):
        problems.append(f"unknown key {key!r} (known: {', '.join(sorted(KNOWN_KEYS))})")
    script = data.get("script")
    if not isinstance(script, str) or not script:
        problems.append("script: required, the name of a template")
    elif not SCRIPT_NAME.fullmatch(script) or ".." in script:
        problems.append(f"script: {script!r} is not a template name (letters, digits, '.', '_', '-'; no '/' or '..')")
    args = _section(data, "args", problems)
    for key, value in args.items():
        if not isinstance(value, (str, int, float, bool)) and value is not None:
            problems.append(f"args.{key}: must be a single value, not {type(value).__name__}")
    inputs = _section(data, "input_map", problems)
    outputs = _section(data, "output_map", problems)
    for section, paths in (("input_map", inputs), ("output_map", outputs)):
        for key, value in paths.items():
            if not isinstance(value, str) or not os.path.isabs(value):
                problems.append(f"{section}.{key}: must be an absolute path, got {value!r}")
            elif "\0" in value:
                problems.append(f"{section}.{key}: contains a NUL byte")
            elif ".." in Path(value).parts:
                problems.append(f"{section}.{key}: {value!r} contains '..'")
    names = [*args, *inputs, *outputs]
    for key in names:
        if not isinstance(key, str) or not IDENTIFIER.fullmatch(key):     # YAML reads `yes:` as True
            problems.append(f"{key!r}: keys must be identifiers (letters, digits, '_'), usable as <<{key}>>")
        elif key in RESERVED_VARIABLES:
            problems.append(f"{key!r}: reserved for the template variable of that name")
    for key in sorted({k for k in names if names.count(k) > 1}):
        problems.append(f"{key!r}: used in more than one of args, input_map, output_map")
    targets = [os.path.normpath(v) for v in outputs.values() if isinstance(v, str)]
    for target in sorted({t for t in targets if targets.count(t) > 1}):
        problems.append(f"output_map: {target} is the destination of more than one output")
    job_class = data.get("class")
    if job_class is not None and not (isinstance(job_class, str) and IDENTIFIER.fullmatch(job_class)):
        problems.append(f"class: {job_class!r} is not a class name")
    expected = None
    if data.get("expected_time") is not None:
        try:
            expected = parse_duration(data["expected_time"])
        except (ValueError, TypeError, OverflowError) as error:
            problems.append(f"expected_time: {error}")
    cache = data.get("cache")
    if cache is not None and not isinstance(cache, bool):
        problems.append(f"cache: must be true or false, got {cache!r}")
    resources = parse_resources(data, problems)
    if problems:
        raise JobInvalid(problems)
    return JobDescription(script=script, args={str(k): v for k, v in args.items()},
                          input_map={str(k): v for k, v in inputs.items()},
                          output_map={str(k): v for k, v in outputs.items()},
                          job_class=job_class, expected_seconds=expected, cache=cache, resources=resources,
                          raw=data)


def parse_resources(data: dict[str, Any], problems: list[str]) -> dict[str, int]:
    """``cpus`` (at least 1), ``memory`` (``500M``, ``4G``; a bare number is MiB, as in
    Slurm) and ``gpus`` (0 or more) of a job or a template header, as the runner counts them."""
    resources: dict[str, int] = {}
    for key, least in (("cpus", 1), ("gpus", 0)):
        value = data.get(key)
        if value is None:
            continue
        # ASCII digits only: str.isdigit() also takes "²", which int() refuses.
        if isinstance(value, bool) or not re.fullmatch(r"\s*[0-9]+\s*", str(value)) or int(value) < least:
            problems.append(f"{key}: must be a whole number of at least {least}, got {value!r}")
        else:
            resources[key] = int(value)
    if data.get("memory") is not None:
        try:
            memory = memory_mb(data["memory"])
            if memory is None:
                raise ValueError(f"{data['memory']!r} is not a memory size (like 500M, 4G)")
        except ValueError as error:
            problems.append(f"memory: {error}")
        else:
            if memory < 1:
                # 0 would leave srun to give the step the whole allocation's memory.
                problems.append(f"memory: must be at least 1M, got {data['memory']!r}")
            else:
                resources["memory_mb"] = memory
    return resources


def check_files(job: JobDescription, boundaries: Boundaries) -> list[str]:
    """Inputs readable files and outputs writable places, inside the boundaries (on the
    resolved paths).  Staging and placing check again at the moment they use a path.

    Each path is looked up and resolved once (``realpath`` walks it a component at a
    time): asking again what the first lookup told was half of this check's cost, and a
    tenth of a job's intake (issue 18)."""
    problems = []
    found: dict[str, os.stat_result] = {}      # what is at each path that exists (not followed)
    resolved: dict[str, Path] = {}
    for section, paths in (("input_map", job.input_map), ("output_map", job.output_map)):
        for key, value in paths.items():
            try:
                found[value] = os.lstat(value)
                resolved[value] = Path(value).resolve()
            except FileNotFoundError:
                pass
            except (OSError, ValueError, RuntimeError) as error:   # too long, a link loop, a NUL
                detail = error.strerror if isinstance(error, OSError) and error.strerror else error
                problems.append(f"{section}.{key}: {value} cannot be used: {detail}")
    if problems:
        return problems
    for key, value in job.input_map.items():
        path = Path(value)
        why = boundaries.problem(resolved.get(value) or Path(os.path.realpath(value)), output=False)
        if why:
            problems.append(f"input_map.{key}: {value} {why}")
        elif not path.exists():
            problems.append(f"input_map.{key}: {value} does not exist")
        elif not path.is_file():
            problems.append(f"input_map.{key}: {value} is not a regular file")
        elif not os.access(path, os.R_OK):
            problems.append(f"input_map.{key}: {value} is not readable")
    for key, value in job.output_map.items():
        path = Path(value)
        folder = str(path.parent)
        real, is_folder = _resolved_folder(folder)
        why = boundaries.problem(os.path.join(real, path.name), output=True)
        there = found.get(value)
        if why:
            problems.append(f"output_map.{key}: {value} {why}")
        elif not is_folder:
            problems.append(f"output_map.{key}: the folder {folder} does not exist")
        elif not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"output_map.{key}: the folder {folder} is not writable")
        elif there is not None and not stat.S_ISREG(there.st_mode):     # a link, a folder, a FIFO
            problems.append(f"output_map.{key}: {value} is not a regular file; only a regular file may be replaced")
    return problems


def _resolved_folder(folder: str) -> tuple[str, bool]:
    """``folder`` resolved, and whether it is a folder: one open (``O_PATH``, which reads
    nothing) and the kernel's answer where it is, rather than ``realpath``'s lookup of each
    component in turn (four system calls and 15 µs an output here); ``realpath`` only
    for what cannot be opened as a folder."""
    try:
        fd = os.open(folder, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return os.path.realpath(folder), False
    try:
        return descriptor_path(fd), True
    finally:
        os.close(fd)


def unsafe_text(value: Any, where: str = "") -> list[str]:
    """NUL bytes and lone surrogates anywhere in a description: a shell or a file system
    would silently cut or mangle them, so the job would run on something else."""
    if isinstance(value, dict):
        return [problem for key, item in value.items()
                for problem in unsafe_text(key, where) + unsafe_text(item, f"{where}{key}.")]
    if isinstance(value, list):
        return [problem for index, item in enumerate(value) for problem in unsafe_text(item, f"{where}{index}.")]
    if not isinstance(value, str):
        return []
    place = where.rstrip(".") or "the job file"
    if "\x00" in value:
        return [f"{place}: contains a NUL byte, which no argument or path can carry"]
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return [f"{place}: contains an unpaired surrogate escape, which is not text"]
    return []


def echoable(data: Any, limit: int = 16 << 10) -> dict[str, Any] | None:
    """What a rejected job's result may repeat of its file: the known keys whose values
    have the right shape and are clean text, and nothing when that is over ``limit`` bytes.
    A result never copies what was not a job description."""
    if not isinstance(data, dict):
        return None
    echo: dict[str, Any] = {}
    sections = ("args", "input_map", "output_map")
    for key in sorted(KNOWN_KEYS - set(sections)):
        if isinstance(data.get(key), (str, int, float, bool)) and not unsafe_text(data[key]):
            echo[key] = data[key]
    for key in sections:
        section = data.get(key)
        if isinstance(section, dict):
            echo[key] = {name: value for name, value in section.items()
                         if isinstance(name, str) and IDENTIFIER.fullmatch(name)
                         and isinstance(value, (str, int, float, bool)) and not unsafe_text(value)}
    return echo if len(dump_yaml(echo).encode()) <= limit else None


def workspace_names(paths: dict[str, str]) -> dict[str, str]:
    """The file name each input (or output) gets in the job's folder on the cluster.

    The base name, as hpc_batch's templates expect; where two share a base name, each of
    those is prefixed with its key, so neither overwrites the other.
    """
    bases = {key: os.path.basename(value) for key, value in paths.items()}
    taken = list(bases.values())
    return {key: base if taken.count(base) == 1 else f"{key}-{base}" for key, base in bases.items()}


def fingerprint(job: JobDescription) -> dict[str, list[int]]:
    """Size and mtime of every input: a job re-dropped with changed inputs is a new job."""
    prints = {}
    for key, value in sorted(job.input_map.items()):
        stat = os.stat(value)
        prints[key] = [stat.st_size, stat.st_mtime_ns]
    return prints


def job_id(submitter: str, job_name: str, raw: dict[str, Any], prints: dict[str, list[int]]) -> str:
    """Derived from the job, never the clock: a cycle that dies and runs again finds the
    same workspace.  It starts with the submitter's id, so submitters sharing a cluster
    workspace each see only their own jobs."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", job_name[: -len(".job")] if job_name.endswith(".job") else job_name)
    canonical = json.dumps([job_name, raw, prints], sort_keys=True, default=str)
    return f"{submitter}.{stem[:40]}.{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


# libyaml's loader and dumper when PyYAML has them: ten times faster on big dropboxes.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 - a safe loader


def dump_yaml(data: dict[str, Any]) -> str:
    """YAML block text: by ``yamltext`` for plain values (results, holds: several times
    faster), by PyYAML for what that leaves to it."""
    return yamltext.emit(data, _dump_pyyaml)


def _dump_pyyaml(data: dict[str, Any]) -> str:
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _section(data: dict[str, Any], key: str, problems: list[str]) -> dict[Any, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: must be a mapping, not {type(value).__name__}")
        return {}
    return value

