"""Data over ``rsync`` and OpenSSH, through one multiplexed master connection.

paramiko cannot share an OpenSSH ControlMaster, so rsync gets its own: the first rsync
of a transport logs in and leaves a master behind (ControlMaster=auto, ControlPersist),
every later rsync of the cycle rides on it, and ``close()`` tells it to exit.  The
master's socket lives in a fresh ``mkdtemp`` folder (0700, owned by this user, a name
no one can guess in advance); it is not under the state dir because a Unix socket path
is limited to about 100 bytes and a dropbox can sit anywhere.  Should the submitter be
killed before ``close()``, ControlPersist still ends the master once it has been idle
that long, so nothing is left running for good.

Every argv is built by a pure function, so the exact command lines are tested with plain
strings.
"""
from __future__ import annotations

import logging
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from . import TransportError

log = logging.getLogger(__name__)

CONTROL_PERSIST_SECONDS = 60
IO_TIMEOUT_SECONDS = 300           # rsync gives up when no data moves this long
SERVER_ALIVE = (15, 4)             # ssh gives up on a silent server after 15 s x 4
PARTIAL_DIR = ".rsync-partial"     # interrupted files wait here, under no final name

RSYNC_EXIT = {
    1: "syntax or usage error", 2: "protocol incompatibility",
    3: "errors selecting input/output files or folders", 4: "action not supported",
    5: "error starting the client-server protocol", 10: "error in socket I/O",
    11: "error in file I/O", 12: "error in the rsync protocol data stream",
    13: "errors with program diagnostics", 14: "error in IPC code",
    20: "interrupted by a signal", 23: "partial transfer due to error",
    24: "partial transfer, some source files vanished", 30: "timeout in data send/receive",
    35: "timeout waiting for the connection", 255: "ssh failed",
}
NETWORK_EXITS = {5, 10, 12, 14, 20, 30, 35, 255}


@dataclass(frozen=True)
class SshEndpoint:
    """Where OpenSSH connects, as configured: an ssh_config alias stays an alias, and
    OpenSSH resolves it exactly as paramiko does for the command connection."""

    host: str
    port: int | None
    user: str | None
    key_file: str | None
    known_hosts: str
    ssh_config: str | None
    connect_timeout: int


def ssh_options(endpoint: SshEndpoint, control_dir: str) -> list[str]:
    """The OpenSSH client options (no program, no host): host keys checked against the
    configured file only, never a prompt, and a shared master in ``control_dir``."""
    options: list[str] = []
    if endpoint.ssh_config:
        options += ["-F", endpoint.ssh_config]
    if endpoint.port:
        options += ["-p", str(endpoint.port)]
    if endpoint.user:
        options += ["-l", endpoint.user]
    if endpoint.key_file:
        options += ["-i", endpoint.key_file, "-o", "IdentitiesOnly=yes"]
    alive, count = SERVER_ALIVE
    for setting in (
        "BatchMode=yes",
        "StrictHostKeyChecking=yes",
        f"UserKnownHostsFile={ssh_config_value(endpoint.known_hosts)}",
        "GlobalKnownHostsFile=/dev/null",
        "ControlMaster=auto",
        f"ControlPersist={CONTROL_PERSIST_SECONDS}",
        f"ControlPath={ssh_config_value(control_dir + '/%C')}",
        f"ConnectTimeout={endpoint.connect_timeout}",
        f"ServerAliveInterval={alive}",
        f"ServerAliveCountMax={count}",
    ):
        options += ["-o", setting]
    return options


def ssh_config_value(value: str) -> str:
    """An ssh ``-o`` value: OpenSSH splits values on spaces (UserKnownHostsFile takes a
    list), so a path with a space is double-quoted."""
    if not any(char.isspace() for char in value):
        return value
    if '"' in value:
        raise TransportError(f"cannot pass {value!r} to ssh: a path with both spaces and double quotes")
    return f'"{value}"'


def rsh_quote(arg: str) -> str:
    """One word of rsync's ``-e`` command: rsync splits it on spaces and honours single
    quotes, in which a doubled quote stands for one (see rsync(1), --rsh)."""
    if arg and not any(char.isspace() or char in "'\"" for char in arg):
        return arg
    return "'" + arg.replace("'", "''") + "'"


def rsh_command(options: list[str]) -> str:
    return " ".join(rsh_quote(word) for word in ["ssh", *options])


def host_spec(host: str) -> str:
    """The host part of ``host:path``; an IPv6 address needs brackets there."""
    return f"[{host}]" if ":" in host else host


