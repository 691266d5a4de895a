"""JSON Schemas of the ``.job`` file and of a result's ``job:`` block (``dropbox-runner schema``).

Built from the definitions the submitter validates with (``jobs.JOB_FIELDS`` and its
patterns, ``on_hpc.durations``' written forms), so a tool author who validates a job against this
schema before dropping it meets the same rules; ``tests/test_schema.py`` runs both over
the same hostile corpus and fails when they disagree.  Rules across fields (a key used in
two maps, two outputs to one path) and rules about files (an input exists, an output
folder is writable) are the submitter's alone: they are listed in the description.
"""
from __future__ import annotations

import re
from typing import Any

from . import __version__
from .jobs import IDENTIFIER, JOB_FIELDS, RESERVED_VARIABLES, SCRIPT_NAME
from .on_hpc.durations import DURATION_CLOCK, DURATION_SUFFIXED

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


def _anchored(pattern: re.Pattern[str] | str) -> str:
    """A Python pattern used with ``fullmatch`` as a JSON Schema (ECMA) pattern, which searches."""
    return f"^(?:{getattr(pattern, 'pattern', pattern)})$"


def _duration_pattern() -> str:
    """parse_duration strips and lower-cases; ECMA patterns have no flags, so spell both cases."""
    either = "|".join(f"(?:{form})" for form in (DURATION_SUFFIXED, DURATION_CLOCK))
    return r"^\s*(?:" + either.replace("[smhd]", "[smhdSMHD]") + r")\s*$"


def _variables(values: dict[str, Any]) -> dict[str, Any]:
    """A mapping of template variables: identifier keys, none of the reserved ones."""
    return {"type": ["object", "null"],
            "propertyNames": {"pattern": _anchored(IDENTIFIER), "not": {"enum": sorted(RESERVED_VARIABLES)}},
            "additionalProperties": values}


_ABSOLUTE_PATH = {"type": "string", "pattern": "^/", "not": {"pattern": r"(^|/)\.\.(/|$)"},
                  "description": "an absolute path, without '..'"}

_FIELD_SCHEMAS: dict[str, dict[str, Any]] = {
    "script": {"type": "string", "pattern": _anchored(SCRIPT_NAME), "not": {"pattern": r"\.\."}},
    "args": _variables({"type": ["string", "number", "boolean", "null"]}),
    "input_map": _variables(_ABSOLUTE_PATH),
    "output_map": _variables(_ABSOLUTE_PATH),
    "class": {"type": ["string", "null"], "pattern": _anchored(IDENTIFIER)},
    "expected_time": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 0},
                                {"type": "string", "pattern": _duration_pattern()}]},
    "cache": {"type": ["boolean", "null"]},
    "cpus": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1},
                       {"type": "string", "pattern": r"^\s*[0-9]*[1-9][0-9]*\s*$"}]},
    "memory": {"anyOf": [{"type": "null"}, {"type": "number", "minimum": 1},
                         {"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*[kmgtKMGT]?[iI]?[bB]?\s*$"}]},
    "gpus": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 0},
                       {"type": "string", "pattern": r"^\s*[0-9]+\s*$"}]},
}


def job_schema() -> dict[str, Any]:
    """The ``.job`` file: every key of JOB_FIELDS (KeyError here, and a failing test, when a
    key is added to the validation without a schema)."""
    properties = {key: dict(_FIELD_SCHEMAS[key], description=text) for key, text in JOB_FIELDS.items()}
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"dropbox-runner {__version__} job description (.job)",
        "description": "A job dropped into the dropbox (hpc_batch's format). The submitter also checks: "
                       "no key is used in more than one of args, input_map and output_map; no two outputs "
                       "share a destination; the template exists and every variable it uses is set; each "
                       "input is a readable regular file and each output's folder exists and is writable "
                       "(inside allowed_input_roots / allowed_output_roots when the operator set them).",
        "type": "object",
        "required": ["script"],
        "properties": properties,
        "additionalProperties": False,
    }


_RESULT_FIELDS: dict[str, tuple[Any, str]] = {
    "status": ({"enum": ["ok", "error"]}, "ok only when the script exited 0 and every output is in place"),
    "message": ({"type": "string"}, "processed OK, or what went wrong"),
    "stdout": ({"type": "string"}, "the script's stdout, its last MiB"),
    "stderr": ({"type": "string"}, "the script's stderr, its last MiB"),
    "rc": ({"type": "integer"}, "exit status; -1 when the script never ran; 128+n when killed by signal n"),
    "signal": ({"type": "string"}, "the signal that killed the script"),
    "start": ({"type": ["string", "null"], "format": "date-time"}, "ISO 8601 with offset"),
    "end": ({"type": ["string", "null"], "format": "date-time"}, "ISO 8601 with offset"),
    "id": ({"type": "string"}, "the job's id (and its folder on the cluster)"),
    "attempts": ({"type": "integer", "minimum": 1}, "runs started, counting interrupted ones"),
    "runner": ({"type": ["string", "null"]}, "the runner that ran it"),
    "scheduler_job_id": ({"type": ["string", "null"]}, "the runner's scheduler job id"),
    "host": ({"type": ["string", "null"]}, "the node it ran on"),
    "duration": ({"type": ["number", "null"]}, "seconds the script ran"),
    "queue_wait": ({"type": ["number", "null"]}, "seconds from intake to start"),
    "version": ({"type": "string"}, "the dropbox-runner version that wrote the result"),
    "job_digest": ({"type": "string"}, "sha256 of the .job file the result answers"),
    "cached": ({"type": "boolean"}, "answered from the result cache"),
    "provenance": ({"type": "object"}, "how the result was made: inputs' and template's sha256, script, runner"),
    "earlier_runs": ({"type": "array", "items": {"type": "object"}}, "job: blocks of earlier runs (resubmit)"),
}


def result_schema() -> dict[str, Any]:
    """The ``job:`` block of ``x.job.finished`` (the rest of the file is the job itself)."""
    return {
        "$schema": SCHEMA_DIALECT,
        "title": f"dropbox-runner {__version__} result block (the job: key of .job.finished)",
        "type": "object",
        "required": ["status", "message", "stdout", "stderr", "rc", "start", "end", "version"],
        "properties": {key: dict(spec, description=text) for key, (spec, text) in _RESULT_FIELDS.items()},
        "additionalProperties": True,
    }
