"""How the submitter reaches the cluster side: run a command, push a tree, pull files.

``local`` is the embedded default (the "cluster" is a folder on this machine); ``ssh``
reaches a real head node.  The cycle is written against this interface only.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Protocol


class TransportError(Exception):
    """The cluster could not be reached or a transfer failed: the environment's fault.

    A cycle that meets one stops, changes nothing it cannot finish, and leaves every job
    waiting for the next cycle; no job gets an error result because of it.
    """


class RemoteCommandFailed(TransportError):
    """The cluster was reached, but the command there failed; the message carries its
    stderr.  Still the environment's fault (jobs wait), but not a network problem, so the
    CLI gives it its own exit code."""


class NotDeployed(RemoteCommandFailed):
    """``on_hpc`` of this version is not on the cluster yet (a cycle deploys it)."""


@dataclass
class CommandResult:
    returncode: int
    stdout: bytes
    stderr: bytes


class Session(Protocol):
    """A command kept open for a dialogue of lines: one request line in, one answer out."""

    def ask(self, line: bytes) -> bytes | None:
        """Send ``line`` (ending in a newline) and return the next line the command prints;
        None when the command ended first (``close`` then tells its exit status)."""

    def alive(self) -> bool:
        """Whether the command still runs (it may have been killed while idle)."""

    def close(self) -> CommandResult:
        """End the input, wait for the command to exit: its status and the end of its
        stderr (stdout is the answers', already read)."""


class Transport(Protocol):
    # True where the cluster side's folders are folders of this machine (``local``): the
    # collector then reads a done job's files where they lie (``inplace``) and never pulls.
    reads_in_place: bool

    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        """Run a shell command line on the cluster side."""

    def push(self, local_dir: Path, remote_dir: str) -> None:
        """Copy the contents of ``local_dir`` into ``remote_dir`` (following symlinks),
        creating folders with mode 0700; files already there with the same size and
        time are not sent again."""

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        """Copy the named files and folders under ``remote_dir`` into ``local_dir``,
        keeping their relative paths; a name that does not exist is skipped."""

    def open_session(self, command: str) -> Session:
        """Start a shell command line that answers line by line (``on_hpc serve``)."""

    def connected(self) -> bool:
        """Whether a command could start now without first making a connection: always
        for the local transport, and for SSH while its command connection is up."""

    def close(self) -> None:
        """Release connections."""


def open_transport(config) -> Transport:
    if config.backend == "local":
        from .local import LocalTransport
        return LocalTransport()
    from .ssh import SshTransport
    return SshTransport(config)
