"""A Prometheus textfile (node_exporter's textfile-collector convention) after every cycle.

Counters must survive between cron runs, so their totals live in a small JSON file in the
state folder; the ``.prom`` file is rewritten whole and renamed into place, so the
collector never reads half of it, and it is 0644, for a node_exporter running as another
user.  Every gauge series is written on every cycle, idle ones included, with explicit
zeros: a missing series reads as "no data" in alerting, not as "none".  A cycle that did
not contact the cluster (nothing of ours is there) reports its jobs and runners as 0.
Values keep full precision (a Unix time in ``%g`` would lose its last four digits).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import Config
from .on_hpc.files import write_atomic
from .on_hpc.protocol import JobState, RunnerState

if TYPE_CHECKING:
    from .submitter import CycleReport

DROPBOX_STATES = (JobState.WAITING, JobState.SUBMITTED, JobState.FINISHED)
CLUSTER_STATES = (JobState.QUEUED, JobState.RUNNING, JobState.DONE)
RUNNER_STATES = (RunnerState.PENDING, RunnerState.RUNNING, RunnerState.ENDING)
log = logging.getLogger(__name__)
COUNTERS = ("results_ok", "results_error", "runner_submissions", "requeues", "cycles_ok",
            "cycles_failed", "cycle_seconds_sum", "runner_cancels")


def record_cycle(config: Config, report: CycleReport | None) -> None:
    """Add a cycle (None for one that failed) to the totals and rewrite the textfile."""
    if config.metrics_file is None:
        return
    totals_path = Path(config.state_dir) / "metrics.json"
    try:
        totals = json.loads(totals_path.read_text())
    except (OSError, ValueError):
        totals = {}
    totals = {name: totals.get(name, 0) for name in COUNTERS} | {
        "last_success": totals.get("last_success", 0), "last": totals.get("last", {})}
    if report is None:
        totals["cycles_failed"] += 1
    else:
        totals["results_ok"] += report.finished_ok
        totals["results_error"] += report.finished_error + report.rejected
        totals["runner_submissions"] += report.runners_submitted
        totals["runner_cancels"] += report.runners_cancelled
        totals["requeues"] += report.requeued
        totals["cycles_ok"] += 1
        totals["cycle_seconds_sum"] += report.seconds
        totals["last_success"] = time.time()
        totals["last"] = {"seconds": report.seconds, "dropbox": report.dropbox_counts,
                          "cluster": report.states, "runners": report.runners}
    try:
        totals_path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(str(totals_path), json.dumps(totals))
        write_atomic(str(config.metrics_file), render(totals, list(config.classes)), mode=0o644)
    except OSError as error:   # the work is done; a metrics folder gone or full must not fail the cycle
        log.warning("metrics not written to %s: %s", config.metrics_file, error.strerror or error)


def _number(value: float) -> str:
    """Prometheus' text format: integers as such, floats with every digit (repr)."""
    return str(value) if isinstance(value, int) else repr(float(value))


def _with_zeros(counts: dict[str, int], states: tuple[str, ...]) -> list[tuple[str, int]]:
    return sorted({**dict.fromkeys(states, 0), **counts}.items())


def render(totals: dict[str, Any], classes: list[str] = ()) -> str:
    last = totals["last"]
    lines: list[str] = []

    def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
        lines.append(f"# HELP dropbox_runner_{name} {help_text}")
        lines.append(f"# TYPE dropbox_runner_{name} {kind}")
        lines.extend(f"dropbox_runner_{name}{suffix} {_number(value)}" for suffix, value in samples)

    metric("dropbox_jobs", "gauge", "Jobs in the dropbox by state.",
           [(f'{{state="{state}"}}', count) for state, count in _with_zeros(last.get("dropbox", {}), DROPBOX_STATES)])
    metric("cluster_jobs", "gauge", "Jobs in the cluster workspace by state.",
           [(f'{{state="{state}"}}', count) for state, count in _with_zeros(last.get("cluster", {}), CLUSTER_STATES)])
    runners: dict[tuple[str, str], int] = {(cls, state): 0 for cls in classes for state in RUNNER_STATES}
    for runner in last.get("runners", []):
        key = (runner.get("class") or "", runner.get("state") or "")
        runners[key] = runners.get(key, 0) + 1
    metric("runners", "gauge", "Runners by class and scheduler state.",
           [(f'{{class="{cls}",state="{state}"}}', count) for (cls, state), count in sorted(runners.items())])
    metric("results_total", "counter", "Result files written, by status.",
           [('{status="ok"}', totals["results_ok"]), ('{status="error"}', totals["results_error"])])
    metric("runner_submissions_total", "counter", "Runners submitted to the scheduler.",
           [("", totals["runner_submissions"])])
    metric("runner_cancels_total", "counter", "Pending runners cancelled once the backlog no longer needed them.",
           [("", totals["runner_cancels"])])
    metric("requeues_total", "counter", "Jobs put back in the queue after their runner was lost.",
           [("", totals["requeues"])])
    metric("cycles_total", "counter", "Submitter cycles, by outcome.",
           [('{outcome="ok"}', totals["cycles_ok"]), ('{outcome="failed"}', totals["cycles_failed"])])
    metric("cycle_duration_seconds", "summary", "Duration of successful cycles.",
           [("_sum", totals["cycle_seconds_sum"]), ("_count", totals["cycles_ok"])])
    metric("last_cycle_duration_seconds", "gauge", "Duration of the last successful cycle.",
           [("", last.get("seconds", 0))])
    metric("last_success_timestamp_seconds", "gauge", "When the last cycle succeeded (Unix time).",
           [("", totals["last_success"])])
    return "\n".join(lines) + "\n"
