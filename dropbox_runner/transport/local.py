"""The embedded backend's transport: the cluster side is this machine."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from . import CommandResult, TransportError

STDERR_KEPT_BYTES = 65536      # the end of a session's stderr, for the message when it fails
CLOSE_SECONDS = 10             # a session told its input has ended exits at once; killed after this


class LocalTransport:
    reads_in_place = True       # the collector opens done jobs' files in the workspace itself

    def run(self, command: str, stdin: bytes = b"") -> CommandResult:
        done = subprocess.run(["/bin/sh", "-c", command], input=stdin, capture_output=True)
        return CommandResult(done.returncode, done.stdout, done.stderr)

    def open_session(self, command: str) -> LocalSession:
        return LocalSession(command)

    def connected(self) -> bool:
        return True

    def push(self, local_dir: Path, remote_dir: str) -> None:
        """Like rsync: ``local_dir``'s content ends up in ``remote_dir``.  A folder not there
        yet is moved, not copied: a job's outbox entry (the submitter's own files, its
        inputs already copies) costs two folders and two files fewer to make and remove."""
        target = Path(remote_dir)
        target.mkdir(mode=0o700, parents=True, exist_ok=True)
        for entry in os.scandir(local_dir):
            destination = target / entry.name
            if entry.is_dir(follow_symlinks=False) and not os.path.lexists(destination):
                try:
                    os.rename(entry.path, destination)
                    continue
                except OSError:
                    pass        # another filesystem, or a race: copied below
            if entry.is_dir():
                _copy_tree(Path(entry.path), destination)
            elif entry.is_file():
                shutil.copy2(entry.path, destination)

    def pull(self, remote_dir: str, relative_paths: list[str], local_dir: Path) -> None:
        """Never asked for: the collector reads this transport's folders where they lie."""
        raise TransportError("the local transport's folders are read in place, not pulled")

    def close(self) -> None:
        pass


class LocalSession:
    """A command answering line by line.  Its stderr goes to an unnamed file, read only when
    it ends: nothing has to drain a pipe meanwhile, and a command that writes much there
    cannot block on it."""

    def __init__(self, command: str):
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(["/bin/sh", "-c", command], stdin=subprocess.PIPE,
                                        stdout=subprocess.PIPE, stderr=self._stderr)

    def ask(self, line: bytes) -> bytes | None:
        try:
            self.process.stdin.write(line)
            self.process.stdin.flush()
        except BrokenPipeError:
            return None
        answer = self.process.stdout.readline()
        return answer if answer.endswith(b"\n") else None

    def alive(self) -> bool:
        return self.process.poll() is None

    def close(self) -> CommandResult:
        try:
            self.process.stdin.close()
        except BrokenPipeError:
            pass
        try:
            returncode = self.process.wait(CLOSE_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            returncode = self.process.wait()
        self.process.stdout.close()
        with self._stderr:
            size = self._stderr.seek(0, os.SEEK_END)
            self._stderr.seek(max(0, size - STDERR_KEPT_BYTES))
            return CommandResult(returncode, b"", self._stderr.read())


def _copy_tree(source: Path, target: Path) -> None:
    """Like ``rsync -rL``; files already there unchanged are skipped."""
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    for entry in os.scandir(source):
        destination = target / entry.name
        if entry.is_dir():
            _copy_tree(Path(entry.path), destination)
            continue
        if not entry.is_file():
            continue
        info = os.stat(entry.path)
        try:
            there = os.stat(destination)
            if there.st_size == info.st_size and int(there.st_mtime) == int(info.st_mtime):
                continue
        except FileNotFoundError:
            pass
        partial = destination.with_name(f".{entry.name}.partial")
        try:
            shutil.copy2(entry.path, partial)
        except OSError:
            partial.unlink(missing_ok=True)     # as rsync does: no half file left on a full disk
            raise
        os.replace(partial, destination)
