"""The SSH backend's transport: commands over paramiko, data over rsync (or SFTP).

Commands.  A fabric ``Connection`` resolves the target the way OpenSSH does (an alias of
``~/.ssh/config``, or of the file ``remote.ssh_config`` names; its HostName, Port, User,
IdentityFile and ProxyJump) and authenticates with the configured key, an ssh-agent or
the default keys.  It is opened at the first command and kept for every later one, so a
cycle logs in once for its commands; ``close()`` ends it.  Commands are run on a plain
paramiko channel rather than through ``Connection.run``: invoke feeds stdin one byte per
10 ms loop and decodes output as text, and the cluster side takes JSON on stdin and
answers in bytes.

Host keys.  Only the configured known_hosts file is trusted (default
``~/.ssh/known_hosts``), by paramiko and by OpenSSH under rsync alike.  fabric installs
AutoAddPolicy on every connection it makes; it is replaced, on ProxyJump hops too, by a
RejectPolicy that names the refused key.  ``dropbox-runner trust-host`` records keys.

Data.  ``remote.transfer`` chooses: ``rsync`` (one run per push or pull, over an OpenSSH
master of its own, see ``rsync.py``), ``sftp`` (on the command connection, see
``sftp.py``) or ``auto``: rsync unless it is missing on this machine or on the cluster
(asked once per connection with ``command -v rsync``), or the key needs a passphrase and
no ssh-agent runs.  OpenSSH under rsync runs in BatchMode and cannot be handed a
passphrase, so a passphrase-protected key takes SFTP unless it is loaded into an agent;
``transfer: rsync`` with such a key and no agent is refused with that explanation.

Secrets.  The passphrase (from ``remote.passphrase`` or the environment variable
``remote.passphrase_env`` names) goes to paramiko only: never into an argv, a log line
or an exception message.
"""
from __future__ import annotations

import logging
import os
import select
import shutil
import socket
import time
from pathlib import Path
from typing import Callable

import paramiko
from fabric import Config as FabricConfig
from fabric import Connection

from ..config import Config, Remote
from . import CommandResult, TransportError
from .hostkeys import RefuseUnknownHost, UnknownHostKey, fetch_host_key, fingerprint, known_hosts_name
from .rsync import RsyncTransfer, SshEndpoint
from .sftp import SftpTransfer

log = logging.getLogger(__name__)

COMMAND_TIMEOUT_SECONDS = 600      # a cluster that hangs must not hold the cycle lock for ever
CHUNK = 32768
SEND_POLL_SECONDS = 0.05           # while stdin waits for the server's window to open
IDLE_POLL_SECONDS = 1.0            # otherwise arriving data, EOF and close wake the wait at once
STDERR_KEPT_BYTES = 65536          # the end of a session's stderr, for the message when it fails
CLOSE_SECONDS = 10                 # a session told its input has ended exits at once


def choose_transfer(mode: str, *, local_rsync: bool, passphrase: bool, agent: bool,
                    remote_rsync: Callable[[], bool]) -> tuple[str, str]:
    """The transfer to use and why; ``remote_rsync`` is only asked when it matters."""
    locked_key = passphrase and not agent
    if mode == "sftp":
        return "sftp", "remote.transfer is sftp"
    if mode == "rsync":
        if locked_key:
            raise TransportError(
                "remote.transfer is rsync but the key needs a passphrase and no ssh-agent is "
                "running (SSH_AUTH_SOCK): OpenSSH under rsync cannot be given a passphrase; "
                "load the key into ssh-agent, or set remote.transfer: sftp or auto")
        return "rsync", "remote.transfer is rsync"
    if not local_rsync:
        return "sftp", "rsync is not installed on this machine"
    if locked_key:
        return "sftp", "the key needs a passphrase and no ssh-agent is running"
    if not remote_rsync():
        return "sftp", "rsync is not installed on the cluster"
    return "rsync", "rsync is installed on both sides"


