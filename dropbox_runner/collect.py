"""Step 4 of a cycle: done jobs come back; outputs go into place, then the result.

One transfer brings every done job's ``output/``, ``stdout`` and ``stderr``.  For each
job, outputs are placed all or nothing, then ``x.job.finished`` is written, then
``x.job.submitted`` removed: a crash anywhere in between is redone whole next cycle.
"""
from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass, field
from typing import Any

from .cache import ResultCache
from .config import Config
from .dropbox import Dropbox, HeldJob
from .faults import fault_point
from .history import History
from .jobs import workspace_names
from .on_hpc.protocol import FinishedRecord
from .results import OutputProblem, place_outputs, read_stream, resource_provenance, run_block
from .staging import JOBS_FOLDER
from .transport import Transport

log = logging.getLogger(__name__)


@dataclass
class Collected:
    ok: int = 0
    error: int = 0
    job_ids: list[str] = field(default_factory=list)


class Collector:
    def __init__(self, config: Config, transport: Transport, dropbox: Dropbox, history: History,
                 cache: ResultCache):
        self.config = config
        self.transport = transport
        self.dropbox = dropbox
        self.history = history
        self.cache = cache
        self.inbox = config.state_dir / "inbox"
        self.pulled_from = self.inbox

    def collect(self, held: dict[str, HeldJob], finished: list[dict[str, Any]]) -> Collected:
        collected = Collected()
        done = [item for item in finished if item["id"] in held]
        if not done:
            return collected
        remote = f"{self.config.workspace}/{JOBS_FOLDER}"
        # A cluster folder on this machine (the local backend) is read where it is: a copy
        # into the inbox would cost a dozen file operations per job for nothing.
        in_place = getattr(self.transport, "local_folder", lambda path: None)(remote)
        self.pulled_from = in_place or self.inbox
        if in_place is None:
            self.inbox.mkdir(parents=True, exist_ok=True)
            wanted = [f"{item['id']}/{part}" for item in done for part in ("output", "stdout", "stderr")]
            self.transport.pull(remote, wanted, self.inbox)
        fault_point("after_pull")
        for item in done:
            job = held[item["id"]]
            if self._finish(job, FinishedRecord.from_json(item["record"])):
                collected.ok += 1
            else:
                collected.error += 1
            collected.job_ids.append(job.job_id)
        return collected

    def _finish(self, job: HeldJob, record: FinishedRecord) -> bool:
        pulled = self.pulled_from / job.job_id
        block = run_block(job.job_id, record, read_stream(pulled / "stdout"),
                          read_stream(pulled / "stderr"), job.submitted_at)
        block["job_digest"] = job.job_digest
        block["provenance"] = dict(job.provenance, scheduler_job_id=block["scheduler_job_id"],
                                   host=block["host"], runner=block["runner"])
        block["provenance"].update(resource_provenance(record))
        earlier = self.history.earlier_runs(job.name)
        if earlier:
            block["earlier_runs"] = earlier
        if block["status"] == "ok":
            outputs = job.description.get("output_map") or {}
            names = workspace_names(outputs)
            produced = {key: pulled / "output" / names[key] for key in outputs}
            try:
                place_outputs(produced, outputs, job.job_id[-12:])
            except OutputProblem as problem:
                block.update(status="error", message=str(problem))
            else:
                if job.cache_key:
                    self.cache.store(job.cache_key, produced, block)
            fault_point("after_outputs")
        self.dropbox.write_result(job.name, job.description, block)
        fault_point("after_result")
        self.dropbox.discard(job.name, ".submitted")
        self.dropbox.discard(job.name, ".cancel")
        if self.pulled_from == self.inbox:
            shutil.rmtree(pulled, ignore_errors=True)
        self.history.forget_earlier_runs(job.name)
        self.history.record(job.name, "finished", job.job_id, detail=block["message"], status=block["status"],
                            message=block["message"], attempts=block["attempts"], runner=block["runner"])
        log.info("%s: finished %s: %s", job.name, block["status"], block["message"])
        return block["status"] == "ok"
