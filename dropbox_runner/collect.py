"""Step 4 of a cycle: done jobs come back; outputs go into place, then the result.

One transfer brings every done job's ``output/``, ``stdout`` and ``stderr``; a transport
whose cluster side is this machine (``reads_in_place``) has them read where they lie
instead (``inplace.JobFolder``), with nothing made here.  For each job, outputs are
placed all or nothing, then ``x.job.finished`` is written, then
``x.job.submitted`` removed: a crash anywhere in between is redone whole next cycle.
"""
from __future__ import annotations

import errno
import logging
import os
from pathlib import Path
from typing import Any

from .boundary import Boundary, describe, is_environment
from .config import Config
from .dropbox import Dropbox, HeldJob
from .faults import fault_point
from .history import History
from .inplace import JobFolder
from .jobs import workspace_names
from .on_hpc.protocol import FinishedRecord
from .outcome import RAN, Finisher, Outcome
from .results import error_block, read_stream, resource_provenance, run_block, stream_text
from .safefs import HeldFile
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
        self.jobs = Path(f"{config.workspace}/{JOBS_FOLDER}")      # where the local backend's jobs lie

    def collect(self, held: dict[str, HeldJob], finished: list[dict[str, Any]]) -> list[str]:
        """Finish every done job that is ours; the ids finished (a job that met a fault of
        this machine is not: it stays held and is collected again next cycle)."""
        done = [item for item in finished if item["id"] in held]
        if not done:
            return []
        if self.transport.reads_in_place:
            unpulled: dict[str, str] = {}
        else:
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
            elif not os.path.exists(self.dropbox.path(job.name, ".submitted")):
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
                                     scratch=self._scratch(job), log_level=logging.WARNING))

    def _scratch(self, job: HeldJob) -> list[Path]:
        return [] if self.transport.reads_in_place else [self.inbox / job.job_id]

    def _finish(self, job: HeldJob, record: FinishedRecord) -> None:
        outputs = job.description.get("output_map") or {}
        names = {key: f"output/{name}" for key, name in workspace_names(outputs).items()}
        wanted = ["stdout", "stderr", *names.values()]
        if not self.transport.reads_in_place:
            pulled = self.inbox / job.job_id
            self._finish_run(job, record, {relative: pulled / relative for relative in wanted}, names, {})
            return
        try:
            folder = JobFolder(self.jobs, job.job_id, wanted)
        except OSError as error:
            # Nothing else is held open meanwhile, so running out of descriptors here is
            # this job's many outputs (placing them would run out too), not the machine.
            if is_environment(error) and error.errno != errno.EMFILE:
                raise           # the boundary's: the job waits
            self._fail(job, f"its output could not be read on the cluster side: {describe(error)}")
            return
        with folder:
            self._finish_run(job, record, folder.files, names, folder.held)

    def _finish_run(self, job: HeldJob, record: FinishedRecord, files: dict[str, Path], names: dict[str, str],
                    held: dict[str, HeldFile]) -> None:
        """``files``: the job's ``stdout``, ``stderr`` and outputs (``names``: output key to
        ``output/<name>``) to read, pulled here or held open where they lie (``held``: those
        may be linked into place); one missing is one the job did not leave."""
        streams = [_stream(name, files, held) for name in ("stdout", "stderr")]
        block = run_block(job.job_id, record, *streams, job.submitted_at)
        block["job_digest"] = job.job_digest
        block["provenance"] = dict(job.provenance, scheduler_job_id=block["scheduler_job_id"],
                                   host=block["host"], runner=block["runner"])
        block["provenance"].update(resource_provenance(record))
        self.finisher.finish(Outcome(
            job.name, job.description, block, kind=RAN,
            produced={key: files[name] for key, name in names.items() if name in files},
            linkable={key: held[name] for key, name in names.items() if name in held},
            cache_key=job.cache_key, scratch=self._scratch(job),
            record={"attempts": block["attempts"], "runner": block["runner"]}))


def _stream(name: str, files: dict[str, Path], held: dict[str, HeldFile]) -> str:
    """The job's ``stdout`` or ``stderr``: read by the descriptor held where it lies, else
    from where it was pulled; empty when the job left none."""
    if name in held:
        return stream_text(held[name].file)
    return read_stream(files[name]) if name in files else ""


def _parts(item: dict[str, Any]) -> list[str]:
    return [f"{item['id']}/{part}" for part in ("output", "stdout", "stderr")]
