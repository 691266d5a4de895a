"""The job queue on the cluster's shared filesystem.

A job's state is where its marker file stands, and every move is one ``rename``, the only
operation that is atomic on the filesystems clusters share (NFS, Lustre, GPFS included):

    jobs/<id>/                 what the submitter staged: job.sh, job.json (a link to the
                               intake cycle's one file of metas, ``batchfile``), input/; the
                               runner adds output/, stdout, stderr, finished.json (a link
                               to one file of the records of a pass, ``finish_many``)
    ready/<class>/<id>         waiting for a runner of that resource class (a hard
                               link to its job.json: a marker that makes no inode)
    claimed/<runner>/<id>      being run by that runner (the folder name is the owner)
    done/<id>                  finished.json is complete; the submitter may collect
    trash/<id>.<ns>            a collected job's folder, moved there in one rename and
                               removed by a detached sweep (``sweep.py``)
    runners/<runner>.claims.jsonl   a line per job the runner started (see ``claims``)
    runners/.finished-<runner>      a pass's records before they are linked in; one left by
                               a killed runner is removed by its next pass or ``forget_runner``

Two runners racing for one job both try the same rename and exactly one wins.  A job
with ``finished.json`` is never run again, whatever happens to its marker afterwards.
"""
import os
import time

from . import claims, doorbell
from .batchfile import read_record, write_linked
from .files import listdir, read_json, remove_file, remove_tree, touch_new, write_json
from .protocol import FinishedRecord, JobState, Release, cancelled_record

BRIEF_FIELDS = ("class", "expected_seconds")


