"""Work a request leaves until its answer is on its way.

A cycle's answer waits for nothing that comes after it in the cycle: moving the jobs the
submitter has collected into the trash and starting the sweep (up to 15 ms a cycle for
350 jobs on ext4 here) only free room, and the answer already counts that room as free.
The submitter waits for the answer, so in the kept-open ``serve`` process this work runs
once the answer is sent, while the submitter collects, and before the next request is
read.  Anywhere else (a one-shot command, whose exit the caller waits for anyway; a
test) it runs at once, as it always did.

A deferred task that fails cannot fail the request it belonged to: what it says is kept
for the next answer's errors (and written to stderr), and what it left undone, a later
cycle does again.

Some work may wait longer, for the end of the serve loop (``at_end``): the sweep of the
trash, put off while jobs run (``sweep.py``), starts then at the latest.
"""
import contextlib
import sys

_queue = None       # a list while a serve loop defers; None: tasks run at once
_at_end = {}        # what runs when the serve loop ends, by key: one task a key
_failures = []


@contextlib.contextmanager
def until_answered():
    """Within: ``later`` keeps its tasks for ``run_deferred`` (the serve loop runs them
    after each answer); what is left at the end runs then, and what ``at_end`` kept."""
    global _queue
    previous, _queue = _queue, []
    try:
        yield
    finally:
        run_deferred()
        _queue = previous
        if previous is None:
            ending = list(_at_end.values())
            _at_end.clear()
            for task in ending:
                _run(task)


def later(task):
    if _queue is None:
        task()
    else:
        _queue.append(task)


def at_end(key, task):
    """Run ``task`` when the serve loop ends (at once where none is answering); a later
    task under the same key takes the place of the one before."""
    if _queue is None:
        task()
    else:
        _at_end[key] = task


def run_deferred():
    """The tasks left by the request just answered, in order; a failure is reported, not raised."""
    while _queue:
        _run(_queue.pop(0))


def _run(task):
    try:
        task()
    except OSError as error:
        _failures.append("after the last answer: %s" % error)
        sys.stderr.write(_failures[-1] + "\n")


def failures():
    """What deferred tasks reported since the last call, for the next answer's errors."""
    reported = list(_failures)
    del _failures[:]
    return reported
