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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .on_hpc.durations import parse_duration
from .on_hpc.resources import memory_mb

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

    def __init__(self, problems: list[str]):
        super().__init__("; ".join(problems))
        self.problems = problems


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


def read_job_file(path: Path) -> dict[str, Any]:
    """The YAML mapping in a ``.job`` file; JobInvalid when it is not one."""
    size = path.stat().st_size
    if size > MAX_JOB_FILE_BYTES:
        raise JobInvalid([f"the job file is {size} bytes; job descriptions are limited to {MAX_JOB_FILE_BYTES}"])
    text = path.read_bytes().decode("utf-8", errors="replace")
    if not text.strip():
        raise JobInvalid(["the job file is empty"])
    try:
        data = load_yaml(text)
    except yaml.YAMLError as error:
        raise JobInvalid([f"the job file is not valid YAML: {' '.join(str(error).split())}"]) from None
    if not isinstance(data, dict):
        raise JobInvalid([f"the job file must hold a mapping (script, args, input_map, output_map), "
                          f"not {type(data).__name__}"])
    return data


def parse_job(data: dict[str, Any]) -> JobDescription:
    """Check the shape of a description; files are checked by ``check_files``."""
    problems: list[str] = []
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
            elif ".." in Path(value).parts:
                problems.append(f"{section}.{key}: {value!r} contains '..'")
    names = [*args, *inputs, *outputs]
    for key in names:
        if not IDENTIFIER.fullmatch(str(key)):
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
        except ValueError as error:
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
        if isinstance(value, bool) or not str(value).strip().isdigit() or int(value) < least:
            problems.append(f"{key}: must be a whole number of at least {least}, got {value!r}")
        else:
            resources[key] = int(value)
    if data.get("memory") is not None:
        try:
            megabytes = memory_mb(data["memory"])
            if megabytes is None or megabytes < 0:
                raise ValueError(f"{data['memory']!r} is not a memory size (like 500M, 4G)")
            resources["memory_mb"] = megabytes
        except ValueError as error:
            problems.append(f"memory: {error}")
    return resources


def check_files(job: JobDescription, input_roots: list[Path], output_roots: list[Path]) -> list[str]:
    """Inputs readable files and outputs writable places, inside the allowed roots."""
    problems = []
    for key, value in job.input_map.items():
        path = Path(value)
        real = path.resolve()
        if input_roots and not _inside(real, input_roots):
            problems.append(f"input_map.{key}: {value} is outside the allowed input folders")
        elif not path.exists():
            problems.append(f"input_map.{key}: {value} does not exist")
        elif not path.is_file():
            problems.append(f"input_map.{key}: {value} is not a regular file")
        elif not os.access(path, os.R_OK):
            problems.append(f"input_map.{key}: {value} is not readable")
    for key, value in job.output_map.items():
        folder = Path(value).parent
        real = Path(value).parent.resolve() / Path(value).name
        if output_roots and not _inside(real, output_roots):
            problems.append(f"output_map.{key}: {value} is outside the allowed output folders")
        elif not folder.is_dir():
            problems.append(f"output_map.{key}: the folder {folder} does not exist")
        elif not os.access(folder, os.W_OK | os.X_OK):
            problems.append(f"output_map.{key}: the folder {folder} is not writable")
        elif Path(value).is_dir():
            problems.append(f"output_map.{key}: {value} is a folder")
    return problems


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
    return yaml.dump(data, Dumper=_DUMPER, sort_keys=False, allow_unicode=True, default_flow_style=False)


def _section(data: dict[str, Any], key: str, problems: list[str]) -> dict[Any, Any]:
    value = data.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        problems.append(f"{key}: must be a mapping, not {type(value).__name__}")
        return {}
    return value


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or root in path.parents for root in roots)
