"""Script templates: hpc_batch's ``<<name>>`` placeholders, rendered by jinja2.

Two things differ from hpc_batch on purpose.  Every value is shell-quoted unless the
template says ``<<name|raw>>``, so an argument like ``; rm -rf ~`` reaches the script as
one literal word.  And a placeholder with no value is an error naming it, instead of a
``<<name>>`` left in the script for bash to misread.

A template may start with header comments that tell the submitter about it::

    # dropbox-runner: class=gpu expected_time=2h cache=false
    # dropbox-runner: cpus=4 memory=16G gpus=1
"""
from __future__ import annotations

import functools
import hashlib
import os
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .jobs import parse_resources
from .on_hpc.durations import parse_duration

if TYPE_CHECKING:
    import jinja2

HEADER = re.compile(r"^#\s*dropbox-runner:\s*(.*)$", re.MULTILINE)
# A ``<<`` that does not open a placeholder (a heredoc, ``$((a<<2))``) is plain text.
_PLACEHOLDER = r"<<-?\s*[A-Za-z_][A-Za-z0-9_]*\s*(\|\s*[A-Za-z_]+\s*)*-?>>"
_LONE_OPENER = re.compile(r"<<(?!" + _PLACEHOLDER[2:] + ")")


class TemplateProblem(Exception):
    """The template cannot be rendered for this job (the job's or the template's fault)."""


@dataclass(frozen=True)
class Raw:
    """A value the template author asked to insert without quoting."""

    text: str


@dataclass
class Template:
    name: str
    path: Path
    text: str
    job_class: str | None = None
    expected_seconds: int | None = None
    cache: bool | None = None
    resources: dict[str, int] = field(default_factory=dict)   # what each of its jobs asks for

    @functools.cached_property
    def digest(self) -> str:
        return hashlib.sha256(self.text.encode()).hexdigest()


def _quote(value: Any) -> str:
    if isinstance(value, Raw):
        return value.text
    if value is None:
        return "''"
    return shlex.quote(str(value))


@functools.lru_cache(maxsize=None)
def _environment() -> jinja2.Environment:
    """Made on the first render: importing jinja2 is a quarter of a ``once`` that finds
    nothing new to take (75 ms of some 270), which cron pays every minute."""
    import jinja2

    environment = jinja2.Environment(
        variable_start_string="<<",
        variable_end_string=">>",
        block_start_string="<<%",
        block_end_string="%>>",
        comment_start_string="<<#",
        comment_end_string="#>>",
        undefined=jinja2.StrictUndefined,
        finalize=_quote,
        keep_trailing_newline=True,
        autoescape=False,
    )
    environment.filters["raw"] = lambda value: Raw("" if value is None else str(value))
    return environment


def prepare() -> None:
    """For a submitter that keeps running (``watch``): make the environment before the
    first burst, whose first job would otherwise wait for jinja2's import (its first
    cycle ended some 10 ms sooner here without it; more where Python loads from a network
    filesystem).  ``once`` stays lazy."""
    _environment()


def load_template(folder: Path, name: str) -> Template:
    """The template, read and parsed once per version of its file: a burst takes a thousand
    jobs of a few templates.  The file's identity (inode, size, times) is looked at for
    every job, so an edit (which moves the ctime) applies from the next job on."""
    path = folder / f"{name}.template"
    try:
        info = os.stat(path)
        return _parsed(name, path, (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns))
    except FileNotFoundError:
        raise TemplateProblem(f"script {name!r}: there is no template {path}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise TemplateProblem(f"script {name!r}: cannot read {path}: {error}") from None


@functools.lru_cache(maxsize=64)
def _parsed(name: str, path: Path, identity: tuple[int, ...]) -> Template:
    """``identity`` is only part of the cache's key: another version of the file is another key."""
    text = path.read_text(encoding="utf-8")
    settings = {}
    for line in HEADER.findall(text):
        for word in line.split():
            key, _, value = word.partition("=")
            settings[key] = value
    try:
        expected = parse_duration(settings["expected_time"]) if "expected_time" in settings else None
    except ValueError as error:
        raise TemplateProblem(f"template {path}: expected_time: {error}") from None
    cache = {"true": True, "false": False}.get(settings.get("cache", "").lower())
    problems: list[str] = []
    resources = parse_resources(settings, problems)
    if problems:
        raise TemplateProblem(f"template {path}: " + "; ".join(problems))
    return Template(name, path, text, settings.get("class"), expected, cache, resources)


@functools.lru_cache(maxsize=256)
def _compiled(text: str) -> jinja2.Template:
    """Compiling is most of rendering's cost; a burst renders one template many times."""
    return _environment().from_string(_LONE_OPENER.sub("<<'<<'|raw>>", text))


def render(template: Template, variables: dict[str, Any]) -> str:
    import jinja2

    try:
        return _compiled(template.text).render(variables)
    except jinja2.UndefinedError as error:
        missing = re.search(r"'([^']+)' is undefined", str(error))
        what = f"<<{missing.group(1)}>>" if missing else str(error)
        raise TemplateProblem(
            f"template {template.name!r} uses {what}, which neither the job (args, input_map, "
            f"output_map) nor the config's hpc_env sets") from None
    except jinja2.TemplateError as error:
        raise TemplateProblem(f"template {template.name!r} cannot be rendered: {error}") from None
