"""Turning a job description into the folder the runner will find on the cluster.

A prepared job lives in the submitter's outbox as ``<id>/{job.sh, job.json, input/}``
(``input/`` only when it has inputs), with a copy of each input (a reflink where the
filesystem has them) taken from the file that was checked, so what is sent is what was
checked, whatever the path names later; one transfer then sends the whole outbox.  An
outbox entry means "still to be sent": it is removed once the cluster has confirmed the
job is queued, and rebuilt if the cluster ever loses it.
"""
from __future__ import annotations

import functools
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .boundaries import boundaries_for
from .cache import NEUTRAL_WORKSPACE
from .config import Config
from .jobs import (
    RESERVED_VARIABLES,
    JobDescription,
    JobInvalid,
    check_files,
    fingerprint,
    job_id,
    parse_job,
    workspace_names,
)
from .on_hpc.batchfile import BATCH_PREFIX, BatchFile
from .on_hpc.files import remove_file, write_all
from .on_hpc.resources import gres_gpus, job_request, never_fits
from .on_hpc.schedulers import too_long_message, usable_seconds
from .rendering import Template, TemplateProblem, load_template, render
from .safefs import Boundaries, FileRefused, stage_copy

JOBS_FOLDER = "jobs"


@dataclass
class PreparedJob:
    name: str
    job_id: str
    description: JobDescription
    template: Template
    job_class: str
    script: str
    fingerprint: dict[str, list[int]]
    variables: dict[str, Any]   # what the script was rendered with, less the workspace

    @functools.cached_property
    def neutral_script(self) -> str:
        """The script rendered with a workspace path and file names that are the same for
        every job, for the cache key; rendered only when a key is made (a second render
        of every job was wasted where the cache is off)."""
        return render(self.template, {**self.variables, **neutral_names(self.description.input_map),
                                      **neutral_names(self.description.output_map), "workspace": NEUTRAL_WORKSPACE})

    @property
    def cacheable(self) -> bool:
        return self.description.cache is not False and self.template.cache is not False

    @property
    def input_names(self) -> dict[str, str]:
        return workspace_names(self.description.input_map)


@dataclass(frozen=True)
class StagedEntry:
    """What ``write_outbox_entry`` made: each input's sha256 as copied, and what sending
    the entry costs on the cluster (``space.entry_bytes``'s measure, its ``job.json`` line
    counted for its share), known as written so the cycle that sends it need not walk it."""
    digests: dict[str, str]
    size: int


def remote_job_dir(config: Config, the_job_id: str) -> str:
    return f"{config.workspace}/{JOBS_FOLDER}/{the_job_id}"


def prepare(config: Config, name: str, raw: dict[str, Any],
            prints: dict[str, list[int]] | None = None, boundaries: Boundaries | None = None) -> PreparedJob:
    """Validate, derive the job id and render the script.

    Raises JobInvalid or TemplateProblem (the job's fault).  ``prints`` is the input
    fingerprint recorded when the job was taken; a fresh one is read when not given.
    ``boundaries``: the caller's, worked out once for its cycle (``boundaries_for`` costs
    some 30 µs a call, a tenth of what taking a job costs beside it).
    """
    description = parse_job(raw)
    problems = check_files(description, boundaries or boundaries_for(config))
    problems += [f"{section}.{key}: names the operator's setting hpc_env.{key}, which a job cannot override"
                 for section, keys in (("args", description.args), ("input_map", description.input_map),
                                       ("output_map", description.output_map))
                 for key in keys if key in config.hpc_env and key not in RESERVED_VARIABLES]
    try:
        template = load_template(config.templates, description.script)
    except TemplateProblem as problem:
        problems.append(str(problem))
        template = None
    job_class = description.job_class or (template.job_class if template else None) or config.default_class
    if job_class not in config.classes:
        problems.append(f"class: {job_class!r} is not configured (known: {', '.join(sorted(config.classes))})")
    elif template is not None:
        problems += _time_problems(config, job_class, description.expected_seconds or template.expected_seconds)
        problems += resource_problems(config, job_class, {**template.resources, **description.resources})
    if problems:
        raise JobInvalid(problems)
    prints = prints if prints is not None else fingerprint(description)
    the_id = job_id(config.submitter_id, name, raw, prints)
    variables: dict[str, Any] = dict(config.hpc_env)
    variables.update(description.args)
    variables.update(workspace_names(description.input_map))
    variables.update(workspace_names(description.output_map))
    script = render(template, {**variables, "workspace": remote_job_dir(config, the_id)})
    return PreparedJob(name, the_id, description, template, job_class, script, prints, variables)


