"""``dropbox-runner-cron CONFIG [LOG]``: one cycle as cron runs it, installed beside
``dropbox-runner`` (same virtual environment), so cron's bare PATH does not matter.

Everything the cycle logs is appended to LOG, which is rotated here (``LOG.1`` ... ``.5``
at 10 MiB), so a cron line needs no logrotate.  Nothing reaches stdout or stderr, so cron
sends no mail, except when the outcome changes: the first failure of a kind (exit code
and its last log lines, pointing at LOG) and the first success after failures.  An outage
of a day is one mail, not 1440.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import sys
from pathlib import Path

from . import cli

KEEP_LOGS = 5
MAX_LOG_BYTES = 10 << 20
MAILED_LINES = 20


class _Tee:
    """stderr for the cycle: each line goes to the log at once; the last ones are kept
    for the mail."""

    def __init__(self, log):
        self.log = log
        self.tail: collections.deque[str] = collections.deque(maxlen=MAILED_LINES)

    def write(self, text: str) -> int:
        self.log.write(text)
        self.log.flush()
        self.tail.extend(line for line in text.splitlines() if line.strip())
        return len(text)

    def flush(self) -> None:
        self.log.flush()

    def isatty(self) -> bool:
        return False


def default_log() -> Path:
    state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(state) / "dropbox-runner" / "cron.log"


def rotate(log: Path, max_bytes: int, keep: int = KEEP_LOGS) -> None:
    try:
        if log.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    for number in range(keep - 1, 0, -1):
        older = log.with_name(f"{log.name}.{number}")
        if older.exists():
            older.replace(log.with_name(f"{log.name}.{number + 1}"))
    log.replace(log.with_name(f"{log.name}.1"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dropbox-runner-cron", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", type=Path, help="the config file")
    parser.add_argument("log", type=Path, nargs="?", help=f"the log file (default {default_log()})")
    parser.add_argument("-v", "--verbose", action="store_true", help="log idle cycles and debug detail too")
    parser.add_argument("--max-log-bytes", type=int, default=MAX_LOG_BYTES, help="rotate the log beyond this size")
    options = parser.parse_args(argv)
    log = options.log or default_log()
    try:
        log.parent.mkdir(parents=True, exist_ok=True)
        rotate(log, options.max_log_bytes)
        handle = open(log, "a", encoding="utf-8")
    except OSError as error:
        print(f"dropbox-runner-cron: cannot write the log {log}: {error.strerror}", file=sys.stderr)
        return cli.EXIT_USAGE
    with handle:
        tee = _Tee(handle)
        with contextlib.redirect_stderr(tee), contextlib.redirect_stdout(tee):
            code = cli.main(["once", "--config", str(options.config)] + (["-v"] if options.verbose else []))
        _tell_cron(log, code, list(tee.tail))
    return code


def _tell_cron(log: Path, code: int, tail: list[str]) -> None:
    """Write to stderr (cron mails it) only when the outcome differs from the last run's."""
    marker = log.with_name(log.name + ".failing")
    try:
        before = int(marker.read_text())
    except (OSError, ValueError):
        before = 0
    if code == before:
        return
    if code == cli.EXIT_OK:
        print(f"dropbox-runner-cron: cycles succeed again (they failed with exit {before}); log: {log}",
              file=sys.stderr)
        marker.unlink(missing_ok=True)
        return
    print(f"dropbox-runner-cron: the cycle failed with exit {code} (see `dropbox-runner --help`); "
          f"no further mail until this changes. Last lines of {log}:", file=sys.stderr)
    for line in tail:
        print(f"  {line}", file=sys.stderr)
    marker.write_text(f"{code}\n")


if __name__ == "__main__":
    sys.exit(main())
