"""Atomic file writes: a reader on the cluster or the submitter never sees half a file."""
import json
import os
import tempfile


def write_atomic(path, data, mode=None):
    """Write bytes or text next to ``path`` and rename over it (atomic on POSIX).

    The file is 0600 unless ``mode`` says otherwise (set before the rename, so no reader
    ever finds it with the wrong one)."""
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", dir=directory)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        _remove_quietly(tmp)
        raise


def write_json(path, value):
    write_atomic(path, json.dumps(value, indent=1, sort_keys=True))


def read_json(path, default=None):
    """Read a JSON file; a missing or unreadable one yields ``default``."""
    try:
        with open(path, "r", encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return default


def touch_new(path):
    """Create an empty file unless it exists; True when this call created it."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
        return True
    except FileExistsError:
        return False


def listdir(path):
    """Names in a folder, or nothing when it does not exist (yet)."""
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


def _remove_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass
