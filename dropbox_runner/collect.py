"""Step 4 of a cycle: done jobs come back; outputs go into place, then the result.

One transfer brings every done job's ``output/``, ``stdout`` and ``stderr``.  For each
job, outputs are placed all or nothing, then ``x.job.finished`` is written, then
``x.job.submitted`` removed: a crash anywhere in between is redone whole next cycle.
"""
from __future__ import annotations

import logging
from typing import Any

from .boundary import Boundary, describe
from .config import Config
from .dropbox import Dropbox, HeldJob
from .faults import fault_point
from .history import History
from .jobs import workspace_names
from .on_hpc.protocol import FinishedRecord
from .outcome import RAN, Finisher, Outcome
from .results import error_block, read_stream, resource_provenance, run_block
from .staging import JOBS_FOLDER
from .transport import Transport, TransportError

log = logging.getLogger(__name__)


class Collector:
    def __init__(self, config: Config, transport: Transport, dropbox: Dropbox, history: History,
                 finisher: Finisher, boundary: Boundary):
        self.config = config
        self.transport = transport
        self.dropbox = dropbox
        self.history = history
        self.finisher = finisher
        self.boundary = boundary
        self.inbox = config.state_dir / "inbox"

    def collect(self, held: dict[str, HeldJob], finished: list[dict[str, Any]]) -> list[str]:
        """Finish every done job that is ours; the ids finished (a job that met a fault of
        this machine is not: it stays held and is collected again next cycle)."""
        done = [item for item in finished if item["id"] in held]
        if not done:
            return []
        self.inbox.mkdir(parents=True, exist_ok=True)
        unpulled = self._pull(done)
        fault_point("after_pull")
        finished_ids = []
        for item in done:
            job = held[item["id"]]
            if item["id"] in unpulled:
                self._fail(job, f"its output could not be brought back from the cluster: {unpulled[item['id']]}")
                finished_ids.append(job.job_id)
                continue
            if self.boundary.contain(
                    job.name, "collecting its run",
                    lambda job=job, item=item: self._finish(job, FinishedRecord.from_json(item["record"])),
                    lambda message, job=job: self._fail(job, message)):
                finished_ids.append(job.job_id)
            elif not self.dropbox.path(job.name, ".submitted").exists():
                finished_ids.append(job.job_id)     # ended by its error result
        return finished_ids

    def _pull(self, done: list[dict[str, Any]]) -> dict[str, str]:
        """One transfer for every done job.  When it fails, each job is pulled alone: the
        jobs that fail alone while others come back are at fault (an output the job made
        unreadable, say), and are returned with why; when every one fails alone, the
        first failure is the environment's and ends the cycle, as a lost connection does."""
        source = f"{self.config.workspace}/{JOBS_FOLDER}"
        try:
            self.transport.pull(source, [path for item in done for path in _parts(item)], self.inbox)
            return {}
        except (TransportError, OSError) as error:
            if len(done) == 1:
                raise
            log.warning("one pull for %d done jobs failed (%s); pulling each alone", len(done), describe(error))
        failed: dict[str, str] = {}
        first_error: BaseException | None = None
        for item in done:
            try:
                self.transport.pull(source, _parts(item), self.inbox)
            except (TransportError, OSError) as error:
                first_error = first_error or error
                failed[item["id"]] = describe(error)
        if len(failed) == len(done) and first_error is not None:
            raise first_error
        return failed

    def _fail(self, job: HeldJob, message: str) -> None:
        self.finisher.finish(Outcome(job.name, job.description,
                                     error_block(message, job.job_id, job_digest=job.job_digest),
                                     scratch=[self.inbox / job.job_id], log_level=logging.WARNING))

    def _finish(self, job: HeldJob, record: FinishedRecord) -> None:
        pulled = self.inbox / job.job_id
        block = run_block(job.job_id, record, read_stream(pulled / "stdout"),
                          read_stream(pulled / "stderr"), job.submitted_at)
        block["job_digest"] = job.job_digest
        block["provenance"] = dict(job.provenance, scheduler_job_id=block["scheduler_job_id"],
                                   host=block["host"], runner=block["runner"])
        block["provenance"].update(resource_provenance(record))
        outputs = job.description.get("output_map") or {}
        names = workspace_names(outputs)
        self.finisher.finish(Outcome(
            job.name, job.description, block, kind=RAN,
            produced={key: pulled / "output" / names[key] for key in outputs},
            cache_key=job.cache_key, scratch=[pulled],
            record={"attempts": block["attempts"], "runner": block["runner"]}))


def _parts(item: dict[str, Any]) -> list[str]:
    return [f"{item['id']}/{part}" for part in ("output", "stdout", "stderr")]
