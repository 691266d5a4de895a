"""One file for many jobs: a batch's records in one file, hard-linked in as each job's file.

Making an inode is the dearest step of a small job's trip (``jobstore._mark``: 0.1-0.8 ms
of system CPU on this project's journal-less ext4, a metadata-server round trip on
Lustre), while a link costs 0.015 ms.  Where one step writes the same small file for many
jobs (``job.json`` for every job an intake cycle takes), it writes one file with a line per
job and links it in under each job's name: the job's folder looks as before, and a reader
opens its job's file as before and takes out the line that names the job.

A line is ``{"key": <job id>, "record": {...}}``, written in one ``write`` on a
descriptor opened once; a write that fails part-way leaves a torn line that the next line
starts after, and readers take only complete lines that parse (the last for a key wins).
A file of one JSON document (written before batches, or by a step that writes one job's
file alone) reads as that record, whatever key is asked for.

Every job's file is a name of the same inode, so anything written through one name is seen
through all: the same trust as before, since the jobs of one account could already write
each other's files.  A reader never reads more than MAX_READ_BYTES, and parses a batch once
per process (the few last, by inode, size and mtime).  A reader of a few fields of many
jobs (the head node's cycle reads every ready job's class and expected time) names them,
and keeps only those of each record it parses: whole records took the head node's cycle
to 186 MiB at 100,000 ready jobs, briefs to 105.  A runner writes the finished.json
records of a pass of its loop the same way (``write_linked``).
"""
import collections
import errno
import json
import os
import stat

from .files import create_unique, remove_file, remove_quietly, sync_files, sync_folders, write_all

MAX_READ_BYTES = 16 * 1024 * 1024
MAX_BATCH_BYTES = 1024 * 1024       # some 4,000 jobs' metas a file
BATCH_PREFIX = ".batch-"     # a batch file's own name, hidden; it goes when the batch is closed
_LINE_START = b'{"key": '
_CACHED_BATCHES = 8
_parsed = collections.OrderedDict()     # ((dev, ino, size, mtime_ns), fields) -> {key: record}


class BatchFile(object):
    """The writer's side: a hidden file in ``folder`` (on the filesystem of the targets),
    made at the first ``add`` and unnamed by ``close``; the targets keep it.  A file that
    reaches ``MAX_BATCH_BYTES`` is closed and the next record starts another, so a reader
    never meets one too large to read (``MAX_READ_BYTES``) and parses a bounded file for
    its one record, whatever the size of the cycle that wrote it."""

    def __init__(self, folder):
        self.folder = folder
        self.path = None
        self.fd = None
        self.size = 0
        self.torn = False       # a write failed part-way: the next line starts on a fresh one

    def add(self, key, record, target):
        """Append ``record`` under ``key`` and link the file in as ``target`` (a fresh
        name: an existing one is an error, as with ``O_EXCL``); return the bytes its line
        took, the target's share of the file."""
        line = _line(key, record)
        if self.fd is not None and self.size + len(line) > MAX_BATCH_BYTES:
            self.close()
        if self.fd is None:
            self._open()
        data = (b"\n" if self.torn else b"") + line
        self.torn = True
        if os.write(self.fd, data) != len(data):
            raise OSError("short write to %s" % self.path)
        self.torn = False
        self.size += len(data)
        os.link(self.path, target)
        return len(data)

    def close(self):
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        self.size = 0
        self.torn = False
        remove_file(self.path)

    def _open(self):
        self.fd, self.path = create_unique(self.folder, BATCH_PREFIX, os.O_APPEND)


def read_record(path, key, default=None, fields=None):
    """The record of ``key`` in the file at ``path``: its line in a batch, or the file's one
    document; with ``fields``, only those of its keys it has.  ``default`` when missing,
    unreadable, too large, not a regular file (a FIFO is opened without waiting for a
    writer), or not a JSON object."""
    try:
        return load_record(path, key, fields)
    except (OSError, ValueError):
        return default


