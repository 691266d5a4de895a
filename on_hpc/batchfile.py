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
per process (the few last, by inode, size and mtime).
"""
import collections
import json
import os
import secrets
import stat

from .files import remove_file

MAX_READ_BYTES = 16 * 1024 * 1024
BATCH_PREFIX = ".batch-"     # a batch file's own name, hidden; it goes when the batch is closed
_LINE_START = b'{"key": '
_CACHED_BATCHES = 8
_parsed = collections.OrderedDict()     # (dev, ino, size, mtime_ns) -> {key: record}


class BatchFile(object):
    """The writer's side: a hidden file in ``folder`` (on the filesystem of the targets),
    made at the first ``add`` and unnamed by ``close``; the targets keep it."""

    def __init__(self, folder):
        self.folder = folder
        self.path = None
        self.fd = None
        self.torn = False       # a write failed part-way: the next line starts on a fresh one

    def add(self, key, record, target):
        """Append ``record`` under ``key`` and link the file in as ``target`` (a fresh
        name: an existing one is an error, as with ``O_EXCL``)."""
        if self.fd is None:
            self._open()
        data = (("\n" if self.torn else "") + json.dumps({"key": key, "record": record}, sort_keys=True)
                + "\n").encode("utf-8")
        self.torn = True
        if os.write(self.fd, data) != len(data):
            raise OSError("short write to %s" % self.path)
        self.torn = False
        os.link(self.path, target)

    def close(self):
        if self.fd is None:
            return
        os.close(self.fd)
        self.fd = None
        remove_file(self.path)

    def _open(self):
        while True:
            path = os.path.join(self.folder, BATCH_PREFIX + secrets.token_hex(8))
            try:
                self.fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_NOFOLLOW
                                  | os.O_CLOEXEC, 0o600)
            except FileExistsError:
                continue
            self.path = path
            return


def read_record(path, key, default=None):
    """The record of ``key`` in the file at ``path``: its line in a batch, or the file's one
    document.  ``default`` when missing, unreadable, too large, not a regular file (a FIFO
    is opened without waiting for a writer), or not a JSON object."""
    try:
        with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), "rb") as handle:
            info = os.fstat(handle.fileno())
            stamp = (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns)
            records = _parsed.get(stamp)
            if records is None:
                if not stat.S_ISREG(info.st_mode) or info.st_size > MAX_READ_BYTES:
                    return default
                data = handle.read(MAX_READ_BYTES + 1)
                if not data.startswith(_LINE_START):
                    return _document(data, default)
                records = _parse_lines(data)
                _remember(stamp, records)
    except OSError:
        return default
    record = records.get(key)
    return record if isinstance(record, dict) else default


def _document(data, default):
    try:
        document = json.loads(data.decode("utf-8"))
    except ValueError:
        return default
    return document if isinstance(document, dict) else default


def _parse_lines(data):
    records = {}
    for line in data.split(b"\n")[:-1]:     # what follows the last newline is a torn line
        try:
            entry = json.loads(line.decode("utf-8"))
        except ValueError:
            continue
        if isinstance(entry, dict) and isinstance(entry.get("key"), str):
            records[entry["key"]] = entry.get("record")
    return records


def _remember(stamp, records):
    _parsed[stamp] = records
    while len(_parsed) > _CACHED_BATCHES:
        _parsed.popitem(last=False)
