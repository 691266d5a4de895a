"""Seals on what the submitter leaves in the dropbox and relies on later.

``x.job.submitted`` carries everything the submitter needs after intake (the job id, its
class, the inputs' digests and the cache key), and any tool that can write the dropbox
can edit it: a changed cache key would file one job's outputs under another job's key.
So each hold is sealed with an HMAC whose key lives in the state folder, which tools
cannot read; a hold whose seal does not match was edited, and its job ends in an error.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import stat
from pathlib import Path
from typing import Any

from .config import ConfigError

KEY_FILE = "hold.key"
KEY_BYTES = 32
SEAL = "seal"


class HoldSeal:
    def __init__(self, state_dir: Path):
        self.key = _load_or_create_key(state_dir)
        self._keyed = hmac.new(self.key, digestmod=hashlib.sha256)    # copied for each seal: the key is set up once

    def sign(self, document: dict[str, Any]) -> str:
        body = {key: value for key, value in document.items() if key != SEAL}
        material = json.dumps(_canonical(body), separators=(",", ":"), default=repr)
        mac = self._keyed.copy()
        mac.update(material.encode())
        return mac.hexdigest()

    def verify(self, document: dict[str, Any]) -> bool:
        seal = document.get(SEAL)
        return isinstance(seal, str) and hmac.compare_digest(seal, self.sign(document))


def _canonical(value: Any) -> Any:
    """One text for one document, whatever the order of its keys and their types (YAML
    keys may be numbers or booleans, which JSON's key sorting cannot compare)."""
    if isinstance(value, dict):
        return sorted([f"{type(key).__name__}:{key}", _canonical(item)] for key, item in value.items())
    if isinstance(value, (list, tuple)):
        return [_canonical(item) for item in value]
    return value


def _load_or_create_key(state_dir: Path) -> bytes:
    """The key, made once (written whole under a temporary name, then linked into place,
    so a crash never leaves half a key).  The state folder and the key must be this
    account's alone: anyone who could replace them could forge seals."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _check_private(state_dir, stat.S_IWGRP | stat.S_IWOTH, "writable by others")
    path = state_dir / KEY_FILE
    if not path.exists():
        temporary = state_dir / f".{KEY_FILE}.{secrets.token_hex(8)}"
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, secrets.token_bytes(KEY_BYTES))
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(temporary, path)
        except FileExistsError:
            pass                        # another cycle made it first: use that one
        finally:
            os.unlink(temporary)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError as error:
        raise ConfigError(f"{path}: cannot open the seal key: {error.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        _check_private(path, stat.S_IRWXG | stat.S_IRWXO, "open to others", os.fstat(fd))
        key = handle.read()
    if len(key) != KEY_BYTES:
        raise ConfigError(f"{path}: the seal key is {len(key)} bytes, not {KEY_BYTES}; remove it to make a new one "
                          f"(jobs held now then end in an error)")
    return key


def _check_private(path: Path, forbidden: int, what: str, info: os.stat_result | None = None) -> None:
    info = info or os.lstat(path)
    if info.st_uid != os.geteuid() or info.st_mode & forbidden:
        raise ConfigError(f"{path}: must belong to this account (uid {os.geteuid()}) and not be {what} "
                          f"(owner uid {info.st_uid}, mode {stat.filemode(info.st_mode)}): whoever can "
                          f"change it can forge the submitter's records")