def trust_command(config_file: Path) -> str:
    return f"dropbox-runner trust-host --config {config_file}"


def describe_connect_failure(error: BaseException, target: str, config_file: Path, timeout: int) -> str:
    """One line for the operator: what went wrong and, where there is one, what to do."""
    trust = trust_command(config_file)
    if isinstance(error, UnknownHostKey):
        return (f"host key for {error.name} is not known (the server offers {error.key.get_name()} "
                f"{fingerprint(error.key)}); check that fingerprint, then run: {trust}")
    if isinstance(error, paramiko.BadHostKeyException):
        return (f"host key for {target} CHANGED: known_hosts has {fingerprint(error.expected_key)}, "
                f"the server offers {error.key.get_name()} {fingerprint(error.key)}; refusing to connect "
                f"(this can be an attack); if the change is expected, run: {trust} --replace")
    if isinstance(error, paramiko.PasswordRequiredException):
        return (f"the private key for {target} is encrypted: set remote.passphrase_env "
                f"(or remote.passphrase), or load the key into ssh-agent")
    if isinstance(error, paramiko.AuthenticationException):
        return f"SSH login to {target} refused: {error}"
    if isinstance(error, socket.gaierror):
        return f"cannot resolve the host of {target}: {error.strerror}"
    if isinstance(error, (TimeoutError, socket.timeout)):
        return f"no answer from {target} within {timeout}s"
    if isinstance(error, OSError):
        return f"cannot connect to {target}: {error.strerror or error}"
    return f"SSH connection to {target} failed: {error or type(error).__name__}"


def exchange(channel: paramiko.Channel, stdin: bytes, timeout: float) -> CommandResult:
    """Feed stdin and collect stdout and stderr at the same time (so neither side can
    block the other on a full window) until the command has exited and said EOF.

    A command may end without reading all its input (``on_hpc`` exits at once when it
    must be deployed first): the rest is dropped and its exit status returned.
    """
    stdout, stderr = bytearray(), bytearray()
    pump(channel, memoryview(stdin), stdout, stderr, timeout, end_input=True)
    if not channel.status_event.is_set() and not channel.get_transport().is_active():
        raise TransportError("the connection was lost while a command ran")
    return CommandResult(channel.recv_exit_status(), bytes(stdout), bytes(stderr))


def pump(channel: paramiko.Channel, pending: memoryview, stdout: bytearray, stderr: bytearray,
         timeout: float, end_input: bool = False, answered: Callable[[], bool] = lambda: False) -> None:
    """Send ``pending`` (then end the input, with ``end_input``) while reading both streams,
    until ``answered()`` or the command has ended and said all it had to say."""
    deadline = time.monotonic() + timeout
    if not pending and end_input:
        channel.shutdown_write()
    while not answered():
        progressed = False
        if pending and channel.send_ready():
            try:
                pending = pending[channel.send(pending[:CHUNK]):]
            except OSError:                  # closed under us: fine if the command has ended
                if not channel.exit_status_ready():
                    raise
                pending = pending[:0]
            if not pending and end_input and not channel.closed:
                channel.shutdown_write()
            progressed = True
        while channel.recv_ready():
            stdout += channel.recv(CHUNK)
            progressed = True
        while channel.recv_stderr_ready():
            stderr += channel.recv_stderr(CHUNK)
            progressed = True
        if channel.closed or (channel.exit_status_ready() and channel.eof_received):
            if not (channel.recv_ready() or channel.recv_stderr_ready()):
                return
        elif time.monotonic() > deadline:
            raise TransportError(f"the cluster did not finish a command within {timeout:.0f}s")
        if not progressed:
            select.select([channel], [], [], SEND_POLL_SECONDS if pending else IDLE_POLL_SECONDS)


def command_failed(target: str, error: BaseException) -> TransportError:
    return TransportError(f"the connection to {target} failed during a command: {error or type(error).__name__}")


