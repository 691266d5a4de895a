"""The claims journal: what a runner recorded of each job it started, for the head node.

A runner appends one JSON line per job start to ``runners/<runner id>.claims.jsonl``
(host, attempt, pgid, node, GPUs, request, step) instead of writing a ``claim.json`` in
the job's folder: a file per job was one more inode per job, the dearest step of a small
job's trip (see ``jobstore._mark``), where a line is one ``write`` to a file opened once.
The head node reads it only to clean up after a lost runner (what to kill, which attempt
was interrupted) and for ``status``'s node use.

The journal is not synced, as claim.json was not: after a crash of the node the job's
processes are gone with it, and a lost claim only means nothing is left to kill.  A crash
of the runner leaves at most a torn last line; readers take only complete lines (ending in
a newline) that parse and name their runner, and the last one for a job wins.  Anything a
job can write is untrusted when read again, and jobs run as the runner's account: a field
of the wrong type is dropped (an attempt that is not a positive number, a pgid that is not
a process group), and a reader never reads more than the journal's last MAX_READ_BYTES.

A long-lived runner's journal is written afresh (a temporary file renamed over it) with
only the claims of its running jobs once it holds REWRITE_LINES lines and four times as
many as jobs run, and when someone removed it; so it stays under ~REWRITE_LINES lines
(about 1 MB), one create per REWRITE_LINES starts.
"""
import json
import os

from .files import remove_file

SUFFIX = ".claims.jsonl"
REWRITE_LINES = 4096
MAX_READ_BYTES = 16 * 1024 * 1024
OLD_CLAIM_FILE = "claim.json"     # in a job's folder, by runners before the journal

# Fields a reader keeps, each only when of its type.
_FIELDS = {"host": str, "node": str, "sched_id": str, "gpus": list, "request": dict,
           "step": bool, "start": (int, float)}
_REQUEST_KEYS = ("cpus", "memory_mb", "gpus")


def journal_path(runners_dir, runner_id):
    return os.path.join(runners_dir, runner_id + SUFFIX)


class Journal(object):
    """The runner's side: one ``write`` per line on a descriptor opened once (O_APPEND)."""

    def __init__(self, path):
        self.path = path
        self.fd = None
        self.lines = 0
        self.torn = False       # a write failed part-way: the next line starts on a fresh one

    def add(self, claim, running):
        """Append one start's claim.  ``running`` gives the claims of the running jobs
        (this one among them or not), used only when the journal is written afresh: not
        open yet (its first start, or a full disk refused it before), or grown long."""
        if self.fd is None or (self.lines >= REWRITE_LINES and self.lines >= 4 * len(running())):
            self.rewrite([other for other in running() if other is not claim] + [claim])
            return
        data = (("\n" if self.torn else "") + _line(claim)).encode("utf-8")
        self.torn = True
        if os.write(self.fd, data) != len(data):
            raise OSError("short write to %s" % self.path)
        self.torn = False
        self.lines += 1

    def removed(self):
        """True when the journal open here is no longer in the runners folder (a cleanup
        script, an operator): its claims must be written again, or the head node would find
        nothing to kill after this runner is lost."""
        if self.fd is None:
            return False
        try:
            return os.fstat(self.fd).st_nlink == 0 or os.stat(self.path).st_ino != os.fstat(self.fd).st_ino
        except OSError:
            return True

    def rewrite(self, claims):
        """Write the journal afresh with these claims: a new file of this runner's own
        renamed over the path (never following what someone else put there)."""
        tmp = "%s.tmp-%d" % (self.path, os.getpid())
        remove_file(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            data = "".join(_line(claim) for claim in claims).encode("utf-8")
            if data and os.write(fd, data) != len(data):
                raise OSError("short write to %s" % tmp)
            os.rename(tmp, self.path)
        except BaseException:
            os.close(fd)
            remove_file(tmp)
            raise
        self.close()
        self.fd, self.lines, self.torn = fd, len(claims), False

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def read_claims(path, runner_id):
    """Job id -> claim of every job in this runner's journal: the last complete, well-formed
    line naming the runner wins; a missing or unreadable journal holds none."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return {}
    try:
        with os.fdopen(fd, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            handle.seek(max(0, size - MAX_READ_BYTES))
            lines = handle.read(MAX_READ_BYTES).split(b"\n")
    except OSError:
        return {}
    if size > MAX_READ_BYTES:
        lines = lines[1:]     # read from the middle of a line
    claims = {}
    for line in lines[:-1]:   # the last piece is empty, or a torn line
        claim = _parse(line, runner_id)
        if claim is not None and "job" in claim:
            claims[claim["job"]] = claim
    return claims


def old_claim(job_dir, job_id, runner_id):
    """The claim.json a runner of the previous version wrote in the job's folder, when it
    names this runner; else None."""
    try:
        with open(os.path.join(job_dir, OLD_CLAIM_FILE), "rb") as handle:
            text = handle.read(MAX_READ_BYTES)
    except OSError:
        return None
    claim = _parse(text, runner_id)
    if claim is None or claim.get("job", job_id) != job_id:
        return None
    claim["job"] = job_id
    return claim


def _parse(line, runner_id):
    """A claim from one line, its fields checked; None for garbage or another runner's."""
    try:
        claim = json.loads(line.decode("utf-8"))
    except (ValueError, RecursionError):
        return None
    if not isinstance(claim, dict) or claim.get("runner") != runner_id:
        return None
    job = claim.get("job")
    checked = {"runner": runner_id}
    if job is not None:
        if not isinstance(job, str) or not job:
            return None
        checked["job"] = job
    for key, kind in _FIELDS.items():
        if isinstance(claim.get(key), kind):
            checked[key] = claim[key]
    attempt, pgid = claim.get("attempt"), claim.get("pgid")
    if _whole(attempt) and attempt >= 1:
        checked["attempt"] = attempt
    if _whole(pgid) and pgid > 1:
        checked["pgid"] = pgid
    if "request" in checked:
        checked["request"] = {key: value for key, value in checked["request"].items()
                              if key in _REQUEST_KEYS and _whole(value) and value >= 0}
    return checked


def _whole(value):
    return isinstance(value, int) and not isinstance(value, bool)


def _line(claim):
    return json.dumps(claim, sort_keys=True, separators=(",", ":")) + "\n"
