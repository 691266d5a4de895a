"""The queue wait starts first: a class's runners are asked for before its burst is staged.

A runner's queue wait starts at its submission, and the cycle's own remote call comes only
after the whole burst has been validated, rendered, written to the outbox and sent (seconds
for a thousand jobs).  So intake calls ``EarlyStart`` with the first job it is about to
take; when that job's class had nothing in flight at the start of the cycle, one
``on_hpc early`` command (``on_hpc/early.py``) submits the runners the policy wants for the
cycle's new jobs, before they are written anywhere.

What it costs: at most one remote command per cycle, only in a cycle that takes the first
job of a class with nothing in flight, and only with a scheduler that queues (not
``local``); no scheduler listing (the cluster side uses its last good one and the runner
records), the ``sbatch`` the cycle's own call would have made anyway.  Over SSH it opens
the command connection the cycle's own call then reuses, and deploys ``on_hpc`` when the
cycle would have.

The policy is asked as for one job of the class, all that is sure before the rest of the
burst is read (it may be of other classes); the cycle's own call, which sees what was
really staged, sizes the rest.  A failure here costs only the head start: one log line, and
the cycle goes on.

With any scheduler, the first job a cycle takes also starts the cluster side's kept-open
process (``ClusterSide.start_ahead``) when none runs, so that its Python start overlaps the
staging instead of following it (the first job some 40 ms sooner here with ``once``, 15 ms
with ``watch``).  Not before: a cycle whose new jobs are all rejected or served from the
cache starts nothing there.
"""
from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .cluster import ClusterSide
from .config import Config
from .dropbox import HeldSummary
from .faults import fault_point
from .on_hpc.protocol import EarlyRequest
from .transport import TransportError

if TYPE_CHECKING:
    from .staging import PreparedJob

log = logging.getLogger(__name__)


class EarlyStart:
    def __init__(self, config: Config, cluster: ClusterSide):
        self.config = config
        self.cluster = cluster
        self.done = True           # asked, or nothing to ask, in this cycle
        self.ahead = False         # the kept-open process is yet to be started in this cycle
        self.busy: set[str] = set()    # classes with jobs in flight: their runners are the cycle's call's
        self.coming = 0
        self.submitted: list[dict] = []

    def begin(self, held: dict[str, HeldSummary], new_jobs: int) -> bool:
        """A new cycle: ``held`` its jobs in flight, ``new_jobs`` the ``.job`` files it found;
        False when this cycle has nothing to start early (intake need not tell it anything)."""
        self.busy = {job.job_class for job in held.values()}
        self.coming = new_jobs
        self.ahead = bool(new_jobs)
        self.done = self.config.scheduler == "local" or not new_jobs
        self.submitted = []
        return self.ahead

    def __call__(self, job: PreparedJob) -> bool:
        """Intake is about to take ``job``; never raises (the job's intake must not fail for
        it).  False once this cycle has nothing left to start early: intake stops telling."""
        if self.ahead:
            self.ahead = False
            self.cluster.start_ahead()
        if not (self.done or job.job_class in self.busy or job.job_class not in self.config.classes):
            self._ask_for_runners(job)
        return not self.done

    def _ask_for_runners(self, job: PreparedJob) -> None:
        self.done = True
        expected = job.description.expected_seconds or job.template.expected_seconds or 0
        request = EarlyRequest(
            root=self.config.workspace, scheduler=self.config.scheduler, submitter=self.config.submitter_id,
            coming={job.job_class: self.coming}, expected_seconds={job.job_class: expected},
            classes={job.job_class: self.config.classes[job.job_class].to_request()},
            max_attempts=self.config.max_attempts)
        try:
            answer = self.cluster.call("early", request.to_json())
        except TransportError as error:
            log.warning("class %s: could not ask for a runner before staging (%s); the cycle's own call will",
                        job.job_class, error)
            return
        fault_point("after_early")
        answer = answer if isinstance(answer, dict) else {}
        for error in answer.get("errors") or []:
            log.warning("cluster: %s", error)
        self.submitted = [runner for runner in answer.get("submitted") or [] if isinstance(runner, dict)]
        for runner in self.submitted:
            log.info("runner %s submitted for class %s before staging (scheduler id %s)",
                     runner.get("runner"), runner.get("class"), runner.get("sched_id"))