class SshSession:
    """A command on one channel of the command connection, answering line by line."""

    def __init__(self, channel: paramiko.Channel, target: str):
        self.channel = channel
        self.target = target
        self.stdout, self.stderr = bytearray(), bytearray()

    def ask(self, line: bytes) -> bytes | None:
        try:
            pump(self.channel, memoryview(line), self.stdout, self.stderr, COMMAND_TIMEOUT_SECONDS,
                 answered=lambda: b"\n" in self.stdout)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise command_failed(self.target, error) from error
        del self.stderr[:-STDERR_KEPT_BYTES]
        end = self.stdout.find(b"\n") + 1
        if not end:
            if not self.channel.get_transport().is_active():
                raise TransportError("the connection was lost while a command ran")
            return None
        answer = bytes(self.stdout[:end])
        del self.stdout[:end]
        return answer

    def alive(self) -> bool:
        return not (self.channel.closed or self.channel.exit_status_ready())

    def close(self) -> CommandResult:
        """A command that does not end within ``CLOSE_SECONDS`` of its input's end is left
        to the channel's close (sshd hangs it up) and reported as exit -1."""
        try:
            pump(self.channel, memoryview(b""), self.stdout, self.stderr, CLOSE_SECONDS, end_input=True)
            returncode = self.channel.recv_exit_status() if self.channel.exit_status_ready() else -1
        except (TransportError, paramiko.SSHException, OSError, EOFError):
            returncode = -1
        finally:
            self.channel.close()
        return CommandResult(returncode, bytes(self.stdout), bytes(self.stderr[-STDERR_KEPT_BYTES:]))


