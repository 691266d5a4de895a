"""The dropbox folder: the durable queue that tools and the submitter share.

A job's state is its file's suffix, and every change is one atomic write or rename:

    x.job            dropped by a tool, not yet taken
    x.job.submitted  taken by the submitter (holds the job id; the job is on its way or running)
    x.job.finished   the result; outputs are already in place when it appears
    x.job.cancel     dropped by a tool or ``dropbox-runner cancel``: stop x.job

Tools see only these files, exactly as with hpc_batch.
"""
from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .jobs import MAX_JOB_FILE_BYTES, dump_yaml, load_yaml
from .safefs import FileRefused, read_regular, write_atomic
from .seal import SEAL, HoldSeal

JOB, SUBMITTED, FINISHED, CANCEL = ".job", ".job.submitted", ".job.finished", ".job.cancel"
MAX_HELD_BYTES = 4 * MAX_JOB_FILE_BYTES       # the description plus what intake recorded
MAX_RESULT_BYTES = 64 * MAX_JOB_FILE_BYTES    # results carry up to a MiB each of stdout and stderr


@dataclass
class Listing:
    """One scan of the folder; each name is a job file's name (``x.job``)."""

    new: list[str]
    submitted: list[str]
    finished: set[str]
    cancel: set[str]


@dataclass
class HeldJob:
    """A job the submitter has taken: the contents of its ``.job.submitted``."""

    name: str
    job_id: str
    description: dict[str, Any]
    fingerprint: dict[str, list[int]]
    job_class: str
    submitted_at: float
    job_digest: str          # sha256 of the .job file's bytes, to recognise it after a crash
    provenance: dict[str, Any]   # input digests, template and script hashes, cache key

    @property
    def cache_key(self) -> str | None:
        return self.provenance.get("cache_key")

    def to_document(self) -> dict[str, Any]:
        return {"id": self.job_id, "class": self.job_class, "submitted_at": self.submitted_at,
                "fingerprint": self.fingerprint, "job_digest": self.job_digest,
                "provenance": self.provenance, "description": self.description}

    @classmethod
    def from_document(cls, name: str, document: dict[str, Any]) -> "HeldJob":
        """Raises KeyError, TypeError or ValueError for a document that is not one."""
        job = cls(name, document["id"], document["description"], document["fingerprint"],
                  document["class"], float(document["submitted_at"]), document["job_digest"],
                  document["provenance"])
        if not isinstance(job.description, dict) or not isinstance(job.provenance, dict):
            raise ValueError("description and provenance must be mappings")
        return job


class Dropbox:
    def __init__(self, folder: Path):
        self.folder = folder

    def path(self, name: str, suffix: str = "") -> Path:
        return self.folder / (name + suffix)

    def scan(self) -> Listing:
        """Read the folder once; cost grows with its size, never with reads per job."""
        new, submitted, finished, cancel = [], [], set(), set()
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    continue
                if name.endswith(JOB):
                    new.append((entry.stat().st_mtime, name))
                elif name.endswith(SUBMITTED):
                    submitted.append(name[: -len(".submitted")])
                elif name.endswith(FINISHED):
                    finished.add(name[: -len(".finished")])
                elif name.endswith(CANCEL):
                    cancel.add(name[: -len(".cancel")])
        return Listing([name for _, name in sorted(new)], sorted(submitted), finished, cancel)

    def digest(self, name: str, suffix: str = "") -> str:
        """sha256 of a dropbox file; FileRefused for a link or a non-file (never followed)."""
        return hashlib.sha256(read_regular(self.path(name, suffix), MAX_HELD_BYTES)).hexdigest()

    def mtime(self, name: str, suffix: str = "") -> float:
        try:
            return self.path(name, suffix).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def age(self, name: str) -> float:
        return time.time() - (self.mtime(name) or time.time())

    def hold(self, job: HeldJob, seal: HoldSeal) -> None:
        document = job.to_document()
        document[SEAL] = seal.sign(document)
        write_atomic(self.path(job.name, ".submitted"), dump_yaml(document).encode())

    def read_held(self, name: str) -> dict[str, Any]:
        """The raw ``.submitted`` document, not yet authenticated (``HoldSeal.verify``);
        ValueError when it cannot be read as one."""
        try:
            data = load_yaml(read_regular(self.path(name, ".submitted"), MAX_HELD_BYTES).decode("utf-8"))
        except (OSError, FileRefused, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(str(error)) from None
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        return data

    def read_result(self, name: str) -> dict[str, Any] | None:
        try:
            data = load_yaml(read_regular(self.path(name, ".finished"), MAX_RESULT_BYTES).decode("utf-8"))
        except (OSError, FileRefused, UnicodeDecodeError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    def write_result(self, name: str, description: dict[str, Any] | None, block: dict[str, Any]) -> None:
        """The result is the description plus ``job:``; written whole or not at all."""
        document = dict(description or {})
        document.pop("job", None)
        document["job"] = block
        write_atomic(self.path(name, ".finished"), dump_yaml(document).encode())

    def discard(self, name: str, suffix: str) -> None:
        try:
            self.path(name, suffix).unlink()
        except FileNotFoundError:
            pass