def neutral_names(paths: dict[str, str]) -> dict[str, str]:
    """File names for the cache key: the key and the extension, not the base name, so a
    tool that names its files per run (``dataset_123.dat``) still meets its cache."""
    return {key: key + os.path.splitext(path)[1] for key, path in paths.items()}


def _time_problems(config: Config, job_class: str, expected: int | None) -> list[str]:
    """A job that expects more time than a runner of its class can give would wait
    forever: it is refused at once, with the figures."""
    settings = config.classes[job_class]
    usable = usable_seconds(settings.time_limit, settings.warn_seconds)
    if not expected or usable is None or expected <= usable:
        return []
    return [too_long_message(expected, job_class, settings.time_limit, usable)]


def resource_problems(config: Config, job_class: str, asked: dict[str, int]) -> list[str]:
    """A job that asks for more than one node of its class holds would wait forever: it is
    refused at once, with the figures."""
    if not asked:
        return []
    settings = config.classes[job_class].to_request()
    return never_fits(job_request(asked, settings, 0), settings, job_class, known_gpus(config, settings))


def known_gpus(config: Config, settings: dict[str, Any]) -> int | None:
    """GPUs per node of a class, when known before a runner starts: Slurm's come from
    ``gres``, Grid Engine's from ``gpus``; a local class finds its own unless it lists
    them or says ``none``."""
    gpus = settings.get("gpus")
    if gpus == "none":
        return 0
    if isinstance(gpus, list):
        return len(gpus)
    if isinstance(gpus, int) and not (config.scheduler == "slurm" and settings.get("gres")):
        return gpus      # Slurm asks --gres=gpu:N for it when the class names no gres
    if config.scheduler == "slurm" or gres_gpus(settings.get("gres")):
        return gres_gpus(settings.get("gres"))
    return None


def write_outbox_entry(outbox: Path, job: PreparedJob, submitter_id: str, boundaries: Boundaries,
                       metas: BatchFile | None = None) -> StagedEntry:
    """(Re)build ``outbox/<id>`` whole: a crash half-way leaves an entry that is rebuilt.
    Its ``job.json`` is a line of ``metas``, the cycle's one file for every job it takes,
    linked in (``on_hpc/batchfile.py``: a file made per job was the dearest part of
    intake); a job staged alone gets a file of its own.

    JobInvalid when an input can no longer be taken (gone, moved out of bounds, no longer
    a regular file): the job's fault."""
    entry = outbox / job.job_id
    try:
        entry.mkdir(parents=True, mode=0o700)
    except FileExistsError:     # left by a crash half-way (looking first cost every job a lookup)
        shutil.rmtree(entry, ignore_errors=True)
        entry.mkdir(mode=0o700)
    if job.input_names:         # an empty input/ would be one more folder to make per job (issue 18)
        (entry / "input").mkdir(mode=0o700)
    script = job.script.encode("utf-8")
    _write_new(entry / "job.sh", script)
    expected = job.description.expected_seconds or job.template.expected_seconds
    meta = {"id": job.job_id, "name": job.name, "class": job.job_class, "script": job.template.name,
            "expected_seconds": expected, "submitter": submitter_id,
            **job.template.resources, **job.description.resources}
    if metas is None:
        text = json.dumps(meta, indent=1).encode("utf-8")
        _write_new(entry / "job.json", text)
        size = len(script) + len(text)
    else:
        size = len(script) + metas.add(job.job_id, meta, str(entry / "job.json"))
    digests, problems = {}, []
    for key, target in job.input_names.items():
        value = job.description.input_map[key]
        try:
            digests[key], copied = stage_copy(value, boundaries, entry / "input" / target)
            size += copied
        except FileRefused as refused:
            problems.append(f"input_map.{key}: {value} {refused}")
        except FileNotFoundError:
            problems.append(f"input_map.{key}: {value} was removed before it could be taken")
    if problems:
        shutil.rmtree(entry, ignore_errors=True)
        raise JobInvalid(problems)
    return StagedEntry(digests, size)


def _write_new(path: Path, data: bytes) -> None:
    """A new file of the outbox's, which only the submitter writes: no temporary name is
    needed, as a crash half-way rebuilds the whole entry."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
    try:
        write_all(fd, data)
    finally:
        os.close(fd)


def prune_outbox(outbox: Path, keep: set[str]) -> list[str]:
    """Drop entries of jobs no longer held; return the ids still waiting to be sent."""
    waiting = []
    if not outbox.is_dir():
        return waiting
    for entry in os.scandir(outbox):
        if entry.name in keep:
            waiting.append(entry.name)
        elif entry.name.startswith(BATCH_PREFIX):
            remove_file(entry.path)      # the metas of a cycle killed before it closed them
        else:
            shutil.rmtree(entry.path, ignore_errors=True)
    return sorted(waiting)