def rsync_push_argv(rsh: str, host: str, local_dir: Path, remote_dir: str) -> list[str]:
    """Send the contents of ``local_dir`` into ``remote_dir``.

    Links are followed (the outbox links to the input files); hard links among the sent
    files are kept (every ``job.json`` of an intake cycle is one file, ``on_hpc/batchfile.py``:
    sent once, made once on the cluster).  Folders arrive 0700 and
    files lose group and other bits (the workspace is private; job.sh keeps its owner
    bits and the runner runs it through bash anyway).  Owner and group are not sent.
    The remote shell first makes ``remote_dir`` and its parents under ``umask 077``,
    which also works with rsyncs older than ``--mkpath`` (3.2.3).  Nothing is deleted.
    """
    prepare = f"umask 077 && mkdir -p -- {shlex.quote(remote_dir)} && rsync"
    return ["rsync", "--recursive", "--times", "--perms", "--copy-links", "--hard-links", "--chmod=D700,Fgo=",
            f"--partial-dir={PARTIAL_DIR}", f"--timeout={IO_TIMEOUT_SECONDS}",
            f"--rsync-path={prepare}", "-e", rsh,
            f"{local_dir}/", f"{host_spec(host)}:{remote_dir}/"]


def rsync_pull_argv(rsh: str, host: str, remote_dir: str, local_dir: Path) -> list[str]:
    """Fetch the paths listed on stdin (NUL-separated) from under ``remote_dir``.

    ``--files-from`` turns off the recursion ``-a`` would imply, so ``--recursive`` is
    explicit: a listed folder comes whole.  A listed name that does not exist is skipped.
    Symbolic links are not copied (no ``--links``, no ``--copy-links``): a job must not be
    able to make the submitter read a file outside its folder.  Permissions, owner and
    group stay this machine's defaults.
    """
    return ["rsync", "--recursive", "--times", f"--partial-dir={PARTIAL_DIR}",
            f"--timeout={IO_TIMEOUT_SECONDS}", "--from0", "--files-from=-", "--ignore-missing-args",
            "-e", rsh, f"{host_spec(host)}:{remote_dir}/", f"{local_dir}/"]


def master_exit_argv(options: list[str], host: str) -> list[str]:
    return ["ssh", *options, "-O", "exit", host]


def rsync_failure(action: str, returncode: int, stderr: bytes, trust_command: str) -> str:
    """One line saying what failed, whose fault it likely is, and what ssh or rsync said
    (without rsync's own boilerplate about the closed connection)."""
    text = stderr.decode(errors="replace")
    meaning = RSYNC_EXIT.get(returncode, "unknown error")
    if "Host key verification failed" in text:
        cause = f"the server's host key is unknown or not the one in known_hosts (see: {trust_command})"
    elif "Permission denied" in text and returncode == 255:
        cause = "the SSH login was refused (key, user or agent)"
    elif "command not found" in text or "rsync: not found" in text:
        cause = "rsync is not installed on the cluster (set remote.transfer: sftp or auto)"
    elif returncode in NETWORK_EXITS:
        cause = "the network or the SSH connection failed; the transfer resumes next cycle"
    else:
        cause = "rsync reported an error"
    lines = [line.strip() for line in text.splitlines()
             if line.strip() and not line.startswith("rsync error: ")
             and "connection unexpectedly closed" not in line]
    tail = " | ".join(lines[-3:]) or "(no message)"
    return f"rsync {action} failed (exit {returncode}: {meaning}): {cause}: {tail}"


class RsyncTransfer:
    """push and pull as single rsync runs over a shared OpenSSH master."""

    def __init__(self, endpoint: SshEndpoint, trust_command: str):
        self.endpoint = endpoint
        self.trust_command = trust_command
        self._control_dir: str | None = None

    def push(self, local_dir: Path, remote_dir: str) -> None:
        argv = rsync_push_argv(self._rsh(), self.endpoint.host, local_dir, remote_dir)
        self._run(argv, b"", f"push to {remote_dir}")

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        if not relative_paths:
            return
        argv = rsync_pull_argv(self._rsh(), self.endpoint.host, remote_dir, local_dir)
        names = b"\0".join(path.encode() for path in relative_paths) + b"\0"
        self._run(argv, names, f"pull from {remote_dir}")

    def close(self) -> None:
        """End the master now rather than after ControlPersist, and remove its folder."""
        if self._control_dir is None:
            return
        argv = master_exit_argv(self._options(), self.endpoint.host)
        try:
            subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=15)
        except subprocess.TimeoutExpired:
            log.warning("the ssh master for %s did not exit in time; ControlPersist will end it",
                        self.endpoint.host)
        shutil.rmtree(self._control_dir, ignore_errors=True)
        self._control_dir = None

    def _options(self) -> list[str]:
        if self._control_dir is None:
            self._control_dir = tempfile.mkdtemp(prefix="dbr-ssh-")
        return ssh_options(self.endpoint, self._control_dir)

    def _rsh(self) -> str:
        return rsh_command(self._options())

    def _run(self, argv: list[str], stdin: bytes, action: str) -> None:
        log.debug("rsync %s: %s", action, shlex.join(argv))
        started = time.monotonic()
        try:
            done = subprocess.run(argv, input=stdin, capture_output=True)
        except FileNotFoundError:
            raise TransportError("rsync is not installed on this machine "
                                 "(install it, or set remote.transfer: sftp or auto)") from None
        if done.returncode != 0:
            raise TransportError(rsync_failure(action, done.returncode, done.stderr, self.trust_command))
        log.debug("rsync %s took %.2fs", action, time.monotonic() - started)
