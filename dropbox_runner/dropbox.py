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
import json
import os
import struct
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import yaml

from .boundary import is_environment
from .durable import DurableBatch
from .entries import UnusableEntry, kind_of, load_bounded_document, load_bounded_yaml, read_regular
from .faults import on_fault
from .jobs import MAX_JOB_FILE_BYTES, dump_yaml
from .on_hpc.files import remove_file
from .safefs import write_atomic
from .seal import SEAL, HoldSeal

JOB, SUBMITTED, FINISHED, CANCEL = ".job", ".job.submitted", ".job.finished", ".job.cancel"
BATCH_PREFIX = ".dbr-batch-"       # a durable batch's temporary files (see durable.py)
LONGEST_SUFFIX = len(".submitted")   # what a job file's name must leave room for
MAX_RESULT_BYTES = 16 << 20          # a result holds at most a MiB each of stdout and stderr


@dataclass
class Listing:
    """One scan of the folder; each name is a job file's name (``x.job``)."""

    new: list[str]
    submitted: list[str]
    finished: set[str]
    cancel: set[str]
    unusable: dict[str, str] = field(default_factory=dict)   # entry name -> why no result can be written
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

    def summary(self) -> "HeldSummary":
        return HeldSummary(self.name, self.job_id, self.job_class, self.cache_key)

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


@dataclass(frozen=True)
class HeldSummary:
    """What a cycle needs of a job it holds but is not finishing.  The whole hold (some
    3 KB parsed) is read again, and its seal checked, when the job is finished: kept
    between cycles it was 300 MB for a 100,000-job burst held behind a queue wait."""

    __slots__ = ("name", "job_id", "job_class", "cache_key")
    name: str
    job_id: str
    job_class: str
    cache_key: str | None


# The inode, size, mtime and ctime (ns) of a .submitted, packed: kept for every job held,
# four ints in a tuple were 200 bytes a job.
HoldIdentity = bytes
_IDENTITY = struct.Struct("<QQqq")


