"""The cluster side as the submitter sees it: deploy ``on_hpc`` and call its verbs.

``on_hpc`` is deployed into ``<scripts>/on_hpc-<hash of its code>``, a folder that never
changes once complete, so runners still using an older version are not disturbed and a
version check costs nothing: the remote command itself exits with ``DEPLOY_NEEDED`` when
its folder is missing, and the submitter deploys and calls again.

A submitter's own calls (its cycles, the ``early`` start, ``once``'s gathering) go to one
``on_hpc serve`` process kept open while its burst lasts (``keep_open``): a burst of 1000
jobs makes some eight calls, and each fresh command paid the cluster's Python start and
imports.  The process ends when the submitter closes this side, or when a cycle leaves
nothing held (``run_cycle``); one found dead before a call (killed while idle) is replaced,
and one whose folder lost its stamp (a deploy removed meanwhile) exits for the deploy.
A call that fails ends it, as a one-shot command ended, so nothing outlives a failure.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shlex
import tempfile
from pathlib import Path
from typing import Any

from . import on_hpc
from .config import Config
from .on_hpc.protocol import (
    DEPLOY_NEEDED,
    ON_HPC_ARGV,
    STAMP_FILE,
    CycleAnswer,
    CycleRequest,
    StatusRequest,
    WaitRequest,
)
from .transport import CommandResult, NotDeployed, RemoteCommandFailed, Session, Transport, TransportError

log = logging.getLogger(__name__)

ON_HPC_SOURCE = Path(on_hpc.__file__).parent
NO_RESULT = CommandResult(0, b"", b"")       # no process was open, or it answered


def code_stamp() -> str:
    digest = hashlib.sha256()
    for path in sorted(ON_HPC_SOURCE.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def remote_command(deploy_dir: str, python: str, verb: str) -> str:
    """One shell line: check the deployed version, then run the verb from its folder
    (so a stray ``on_hpc`` in the login folder can never shadow it)."""
    folder = shlex.quote(deploy_dir)
    return (f"test -f {folder}/{STAMP_FILE} || exit {DEPLOY_NEEDED}; "
            f"cd {folder} && PYTHONPATH={folder} exec {shlex.quote(python)} {' '.join(ON_HPC_ARGV)} {verb}")


class ClusterSide:
    def __init__(self, config: Config, transport: Transport, keep_open: bool = False):
        self.config = config
        self.transport = transport
        self.stamp = code_stamp()
        self.deploy_dir = f"{config.scripts}/on_hpc-{self.stamp}"
        self.keep_open = keep_open
        self._session: Session | None = None

    def call(self, verb: str, request: dict[str, Any], deploy: bool = True) -> dict[str, Any]:
        """Run an ``on_hpc`` verb; with ``deploy`` False (``status``) a missing version
        raises NotDeployed instead of being installed."""
        request = dict(request, root=self.config.workspace, scheduler=self.config.scheduler,
                       python=self.config.python, pythonpath=self.deploy_dir)
        if self.keep_open and deploy:
            return self._ask(verb, request)
        payload = json.dumps(request).encode()
        command = remote_command(self.deploy_dir, self.config.python, verb)
        result = self.transport.run(command, payload)
        if result.returncode == DEPLOY_NEEDED:
            if not deploy:
                raise NotDeployed(f"on_hpc {self.stamp} is not deployed in {self.config.scripts} yet "
                                  f"(the first cycle, or dropbox-runner deploy, installs it)")
            self.deploy()
            result = self.transport.run(command, payload)
        if result.returncode != 0:
            raise _failed(verb, result)
        try:
            return json.loads(result.stdout.decode().strip().splitlines()[-1])
        except (ValueError, IndexError):
            raise RemoteCommandFailed(
                f"on_hpc {verb} printed no answer: {_tail(result.stdout + result.stderr)}") from None

    def _ask(self, verb: str, request: dict[str, Any]) -> dict[str, Any]:
        """One request to the kept-open process; the first call of a version not deployed
        yet deploys it and starts the process again."""
        line = json.dumps({"verb": verb, "request": request}).encode() + b"\n"
        try:
            answer, ended = self._ask_once(line)
            if answer is None and ended.returncode == DEPLOY_NEEDED:
                self.deploy()
                answer, ended = self._ask_once(line)
            if answer is None:
                raise _failed(verb, ended)
            return json.loads(answer)
        except ValueError:
            self.close()
            raise RemoteCommandFailed(f"on_hpc {verb} answered what is not JSON: {_tail(answer)}") from None
        except BaseException:
            self.close()
            raise

    def _ask_once(self, line: bytes) -> tuple[bytes | None, CommandResult]:
        """The process's answer; or None, and how it ended (it is closed then)."""
        answer = self._open_session().ask(line)
        return (answer, NO_RESULT) if answer is not None else (None, self.close())

    def start_ahead(self) -> None:
        """Start the kept-open process before the first call needs it, so that the
        cluster's Python start and imports (some 45 ms here, far more where Python loads
        from a network filesystem) overlap the intake that comes first.  Only where that
        waits on nothing (``Transport.connected``): an unreachable cluster must not hold
        up the intake, and any failure is the call's to report, as it was."""
        if not self.keep_open or not self.transport.connected():
            return
        try:
            self._open_session()
        except (TransportError, OSError) as error:
            log.debug("the on_hpc process could not be started ahead of the call: %s", error)

    def _open_session(self) -> Session:
        if self._session is not None and not self._session.alive():
            log.debug("the on_hpc process kept open had ended (exit %s); starting another", self.close().returncode)
        if self._session is None:
            self._session = self.transport.open_session(remote_command(self.deploy_dir, self.config.python, "serve"))
        return self._session

    def close(self) -> CommandResult:
        """End the kept-open process (if any): its exit status and the end of its stderr."""
        session, self._session = self._session, None
        return session.close() if session is not None else NO_RESULT

    def cycle(self, request: CycleRequest) -> CycleAnswer:
        return CycleAnswer.from_json(self.call("cycle", request.to_json()))

    def status(self) -> dict[str, Any]:
        """Never deploys: a cluster without this version raises NotDeployed."""
        return self.call("status", StatusRequest(root=self.config.workspace, scheduler=self.config.scheduler).to_json(),
                         deploy=False)

    def wait(self, ignore: list[str], timeout: float, every: list[str] | None = None,
             gather: float | None = None) -> list[str]:
        """Block until one of this submitter's jobs is done (every job of ``every``, when
        given; or one, and ``gather`` seconds have passed), or ``timeout``; the done ids."""
        request = WaitRequest(root=self.config.workspace, submitter=self.config.submitter_id,
                              ignore=ignore, timeout=timeout, every=every or [], gather=gather)
        return self.call("wait", request.to_json())["done"]

    def deploy(self) -> None:
        """Install this version of on_hpc; the stamp goes last, so a half-done deploy is
        redone rather than used.  The code is compiled there, by the cluster's own
        ``python``, before the stamp: every ``on_hpc`` command and runner then loads
        bytecode instead of compiling 20 modules afresh (some 18 ms a start, paid by each
        cycle and by each runner), which Python would not save for them where
        ``PYTHONDONTWRITEBYTECODE`` is set, as HPC sites often set it for shared homes."""
        log.info("deploying on_hpc %s to %s", self.stamp, self.deploy_dir)
        with tempfile.TemporaryDirectory(prefix="dbr-deploy-") as tmp:
            package = Path(tmp, "code", "on_hpc")
            package.mkdir(parents=True)
            for path in ON_HPC_SOURCE.glob("*.py"):
                (package / path.name).write_bytes(path.read_bytes())
            self.transport.push(Path(tmp, "code"), self.deploy_dir)
            self._compile()
            stamp = Path(tmp, "stamp")
            stamp.mkdir()
            (stamp / STAMP_FILE).write_text(self.stamp + "\n")
            self.transport.push(stamp, self.deploy_dir)

    def _compile(self) -> None:
        """Not needed for correctness, so a failure is one warning: the modules still load
        from source.  Private like the rest of the deploy (``umask 077``)."""
        folder = shlex.quote(self.deploy_dir)
        python = shlex.quote(self.config.python)
        result = self.transport.run(f"umask 077 && cd {folder} && exec {python} -m compileall -q on_hpc")
        if result.returncode != 0:
            log.warning("on_hpc could not be compiled on the cluster (each command compiles it afresh): %s",
                        _tail(result.stdout + result.stderr))


def _failed(verb: str, result: CommandResult) -> RemoteCommandFailed:
    return RemoteCommandFailed(f"on_hpc {verb} failed on the cluster (exit {result.returncode}): "
                               f"{_tail(result.stderr)}")


def _tail(data: bytes, lines: int = 5) -> str:
    text = data.decode(errors="replace").strip().splitlines()
    return " | ".join(text[-lines:]) or "(no output)"
