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
"""
import contextlib
import sys

_queue = None       # a list while a serve loop defers; None: tasks run at once
_failures = []


@contextlib.contextmanager
def until_answered():
    """Within: ``later`` keeps its tasks for ``run_deferred`` (the serve loop runs them
    after each answer); what is left at the end runs then."""
    global _queue
    previous, _queue = _queue, []
    try:
        yield
    finally:
        run_deferred()
        _queue = previous


def later(task):
    if _queue is None:
        task()
    else:
        _queue.append(task)


def run_deferred():
    """The tasks left by the request just answered, in order; a failure is reported, not raised."""
    while _queue:
        task = _queue.pop(0)
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