def load_record(path, key, fields=None):
    """``read_record`` for a reader that must tell whose fault a missing record is: an
    ``OSError`` when the file cannot be read (the filesystem's), a ``ValueError`` saying
    why when it reads but holds no JSON object for ``key`` (what wrote it)."""
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
        info = os.fstat(handle.fileno())
        stamp = ((info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns), fields)
        records = _parsed.get(stamp)
        if records is None:
            if stat.S_ISDIR(info.st_mode):      # as reading it would say
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(info.st_mode):
                raise ValueError("not a regular file")
            if info.st_size > MAX_READ_BYTES:
                raise ValueError("larger than %d bytes" % MAX_READ_BYTES)
            # As much as fstat saw, and one byte to tell it grew: a read of the most
            # allowed allocates that much (16 MiB) before it reads a 300-byte job.json.
            data = handle.read(info.st_size + 1)
            if len(data) > info.st_size:
                data += handle.read(MAX_READ_BYTES + 1 - len(data))
                if len(data) > MAX_READ_BYTES:
                    raise ValueError("larger than %d bytes" % MAX_READ_BYTES)
            if not data.startswith(_LINE_START):
                return _only(_document(data), fields)
            records = _parse_lines(data, fields)
            _remember(stamp, records)
    record = records.get(key)
    if record is None:
        raise ValueError("no record for %s in its batch" % key)
    if not isinstance(record, dict):
        raise ValueError("not a JSON object")
    return record


def write_linked(path, entries):
    """Write ``entries`` (``(key, record, target)``) as one batch at ``path`` (a hidden
    name of the writer's own, on the targets' filesystem) and link it in as every target:
    one inode for all, where a file each made one per target.  Neither sync can go: the
    data's, before any link (without it a crash could leave a finished.json linked in but
    empty: a job never run again, with no record); the links', before the caller moves
    anything that says the targets are there (a journal-less ext4 orders nothing: a
    marker's move to done/ could reach the disk before the link).  A target that exists
    is replaced atomically (linked in beside it, renamed over).

    ``path`` is unnamed at the end.  A writer killed before leaves it behind, outside every
    target's folder and never read: the writer's next call removes it first (removing, not
    truncating, as targets linked before the kill may still name it)."""
    try:
        fd = _create(path)
    except FileExistsError:
        remove_file(path)
        fd = _create(path)
    try:
        try:
            write_all(fd, b"".join(_line(key, record) for key, record, _ in entries))
        finally:
            os.close(fd)
        sync_files([path])
        for _, _, target in entries:
            _link_over(path, target)
        sync_folders(set(os.path.dirname(target) or "." for _, _, target in entries))
    finally:
        remove_quietly(path)


def _create(path):
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)


def _line(key, record):
    return (json.dumps({"key": key, "record": record}, sort_keys=True) + "\n").encode("utf-8")


def _link_over(source, target):
    try:
        os.link(source, target, follow_symlinks=False)
        return
    except FileExistsError:
        pass
    aside = os.path.join(os.path.dirname(target) or ".", ".tmp-" + os.urandom(8).hex())
    os.link(source, aside, follow_symlinks=False)
    try:
        os.replace(aside, target)
    except BaseException:
        remove_quietly(aside)
        raise


def _document(data):
    document = json.loads(data.decode("utf-8"))     # a ValueError, as UnicodeDecodeError is one
    if not isinstance(document, dict):
        raise ValueError("not a JSON object")
    return document


def _parse_lines(data, fields):
    records = {}
    for line in data.split(b"\n")[:-1]:     # what follows the last newline is a torn line
        try:
            entry = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            records[entry["key"]] = _only(entry.get("record"), fields)
    return records


def _only(record, fields):
    """The ``fields`` of a record that is a JSON object; anything else as it is, for the
    reader to refuse."""
    if fields is None or not isinstance(record, dict):
        return record
    return {field: record[field] for field in fields if field in record}


def _remember(stamp, records):
    _parsed[stamp] = records
    while len(_parsed) > _CACHED_BATCHES:
        _parsed.popitem(last=False)
