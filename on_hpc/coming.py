"""Work on its way to a class: a runner asked for early does not leave before it arrives.

``on_hpc early`` submits a class's runner before the submitter has staged the burst, and on
a quiet cluster that runner can start, find nothing ready and leave after its linger while
the burst is still being rendered and sent.  So the early call leaves
``runners/policy/<class>.coming.json`` (a deadline), an idle runner of the class stays
while it is fresh, and the cycle's own call removes it once the burst is queued.

When the submitter dies between the two, the deadline runs out and the runner leaves as
any idle runner does.  A job can write into the workspace, so what is read back is
checked, and no deadline reaches further than ``MOST_SECONDS`` ahead.
"""
import os
import time

from .files import read_json, write_json

BASE_SECONDS = 60.0        # time allowed for the submitter to stage a burst ...
PER_JOB_SECONDS = 0.02     # ... and per job of it (the submitter stages 150-300 jobs/s here)
MOST_SECONDS = 900.0


def path(store, job_class):
    return os.path.join(store.runners_dir(), "policy", job_class + ".coming.json")


def expect(store, job_class, jobs, now=None):
    """Note that ``jobs`` jobs of the class are about to be staged."""
    now = time.time() if now is None else now
    os.makedirs(os.path.dirname(path(store, job_class)), mode=0o700, exist_ok=True)
    until = now + min(MOST_SECONDS, BASE_SECONDS + PER_JOB_SECONDS * max(0, jobs))
    write_json(path(store, job_class), {"until": until}, durable=False)


def expected(store, job_class, now=None):
    """True while work announced for the class has not arrived (and its deadline holds)."""
    now = time.time() if now is None else now
    note = read_json(path(store, job_class), {})
    until = note.get("until") if isinstance(note, dict) else None
    if isinstance(until, bool) or not isinstance(until, (int, float)):
        return False
    return now < until <= now + MOST_SECONDS


def arrived(store, classes):
    """The cycle's own call queued what was staged: the classes' notes are done with."""
    for job_class in classes:
        try:
            os.unlink(path(store, job_class))
        except OSError:
            pass
