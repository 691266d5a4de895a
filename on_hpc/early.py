"""``on_hpc early``: ask for a class's runners before the burst that needs them is staged.

A runner's queue wait starts at its ``sbatch``.  The cycle's own call (``headnode.cycle``)
comes after the whole burst has been rendered and sent, seconds later for a thousand jobs;
the submitter calls this instead as soon as its intake meets the first job of a class that
had nothing in flight, so the wait runs while the burst is staged.

It is cheap and only ever adds runners:

- the scheduler is not asked for a listing: the last good listing and the runner records
  stand in for it, as in a cycle whose listing failed (a record counts as a live runner, so
  a stale one can only hold a submission back until the cycle's own call, never double one);
- the runner policy (``policy.decide``, through ``headnode.ensure_runner``) decides as for
  one more ready job of the class (the rest of the burst may be of other classes: the
  cycle's own call, which sees it staged, sizes the rest), within ``max_runners``,
  ``user_limit`` and the caps per cycle and per hour; nothing is cancelled here;
- a runner submitted for jobs that never arrive (the submitter died before staging them)
  is the same as one whose work ran out: pending, the next cycle's policy cancels it;
  started, it finds no work and leaves after its linger;
- the coming jobs are noted for the class's idle runners (``coming.py``), so a runner that
  starts before the burst is staged waits for it instead of leaving after its linger.
"""
import sys

from . import headnode
from .coming import expect as announce
from .jobstore import JobStore
from .protocol import EarlyRequest
from .schedulers import SubmitFailed, connector


def early(request, sched=None):
    """Submit what the policy wants for the coming jobs; answers {"submitted", "errors"}."""
    request = EarlyRequest.from_json(request)
    store = JobStore(request.root)
    store.ensure_layout()
    sched = sched or connector(request.scheduler, store)
    answer = {"submitted": [], "errors": []}
    with headnode.workspace_lock(store):
        runners = headnode.with_recent_submissions(store, sched.last_known_runners(), listing_ok=False)
        for job_class, count in sorted(request.coming.items()):
            settings = request.classes.get(job_class)
            if settings is None or settings.get("runner_per_job"):
                continue      # an unknown class is the cycle's to refuse; 1:1 runners follow staged jobs
            try:
                announce(store, job_class, max(0, int(count)))
            except OSError as error:      # only a help: the runner may leave before the burst is queued
                sys.stderr.write("class %s: cannot note the coming jobs: %s\n" % (job_class, error))
            try:
                # As for one ready job: that much is sure, the rest of the burst may be of
                # other classes; the cycle's own call sizes the rest.
                new, _ = headnode.ensure_runner(store, sched, runners, job_class, settings, request,
                                                coming=[request.expected_seconds.get(job_class) or 0],
                                                may_cancel=False)
            except SubmitFailed as error:
                answer["errors"].append("class %s: cannot submit a runner early: %s" % (job_class, error))
                sys.stderr.write(answer["errors"][-1] + "\n")
                new = getattr(error, "submitted", [])
            answer["submitted"].extend(new)
    return answer