class Dropbox:
    def __init__(self, folder: Path, staging: Path | None = None):
        self.folder = folder
        self._prefix = os.path.join(folder, "")      # ``path``'s start
        self.staging = staging      # a private folder for a batch's temporary files (durable.py)
        self._batch: DurableBatch | None = None

    @contextmanager
    def durable_batch(self) -> Iterator[None]:
        """Results, holds and removals inside are made durable together when it ends
        (``durable.py``): a file appears, and a removal happens, only once everything
        written before it is on disk.  Nothing inside may read back what it wrote."""
        if self.staging is not None:
            self.staging.mkdir(mode=0o700, exist_ok=True)
        self._batch = DurableBatch(BATCH_PREFIX, self.staging)
        forget = on_fault(self._batch.commit)
        try:
            yield
        finally:
            forget()
            batch, self._batch = self._batch, None
            batch.commit()

    def remove_batch_leftovers(self, listing: Listing) -> None:
        """Temporary files of a batch killed before its end, in the dropbox (a version
        before the staging folder, or one on another filesystem) and in the staging folder
        (only the lock holder may call this: a batch in progress has such files too)."""
        for name in listing.batch_leftovers:
            self.discard(name, "")
        if self.staging is None:
            return
        try:
            leftovers = [entry.name for entry in os.scandir(self.staging) if entry.name.startswith(BATCH_PREFIX)]
        except FileNotFoundError:       # no batch made one yet
            return
        for name in leftovers:
            remove_file(self.staging / name)

    def _write(self, path: str, data: bytes) -> None:
        if self._batch is not None:
            self._batch.write(path, data)
        else:
            write_atomic(path, data)

    def path(self, name: str, suffix: str = "") -> str:
        """A dropbox file's path, as a string: a job's passage makes some eight, and
        pathlib's parse of each cost more than the system call it was made for."""
        return self._prefix + name + suffix

    def scan(self) -> Listing:
        """Read the folder once; cost grows with its size, never with reads per job.

        Entries no result can be written for (a folder, a FIFO, a socket, a device, a name
        too long for the suffixes, a name that is not UTF-8) go to ``unusable``, with the job whose
        ``.submitted`` or ``.finished`` place such an entry blocks."""
        new, submitted, finished, cancel, leftovers = [], [], set(), set(), []
        unusable: dict[str, str] = {}
        name_max = _name_max(self.folder)
        with os.scandir(self.folder) as entries:
            for entry in entries:
                name = entry.name
                if name.startswith(BATCH_PREFIX):
                    leftovers.append(name)
                    continue
                if name.startswith(".") or not name.endswith((JOB, SUBMITTED, FINISHED, CANCEL)):
                    continue
                why = _unusable(entry, name_max)
                if why:
                    unusable[name] = why
                elif name.endswith(JOB):
                    try:
                        new.append((entry.stat(follow_symlinks=False).st_mtime, name))
                    except FileNotFoundError:
                        continue    # taken back by its tool
                elif name.endswith(SUBMITTED):
                    submitted.append(name[: -len(".submitted")])
                elif name.endswith(FINISHED):
                    finished.add(name[: -len(".finished")])
                else:
                    cancel.add(name[: -len(".cancel")])
        for blocker in [name for name in unusable if name.endswith((SUBMITTED, FINISHED))]:
            job = blocker[: blocker.rindex(JOB) + len(JOB)]
            if any(name == job for _, name in new):
                unusable[job] = f"{blocker} is in the way of its result"
        new = [(mtime, name) for mtime, name in new if name not in unusable]
        return Listing([name for _, name in sorted(new)], sorted(submitted), finished, cancel, unusable, leftovers)

    def read(self, name: str, suffix: str = "", limit: int = MAX_JOB_FILE_BYTES) -> bytes:
        """A dropbox file's bytes (regular files only, never through a link, never blocking)."""
        return read_regular(self.path(name, suffix), limit)

    def digest(self, name: str, suffix: str = "") -> str:
        """sha256 of a dropbox file; UnusableEntry for a link or a non-file (never followed)."""
        return hashlib.sha256(self.read(name, suffix)).hexdigest()

    def mtime(self, name: str, suffix: str = "") -> float:
        try:
            return os.lstat(self.path(name, suffix)).st_mtime
        except FileNotFoundError:
            return 0.0

    def age(self, name: str) -> float:
        return time.time() - (self.mtime(name) or time.time())

    def settled(self, name: str, seconds: float) -> bool:
        """Whether a job file is complete: unchanged for ``seconds``, or changed in its
        inode (renamed in, its times or mode set) after its last write.  Every write moves
        the mtime and the ctime to the same tick, so a ctime past the mtime means the
        writer went on to something that is not writing: the atomic write of a client
        (this project's ``submit``, an editor, rsync) renames the finished file in, and
        ``cp -p`` sets the times once the data is there.  A file renamed in within the
        tick of its last write still waits, as before."""
        try:
            info = os.lstat(self.path(name))
        except FileNotFoundError:
            return True
        return info.st_ctime_ns > info.st_mtime_ns or time.time() - info.st_mtime >= seconds

    def hold(self, job: HeldJob, seal: HoldSeal) -> None:
        document = job.to_document()
        document[SEAL] = seal.sign(document)
        self._write(self.path(job.name, ".submitted"), _hold_text(document).encode())

    def hold_identity(self, name: str) -> HoldIdentity | None:
        """Which file a ``.submitted`` is (never followed through a link), None when gone:
        a hold read and verified is trusted while this stays the same.  Any write moves the
        ctime, which no tool can set back."""
        try:
            # A str path: pathlib interns every name it parses, a table entry per job held.
            stat = os.lstat(self.path(name, ".submitted"))
        except FileNotFoundError:
            return None
        return _IDENTITY.pack(stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns)

    def read_held(self, name: str) -> dict[str, Any]:
        """The raw ``.submitted`` document, not yet authenticated (``HoldSeal.verify``);
        ValueError when it cannot be read as one, OSError for a fault of the filesystem
        (EIO, ESTALE) that may pass."""
        try:
            data = load_bounded_document(self.read(name, ".submitted", MAX_RESULT_BYTES).decode("utf-8"))
        except OSError as error:
            if is_environment(error):
                raise               # a read that may work next time: the job waits
            raise ValueError(str(error)) from None
        except (UnicodeDecodeError, yaml.YAMLError, UnusableEntry) as error:
            raise ValueError(str(error)) from None
        if not isinstance(data, dict):
            raise ValueError("not a mapping")
        return data

    def read_result(self, name: str) -> dict[str, Any] | None:
        try:
            data = load_bounded_yaml(self.read(name, ".finished", MAX_RESULT_BYTES).decode("utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError, UnusableEntry):
            return None
        return data if isinstance(data, dict) else None

    def write_result(self, name: str, description: dict[str, Any] | None, block: dict[str, Any]) -> None:
        """The result is the description plus ``job:``; written whole or not at all."""
        document = dict(description or {})
        document.pop("job", None)
        document["job"] = block
        self._write(self.path(name, ".finished"), dump_yaml(document).encode())

    def discard(self, name: str, suffix: str) -> None:
        if self._batch is not None:
            self._batch.remove(self.path(name, suffix))
            return
        try:
            os.unlink(self.path(name, suffix))
        except FileNotFoundError:
            pass


def _hold_text(document: dict[str, Any]) -> str:
    """A hold as JSON when JSON keeps it exactly (every cycle reads every hold again, and
    JSON parses far faster than YAML), else as YAML: a description may hold what JSON
    cannot say (a date, a number as a key), and the seal covers the types too.  One item
    a line, not indented: ``indent`` makes ``json`` use its Python encoder, twice as slow
    as its C one (issue 18)."""
    try:
        text = json.dumps(document, ensure_ascii=False, separators=(",\n", ": "), allow_nan=False)
        if json.loads(text) == document:
            return text + "\n"
    except (TypeError, ValueError):
        pass
    return dump_yaml(document)


def _name_max(folder: Path) -> int:
    try:
        return os.pathconf(folder, "PC_NAME_MAX")
    except (OSError, ValueError):
        return 255


def _unusable(entry: os.DirEntry, name_max: int) -> str | None:
    """Why no result can be written for this entry, or None."""
    name = entry.name
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not valid UTF-8"
    if name.endswith(JOB) and len(os.fsencode(name)) + LONGEST_SUFFIX > name_max:
        return f"its name is too long to add {LONGEST_SUFFIX} characters ({name_max} bytes at most)"
    if entry.is_file(follow_symlinks=False) or entry.is_symlink():
        return None     # a link is usable: it is removed, never followed, and a job gets a result
    try:
        return f"it is {kind_of(entry.stat(follow_symlinks=False).st_mode)}"
    except FileNotFoundError:
        return None