class SshTransport:
    reads_in_place = False

    def __init__(self, config: Config):
        if config.remote is None:
            raise TransportError("backend ssh needs a remote: section")
        self.remote: Remote = config.remote
        self.config_file = config.source
        self.known_hosts = Path(self.remote.known_hosts or Path.home() / ".ssh" / "known_hosts")
        self.target = _describe_target(self.remote)
        self._connection: Connection | None = None
        self._transfer: RsyncTransfer | SftpTransfer | None = None

    # -- the Transport protocol ---------------------------------------------------------
    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        channel = self._exec(command)
        try:
            return exchange(channel, stdin, COMMAND_TIMEOUT_SECONDS)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise command_failed(self.target, error) from error
        finally:
            channel.close()

    def open_session(self, command: str) -> SshSession:
        return SshSession(self._exec(command), self.target)

    def connected(self) -> bool:
        return self._connection is not None and self._connection.is_connected

    def _exec(self, command: str) -> paramiko.Channel:
        """A new channel of the command connection, running ``command``."""
        client = self._client()
        channel = None
        try:
            channel = client.get_transport().open_session(timeout=self.remote.connect_timeout)
            channel.exec_command(command)
            return channel
        except (paramiko.SSHException, OSError, EOFError) as error:
            if channel is not None:
                channel.close()
            raise command_failed(self.target, error) from error

    def push(self, local_dir: Path, remote_dir: str) -> None:
        transfer = self._transfer_tool()
        try:
            transfer.push(local_dir, remote_dir)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise TransportError(f"push to {self.target}:{remote_dir} failed: {error}") from error

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        transfer = self._transfer_tool()
        try:
            transfer.pull(remote_dir, relative_paths, local_dir)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise TransportError(f"pull from {self.target}:{remote_dir} failed: {error}") from error

    def close(self) -> None:
        if isinstance(self._transfer, RsyncTransfer):
            self._transfer.close()
        self._transfer = None
        self._drop_connection()

    # -- trust-host -------------------------------------------------------------------------
    def server_host_key(self) -> tuple[str, paramiko.PKey]:
        """The server's key and the name known_hosts records it under, read before any
        login and without trusting it."""
        connection = self._new_connection()
        timeout = self.remote.connect_timeout
        try:
            key = fetch_host_key(connection.host, connection.port, timeout)
        except (paramiko.SSHException, OSError, EOFError) as error:
            raise TransportError(describe_connect_failure(error, self.target, self.config_file, timeout)) from error
        return known_hosts_name(connection.host, connection.port), key

    # -- connection --------------------------------------------------------------------------
    def _client(self) -> paramiko.SSHClient:
        """The command connection, opened at first use (again after a failure)."""
        if self._connection is not None:
            if self._connection.is_connected:
                return self._connection.client
            self._drop_connection()
        connection = self._new_connection()
        try:
            connection.open()
        except (paramiko.SSHException, OSError, EOFError) as error:
            connection.close()
            raise TransportError(describe_connect_failure(
                error, self.target, self.config_file, self.remote.connect_timeout)) from error
        log.debug("connected to %s for commands", self.target)
        self._connection = connection
        return connection.client

    def _drop_connection(self) -> None:
        """Close the command connection, and the SFTP transfer that rides on it."""
        if isinstance(self._transfer, SftpTransfer):
            self._transfer = None
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _new_connection(self) -> Connection:
        """A fabric Connection (no I/O yet) that checks host keys against known_hosts only."""
        ssh_config = self.remote.ssh_config
        fabric_config = FabricConfig(runtime_ssh_path=str(ssh_config)) if ssh_config else FabricConfig()
        timeout = self.remote.connect_timeout
        options = {"auth_timeout": timeout, "banner_timeout": timeout, "channel_timeout": timeout}
        if self.remote.key_file:
            options["key_filename"] = [str(self.remote.key_file)]
        passphrase = self._passphrase()
        if passphrase:
            options["passphrase"] = passphrase
        connection = Connection(self.remote.host, user=self.remote.user, port=self.remote.port,
                                config=fabric_config, connect_timeout=timeout, connect_kwargs=options)
        hop: Connection | str | None = connection
        while isinstance(hop, Connection):
            hop.client.set_missing_host_key_policy(RefuseUnknownHost())
            if self.known_hosts.exists():
                hop.client.load_system_host_keys(str(self.known_hosts))
            hop = hop.gateway
        return connection

    def _passphrase(self) -> str | None:
        name = self.remote.passphrase_env
        if name:
            if name not in os.environ:
                raise TransportError(f"remote.passphrase_env names {name}, which is not set in the environment")
            return os.environ[name] or None
        return self.remote.passphrase or None

    # -- transfers --------------------------------------------------------------------------
    def _transfer_tool(self) -> RsyncTransfer | SftpTransfer:
        if self._transfer is not None:
            return self._transfer
        tool, why = choose_transfer(
            self.remote.transfer, local_rsync=shutil.which("rsync") is not None,
            passphrase=self._passphrase() is not None, agent=bool(os.environ.get("SSH_AUTH_SOCK")),
            remote_rsync=lambda: self.run("command -v rsync >/dev/null 2>&1").returncode == 0)
        log.debug("transfers to %s use %s: %s", self.target, tool, why)
        if tool == "rsync":
            self._transfer = RsyncTransfer(self._endpoint(), trust_command(self.config_file))
        else:
            self._transfer = SftpTransfer(self._client().open_sftp())
        return self._transfer

    def _endpoint(self) -> SshEndpoint:
        remote = self.remote
        return SshEndpoint(host=remote.host, port=remote.port, user=remote.user,
                           key_file=str(remote.key_file) if remote.key_file else None,
                           known_hosts=str(self.known_hosts),
                           ssh_config=str(remote.ssh_config) if remote.ssh_config else None,
                           connect_timeout=remote.connect_timeout)


def _describe_target(remote: Remote) -> str:
    user = f"{remote.user}@" if remote.user else ""
    port = f":{remote.port}" if remote.port else ""
    return f"{user}{remote.host}{port}"
