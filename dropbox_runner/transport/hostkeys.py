"""Host keys: what the SSH backend trusts, and how an operator comes to trust a server.

paramiko and OpenSSH (under rsync) read the same known_hosts file, and both refuse a
server whose key is not in it.  Keys are only ever added by ``dropbox-runner trust-host``,
after the operator has seen the fingerprint: never on first use (the original hpc_batch
used AutoAddPolicy, which accepts whoever answers first).
"""
from __future__ import annotations

import base64
import hashlib
import os
import socket
from pathlib import Path

import paramiko
from paramiko.hostkeys import HostKeyEntry, HostKeys, InvalidHostKey


class UnknownHostKey(paramiko.SSHException):
    """The server's key is not in known_hosts; carries the key so the message can show it."""

    def __init__(self, name: str, key: paramiko.PKey):
        super().__init__(f"host key for {name} is not known ({key.get_name()} {fingerprint(key)})")
        self.name = name
        self.key = key


class RefuseUnknownHost(paramiko.RejectPolicy):
    """paramiko's RejectPolicy, raising an exception that says which key was refused."""

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        raise UnknownHostKey(hostname, key)


def fingerprint(key: paramiko.PKey) -> str:
    """The fingerprint as ``ssh-keygen -l`` and OpenSSH's prompts show it."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


def known_hosts_name(host: str, port: int) -> str:
    """The name a known_hosts line carries for a server: ``[host]:port`` off port 22."""
    return host if port == 22 else f"[{host}]:{port}"


def entry_matches(entry: HostKeyEntry, name: str) -> bool:
    """Whether a known_hosts line is about ``name``, in plain or hashed form."""
    for pattern in entry.hostnames:
        if pattern.startswith("|1|"):
            salt = pattern.split("|")[2]
            if HostKeys.hash_host(name, salt) == pattern:
                return True
        elif pattern == name:
            return True
    return False


def recorded_keys(path: Path, name: str) -> list[paramiko.PKey]:
    """The keys known_hosts holds for ``name`` (none when the file does not exist)."""
    return [entry.key for entry in _entries(path) if entry.key is not None and entry_matches(entry, name)]


def same_key(one: paramiko.PKey, other: paramiko.PKey) -> bool:
    return one.get_name() == other.get_name() and one.asbytes() == other.asbytes()


def known_hosts_line(name: str, key: paramiko.PKey) -> str:
    return f"{name} {key.get_name()} {key.get_base64()}\n"


def without_host(text: str, name: str) -> str:
    """known_hosts text with every line about ``name`` removed, comments kept."""
    kept = []
    for line in text.splitlines(keepends=True):
        entry = _parse(line)
        if entry is None or not entry_matches(entry, name):
            kept.append(line)
    return "".join(kept)


def record_key(path: Path, name: str, key: paramiko.PKey, replace: bool) -> None:
    """Add the key for ``name``; with ``replace``, drop the keys it had before.

    Written to a temporary file and renamed, so a crash never leaves a truncated
    known_hosts (which would make every host unknown).
    """
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    if replace:
        text = without_host(text, name)
    if text and not text.endswith("\n"):
        text += "\n"
    temporary = path.with_name(f".{path.name}.dbr-tmp")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, _mode_of(path))
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text + known_hosts_line(name, key))
    os.replace(temporary, path)


def fetch_host_key(host: str, port: int, timeout: float) -> paramiko.PKey:
    """The key the server presents, read during the key exchange, before any login."""
    sock = socket.create_connection((host, port), timeout=timeout)
    transport = paramiko.Transport(sock)
    try:
        transport.banner_timeout = timeout
        transport.start_client(timeout=timeout)
        return transport.get_remote_server_key()
    finally:
        transport.close()


def _entries(path: Path) -> list[HostKeyEntry]:
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [entry for entry in map(_parse, text.splitlines()) if entry is not None]


def _parse(line: str) -> HostKeyEntry | None:
    line = line.strip()
    if not line or line.startswith("#") or line.startswith("@"):
        return None
    try:
        return HostKeyEntry.from_line(line)
    except (InvalidHostKey, paramiko.SSHException, ValueError):
        return None


def _mode_of(path: Path) -> int:
    try:
        return path.stat().st_mode & 0o777
    except FileNotFoundError:
        return 0o600
