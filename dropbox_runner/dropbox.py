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
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .durable import DurableBatch
from .faults import on_fault
from .jobs import dump_yaml, load_yaml
from .on_hpc.files import write_atomic

JOB, SUBMITTED, FINISHED, CANCEL = ".job", ".job.submitted", ".job.finished", ".job.cancel"
BATCH_PREFIX = ".dbr-batch-"       # a durable batch's temporary files (see durable.py)


@dataclass
class Listing:
    """One scan of the folder; each name is a job file's name (``x.job``)."""

    new: list[str]
    submitted: list[str]
    finished: set[str]
    cancel: set[str]
    batch_leftovers: list[str] = field(default_factory=list)   # temporary files of a killed batch


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
        self._batch: DurableBatch | None = None
        self._held_documents: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}

    @contextmanager
    def durable_batch(self) -> Iterator[None]:
        """Results, holds and removals inside are made durable together when it ends
        (``durable.py``): a file appears, and a removal happens, only once everything
        written before it is on disk.  Nothing inside may read back what it wrote."""
        self._batch = DurableBatch(BATCH_PREFIX)
        forget = on_fault(self._batch.commit)
        try:
            yield
        finally:
            forget()
            batch, self._batch = self._batch, None
            batch.commit()

    def remove_batch_leftovers(self, listing: Listing) -> None:
        """Temporary files of a batch killed before its end (only the lock holder may call
        this: a batch in progress has such files too)."""
        for name in listing.batch_leftovers:
            self.discard(name, "")

    def _write(self, path: Path, text: str) -> None:
        if self._batch is not None:
            self._batch.write(str(path), text)
        else:
            write_atomic(str(path), text)

    def path(self, name: str, suffix: str = "") -> Path:
        return self.folder / (name + suffix)

    def scan(self) -> Listing:
        """Read the folder once; cost grows with its size, never with reads per job."""
        new, submitted, finished, cancel, leftovers = [], [], set(), set(), []
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith("."):
                    if name.startswith(BATCH_PREFIX):
                        leftovers.append(name)
                    continue
                if name.endswith(JOB):
                    new.append((entry.stat().st_mtime, name))
                elif name.endswith(SUBMITTED):
                    submitted.append(name[: -len(".submitted")])
                elif name.endswith(FINISHED):
                    finished.add(name[: -len(".finished")])
                elif name.endswith(CANCEL):
                    cancel.add(name[: -len(".cancel")])
        held = set(submitted)       # what read_held remembers: only files still there
        self._held_documents = {name: known for name, known in self._held_documents.items() if name in held}
        return Listing([name for _, name in sorted(new)], sorted(submitted), finished, cancel, leftovers)

    def digest(self, name: str, suffix: str = "") -> str:
        return hashlib.sha256(self.path(name, suffix).read_bytes()).hexdigest()

    def mtime(self, name: str, suffix: str = "") -> float:
        try:
            return self.path(name, suffix).stat().st_mtime
        except FileNotFoundError:
            return 0.0

    def age(self, name: str) -> float:
        return time.time() - (self.mtime(name) or time.time())

    def hold(self, job: HeldJob) -> None:
        self._write(self.path(job.name, ".submitted"), dump_yaml(job.to_document()))

    def read_held(self, name: str) -> dict[str, Any]:
        """The raw ``.submitted`` document; ValueError when it cannot be read as one.

        Remembered while the file stays the same one (inode, size, mtime): the watch
        daemon's cycles would otherwise parse every held job's file again each time.  The
        document is shared, not copied: callers only read it.
        """
        path = self.path(name, ".submitted")
        try:
            stat = os.stat(path)
            identity = (stat.st_ino, stat.st_size, stat.st_mtime_ns)
            known = self._held_documents.get(name)
            if known is not None and known[0] == identity:
                return known[1]
            data = load_yaml(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(str(error)) from None
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        self._held_documents[name] = (identity, data)
        return data

    def read_result(self, name: str) -> dict[str, Any] | None:
        try:
            data = load_yaml(self.path(name, ".finished").read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            return None
        return data if isinstance(data, dict) else None

    def write_result(self, name: str, description: dict[str, Any] | None, block: dict[str, Any]) -> None:
        """The result is the description plus ``job:``; written whole or not at all."""
        document = dict(description or {})
        document.pop("job", None)
        document["job"] = block
        self._write(self.path(name, ".finished"), dump_yaml(document))

    def discard(self, name: str, suffix: str) -> None:
        if self._batch is not None:
            self._batch.remove(self.path(name, suffix))
            return
        try:
            self.path(name, suffix).unlink()
        except FileNotFoundError:
            pass
