"""Data over SFTP on the command connection: the fallback where rsync cannot be used.

Same meaning as the rsync transfer: local symlinks are followed on push, remote ones are
skipped on pull, folders are made 0700, files whose size and mtime already match are not
sent again, and a file only appears under its final name once it is complete (written
to a hidden temporary name, then renamed with ``posix-rename``).  It costs a few round
trips per file rather than one per tree, but no extra login: the SFTP channel rides on
the connection that runs the commands.  Names of one local file (every ``job.json`` of an
intake cycle is one file, ``on_hpc/batchfile.py``) are sent once and linked on the cluster
(OpenSSH's ``hardlink@openssh.com``), as rsync ``--hard-links`` does; a server without that
extension gets a copy under each name.
"""
from __future__ import annotations

import os
import posixpath
import stat
from pathlib import Path

import paramiko

from . import TransportError


def partial_name(path: str) -> str:
    """The hidden name a file is written under until it is complete."""
    folder, name = posixpath.split(path)
    return posixpath.join(folder, f".{name}.dbr-partial")


def unchanged(size: int, mtime: float, other_size: int | None, other_mtime: float | None) -> bool:
    return other_size == size and other_mtime is not None and int(other_mtime) == int(mtime)


class SftpTransfer:
    def __init__(self, sftp: paramiko.SFTPClient):
        self.sftp = sftp
        self.sent: dict[tuple[int, int], str] = {}     # a linked file's first name sent by this push

    # -- push ----------------------------------------------------------------------------
    def push(self, local_dir: Path, remote_dir: str) -> None:
        self.sent = {}
        self._makedirs(remote_dir)
        for folder, folders, files in os.walk(local_dir, followlinks=True):
            relative = os.path.relpath(folder, local_dir)
            target = remote_dir if relative == "." else posixpath.join(remote_dir, *Path(relative).parts)
            for name in folders:
                self._mkdir(posixpath.join(target, name))
            for name in files:
                self._put(Path(folder, name), posixpath.join(target, name))

    def _makedirs(self, path: str) -> None:
        """``mkdir -p`` with every folder made 0700."""
        try:
            there = self.sftp.stat(path).st_mode
        except FileNotFoundError:
            parent = posixpath.dirname(path.rstrip("/"))
            if parent and parent != path:
                self._makedirs(parent)
            self._mkdir(path)
            return
        if not stat.S_ISDIR(there):
            raise TransportError(f"{path} exists on the cluster and is not a folder")

    def _mkdir(self, path: str) -> None:
        """Make a folder 0700; one that is there already is fine (SFTP reports that only
        as a generic failure, so it is checked afterwards)."""
        try:
            self.sftp.mkdir(path, mode=0o700)
        except OSError as error:
            try:
                there = self.sftp.stat(path).st_mode
            except FileNotFoundError:
                raise error from None
            if not stat.S_ISDIR(there):
                raise TransportError(f"{path} exists on the cluster and is not a folder") from None

    def _put(self, source: Path, target: str) -> None:
        mine = os.stat(source)
        try:
            there = self.sftp.stat(target)
            if unchanged(mine.st_size, mine.st_mtime, there.st_size, there.st_mtime):
                return
        except FileNotFoundError:
            pass
        if mine.st_nlink > 1 and self._link_to_sent(mine, target):
            return
        partial = partial_name(target)
        self.sftp.put(str(source), partial)
        self.sftp.chmod(partial, stat.S_IMODE(mine.st_mode) & 0o700)
        self.sftp.utime(partial, (mine.st_atime, mine.st_mtime))
        self.sftp.posix_rename(partial, target)
        if mine.st_nlink > 1:
            self.sent[(mine.st_dev, mine.st_ino)] = target

    def _link_to_sent(self, mine: os.stat_result, target: str) -> bool:
        """Link ``target`` to the name this push sent the same file under; False when
        there is none, or the server cannot link (the file is then sent again)."""
        first = self.sent.get((mine.st_dev, mine.st_ino))
        if first is None:
            return False
        partial = partial_name(target)
        try:
            # paramiko has no call for this OpenSSH extension; its own posix_rename is made
            # the same way.
            self.sftp._request(paramiko.sftp.CMD_EXTENDED, "hardlink@openssh.com", first, partial)
        except OSError:
            return False
        self.sftp.posix_rename(partial, target)
        return True

    # -- pull ------------------------------------------------------------------------------
    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        for relative in relative_paths:
            source = posixpath.join(remote_dir, relative)
            try:
                attributes = self.sftp.lstat(source)
            except FileNotFoundError:
                continue
            self._get_entry(source, attributes, local_dir / relative)

    def _get_entry(self, source: str, attributes: paramiko.SFTPAttributes, target: Path) -> None:
        """A folder comes whole; symbolic links and special files are skipped."""
        if stat.S_ISDIR(attributes.st_mode):
            target.mkdir(mode=0o700, parents=True, exist_ok=True)
            for entry in self.sftp.listdir_attr(source):
                self._get_entry(posixpath.join(source, entry.filename), entry, target / entry.filename)
        elif stat.S_ISREG(attributes.st_mode):
            self._get(source, attributes, target)

    def _get(self, source: str, attributes: paramiko.SFTPAttributes, target: Path) -> None:
        try:
            mine = os.stat(target)
            if unchanged(mine.st_size, mine.st_mtime, attributes.st_size, attributes.st_mtime):
                return
        except FileNotFoundError:
            pass
        target.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        partial = target.with_name(f".{target.name}.dbr-partial")
        self.sftp.get(source, str(partial))
        os.utime(partial, (attributes.st_atime, attributes.st_mtime))
        os.replace(partial, target)