class JobStore(object):
    def __init__(self, root, remember_briefs=False):
        self.root = root
        # job.json never changes once staged (a job id derives from its content), so one
        # command that asks for a job's brief several times (the head node's cycle: queue,
        # refuse, the policy's backlog) reads it once.  Off for long-lived users (runners),
        # whose memory must not grow with every job they ever saw.
        self._briefs = {} if remember_briefs else None
        self._made = set()      # ready folders made (or found) by this instance

    # -- paths ---------------------------------------------------------------------
    def job_dir(self, job_id):
        return os.path.join(self.root, "jobs", job_id)

    def ready_dir(self, job_class):
        return os.path.join(self.root, "ready", job_class)

    def claimed_dir(self, runner_id):
        return os.path.join(self.root, "claimed", runner_id)

    def done_dir(self):
        return os.path.join(self.root, "done")

    def trash_dir(self):
        return os.path.join(self.root, "trash")

    def runners_dir(self):
        return os.path.join(self.root, "runners")

    def _job_json(self, job_id):
        return os.path.join(self.job_dir(job_id), "job.json")

    def finished_path(self, job_id):
        return os.path.join(self.job_dir(job_id), "finished.json")

    def finished_batch_path(self, runner_id):
        return os.path.join(self.runners_dir(), ".finished-" + runner_id)

    def ensure_layout(self):
        for sub in ("jobs", "ready", "claimed", "done", "runners"):
            os.makedirs(os.path.join(self.root, sub), mode=0o700, exist_ok=True)

    def job_meta(self, job_id):
        """The job's whole record, as a runner needs it to start the job; {} when unreadable."""
        return read_record(self._job_json(job_id), job_id, {})

    def job_brief(self, job_id):
        """Only the record's ``BRIEF_FIELDS``, all that queueing, cancelling, requeueing and
        the runner policy read: the head node's cycle reads every ready job's, and with whole
        records it peaked at 186 MiB at 100,000 ready jobs (105 with briefs).  {} when unreadable or without them."""
        if self._briefs is not None and job_id in self._briefs:
            return self._briefs[job_id]
        brief = read_record(self._job_json(job_id), job_id, {}, BRIEF_FIELDS)
        if self._briefs is not None and brief:
            self._briefs[job_id] = brief
        return brief

    # -- the submitter's side ----------------------------------------------------------
    def states(self, claimed_by=None):
        """Map every job id with a marker to its state, reading each folder once.

        ``claimed_by`` (a dict) gets the runner of each running job from the same listing:
        read again later in the cycle, a job that ended meanwhile was running on no runner."""
        found = {}
        for job_class in listdir(os.path.join(self.root, "ready")):
            for job_id in listdir(self.ready_dir(job_class)):
                found[job_id] = JobState.QUEUED
        for runner_id in listdir(os.path.join(self.root, "claimed")):
            for job_id in listdir(self.claimed_dir(runner_id)):
                found[job_id] = JobState.RUNNING
                if claimed_by is not None:
                    claimed_by[job_id] = runner_id
        for job_id in listdir(self.done_dir()):
            found[job_id] = JobState.DONE
        return found

    def make_ready(self, job_id, states):
        """Queue a staged job; a no-op for one already queued, running or done."""
        if job_id in states:
            return states[job_id]
        job_class = self.job_brief(job_id).get("class")
        if not isinstance(job_class, str) or not os.path.exists(os.path.join(self.job_dir(job_id), "job.sh")):
            return JobState.ABSENT
        if os.path.exists(self.finished_path(job_id)):
            self._to_done(None, job_id)
            return JobState.DONE
        ready = self.ready_dir(job_class)
        if ready not in self._made:      # once per class, not once per job of a burst
            os.makedirs(ready, mode=0o700, exist_ok=True)
            self._made.add(ready)
        _mark(self._job_json(job_id), os.path.join(ready, job_id))
        return JobState.QUEUED

    def cancel(self, job_id, states):
        """Stop a job wherever it is: one not running ends at once; a running one is
        flagged, and its runner ends the job's process group and records it."""
        state = states.get(job_id)
        if state == JobState.DONE:
            return JobState.DONE
        if state == JobState.QUEUED:
            brief = self.job_brief(job_id)
            try:
                os.unlink(os.path.join(self.ready_dir(brief.get("class", "default")), job_id))
                state = None
            except FileNotFoundError:
                state = JobState.RUNNING          # a runner claimed it meanwhile
        if state == JobState.RUNNING:
            touch_new(os.path.join(self.job_dir(job_id), "cancel"))
            return JobState.RUNNING
        os.makedirs(self.job_dir(job_id), mode=0o700, exist_ok=True)
        write_json(self.finished_path(job_id), cancelled_record().to_json())
        self._to_done(None, job_id)
        return JobState.DONE

    def cancel_requested(self, job_id):
        return os.path.exists(os.path.join(self.job_dir(job_id), "cancel"))

    def remove(self, job_id):
        """Forget a collected job: its marker first, so it never looks half-removed; its
        folder goes to the trash in one rename, for a sweep off the cycle (``sweep.py``).
        Returns the folder's path in the trash; None when it went another way, or was gone."""
        try:
            os.unlink(os.path.join(self.done_dir(), job_id))
        except FileNotFoundError:
            pass
        if not os.path.lexists(self.job_dir(job_id)):
            return None
        if self.trash_dir() not in self._made:
            os.makedirs(self.trash_dir(), mode=0o700, exist_ok=True)
            self._made.add(self.trash_dir())
        # a name of its own: an earlier folder of the same id may still be in the trash
        trashed = os.path.join(self.trash_dir(), "%s.%d" % (job_id, time.time_ns()))
        try:
            os.rename(self.job_dir(job_id), trashed)
        except OSError:
            remove_tree(self.job_dir(job_id))
            return None
        return trashed

    # -- the runner's side ------------------------------------------------------------
    def ready_jobs(self, job_class, ordered=True):
        """Ready job ids of a class, oldest first (FIFO by when they were queued); in no
        particular order, and without a ``stat`` each, when not ``ordered``."""
        folder = self.ready_dir(job_class)
        if not ordered:
            return listdir(folder)
        entries = []
        for job_id in listdir(folder):
            try:
                entries.append((os.stat(os.path.join(folder, job_id)).st_mtime, job_id))
            except FileNotFoundError:
                continue
        return [job_id for _, job_id in sorted(entries)]

    def claim(self, job_class, job_id, runner_id):
        """Take a ready job for a runner; False when another runner was faster."""
        claimed = self.claimed_dir(runner_id)
        return _move_into(os.path.join(self.ready_dir(job_class), job_id), claimed, job_id)

    def claimed_jobs(self, runner_id):
        return listdir(self.claimed_dir(runner_id))

    def runners_with_claims(self):
        return listdir(os.path.join(self.root, "claimed"))

    def claims_path(self, runner_id):
        return claims.journal_path(self.runners_dir(), runner_id)

    def runner_claims(self, runner_id):
        """Job id -> claim (host, attempt, pgid, node, request...) of every job this runner
        recorded starting, from its claims journal."""
        return claims.read_claims(self.claims_path(runner_id), runner_id)

    def claim_of(self, job_id, runner_id=None, journal=None):
        """The claim of a job by a runner (by default the one holding its marker now): the
        last line of the runner's journal (``journal``: as ``runner_claims`` read it), else
        the claim.json a runner of the previous version wrote.  {} when there is none: as
        for a runner that died before recording it, nothing to kill and attempt unknown."""
        if runner_id is None:
            runner_id = next((runner for runner in self.runners_with_claims()
                              if os.path.exists(os.path.join(self.claimed_dir(runner), job_id))), None)
            if runner_id is None:
                return {}
        found = (self.runner_claims(runner_id) if journal is None else journal).get(job_id)
        return found or claims.old_claim(self.job_dir(job_id), job_id, runner_id) or {}

    def finish(self, runner_id, job_id, record):
        """Record a job's end (a FinishedRecord): finished.json first, then the marker
        moves to done."""
        write_json(self.finished_path(job_id), record.to_json())
        self._to_done(os.path.join(self.claimed_dir(runner_id), job_id), job_id)

    def finish_many(self, runner_id, ended):
        """Record the end of several jobs (``(job id, FinishedRecord)`` pairs) at once: one
        file of their records, made durable and linked in as each one's finished.json
        (``batchfile.write_linked``: one inode for all), then their markers moved to done.
        Readers take their own job's line (``batchfile.read_record``)."""
        write_linked(self.finished_batch_path(runner_id),
                     [(job_id, record.to_json(), self.finished_path(job_id)) for job_id, record in ended])
        for job_id, _ in ended:
            self._to_done(os.path.join(self.claimed_dir(runner_id), job_id), job_id)

    def finish_marker(self, runner_id, job_id):
        """Move a claim whose job already has its finished.json to done."""
        self._to_done(os.path.join(self.claimed_dir(runner_id), job_id), job_id)

    def release(self, runner_id, job_id, reason, max_attempts, attempt=None):
        """Give an interrupted job back to the queue, or fail it after too many tries.

        Returns a ``Release`` outcome (see there).
        ``attempt`` is the run being interrupted: the runner and the head node may both
        hand back one run, and it counts once.
        """
        marker = os.path.join(self.claimed_dir(runner_id), job_id)
        if os.path.exists(self.finished_path(job_id)):
            self._to_done(marker, job_id)
            return Release.DONE
        if not os.path.exists(marker):
            return Release.GONE
        history_path = os.path.join(self.job_dir(job_id), "interruptions.json")
        history = read_json(history_path, [])
        attempt = attempt or len(history) + 1
        if not any(entry.get("attempt") == attempt for entry in history):
            history.append({"runner": runner_id, "at": time.time(), "reason": reason,
                            "attempt": attempt})
            write_json(history_path, history)
        if len(history) >= max_attempts:
            self.finish(runner_id, job_id, FinishedRecord(
                interrupted=len(history), runner=runner_id, attempt=len(history),
                error="interrupted %d times (last: %s); not retried" % (len(history), reason)))
            return Release.FAILED
        ready = self.ready_dir(self.job_brief(job_id).get("class", "default"))
        return Release.REQUEUED if _move_into(marker, ready, job_id) else Release.GONE

    def attempts_before(self, job_id):
        return len(read_json(os.path.join(self.job_dir(job_id), "interruptions.json"), []))

    def forget_runner(self, runner_id):
        """Drop an ended runner's empty claim folder and its records; its claims journal
        stays while jobs are still claimed by it (the head node reads it to requeue them).
        A batch of finished records it was killed writing goes too: what it holds is read
        only through the links made from it."""
        remove_file(self.finished_batch_path(runner_id))
        suffixes = (".json", ".alive.json", doorbell.SUFFIX, claims.SUFFIX)
        try:
            os.rmdir(self.claimed_dir(runner_id))
        except FileNotFoundError:
            pass
        except OSError:
            suffixes = suffixes[:-1]
        for suffix in suffixes:
            try:
                os.unlink(os.path.join(self.runners_dir(), runner_id + suffix))
            except FileNotFoundError:
                pass

    def _to_done(self, marker, job_id):
        """Move a marker to done/ (or create one there when there is no marker to move)."""
        if marker is not None and _move_into(marker, self.done_dir(), job_id):
            return
        os.makedirs(self.done_dir(), mode=0o700, exist_ok=True)
        touch_new(os.path.join(self.done_dir(), job_id))


def _move_into(path, folder, name):
    """Rename ``path`` to ``folder/name``, making the folder when it is missing; False when
    ``path`` is gone (another runner was faster, or there was no marker).  The folder is
    made only when the rename says it is missing: a ``makedirs`` before each of a runner's
    moves was two system calls a job for a folder that is there."""
    target = os.path.join(folder, name)
    try:
        os.rename(path, target)
        return True
    except FileNotFoundError:
        if os.path.isdir(folder):
            return False
    os.makedirs(folder, mode=0o700, exist_ok=True)
    try:
        os.rename(path, target)
    except FileNotFoundError:
        return False
    return True


def _mark(job_json, marker):
    """Queue a job by linking its job.json in as the marker: making a file (an inode) is
    the dearest step of queueing a small job on many filesystems (on journal-less ext4 it
    cost 0.2-0.7 ms, a link 0.02 ms; on Lustre a create is a metadata-server round trip
    too).  Only the marker's name and its mtime (the job's staging time: oldest first)
    are ever used, never its content, so sharing job.json's inode costs nothing; a
    filesystem that refuses the link gets an empty file, as before."""
    try:
        os.link(job_json, marker)
    except FileExistsError:
        pass
    except OSError:
        touch_new(marker)
