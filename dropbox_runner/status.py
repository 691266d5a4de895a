"""What ``dropbox-runner status`` reports: the dropbox's states and the cluster's runners."""
from __future__ import annotations

import time
from typing import Any

from . import __version__
from .cluster import ClusterSide
from .config import Config
from .dropbox import Dropbox
from .on_hpc.durations import format_clock
from .transport import NotDeployed, RemoteCommandFailed, Transport, TransportError


def gather_status(config: Config, transport: Transport) -> dict[str, Any]:
    dropbox = Dropbox(config.dropbox)
    listing = dropbox.scan()
    oldest = dropbox.age(listing.new[0]) if listing.new else None    # the scan lists them oldest first
    status: dict[str, Any] = {
        "version": __version__,
        "dropbox": str(config.dropbox),
        "jobs": {"waiting": len(listing.new), "submitted": len(listing.submitted),
                 "finished": len(listing.finished)},
        "oldest_waiting_seconds": None if oldest is None else round(oldest, 1),
        "unusable": listing.unusable,
        "checked_at": time.time(),
    }
    try:
        cluster = ClusterSide(config, transport).status()
        status["cluster"] = cluster
    except NotDeployed as error:          # reached, but no cycle has run yet: nothing to report
        status["cluster_note"] = str(error)
    except RemoteCommandFailed as error:
        status["cluster_failed"] = str(error)
    except TransportError as error:
        status["cluster_error"] = str(error)
    return status


def format_status(status: dict[str, Any]) -> str:
    jobs = status["jobs"]
    lines = [f"dropbox-runner {status['version']}, dropbox {status['dropbox']}",
             f"  waiting {jobs['waiting']}, on the cluster {jobs['submitted']}, finished {jobs['finished']}"]
    if status["oldest_waiting_seconds"] is not None:
        lines.append(f"  oldest waiting job: {status['oldest_waiting_seconds']:.0f}s")
    for name, why in sorted(status.get("unusable", {}).items()):
        lines.append(f"  unusable entry {name!r}: {why}")
    if "cluster_error" in status:
        lines.append(f"cluster: unreachable: {status['cluster_error']}")
        return "\n".join(lines)
    if "cluster_failed" in status:
        lines.append(f"cluster: reached, but the status command failed: {status['cluster_failed']}")
        return "\n".join(lines)
    if "cluster_note" in status:
        lines.append(f"cluster: {status['cluster_note']}")
        return "\n".join(lines)
    cluster = status["cluster"]
    counts = ", ".join(f"{state} {count}" for state, count in sorted(cluster["counts"].items())) or "empty"
    lines.append(f"cluster queue: {counts}")
    if not cluster["scheduler_ok"]:
        lines.append("  (the scheduler did not answer; runners as last seen)")
    runners = cluster["runners"]
    if not runners:
        lines.append("runners: none")
        return "\n".join(lines)
    reasons = any(runner.get("reason") for runner in runners)    # squeue's, for pending runners only
    rows = [("RUNNER", "CLASS", "SCHEDULER ID", "STATE", "TIME LEFT", "JOBS") + (("REASON",) if reasons else ())]
    for runner in runners:
        left = runner["time_left"]
        rows.append((runner["runner"], runner["class"], runner["sched_id"] or "-", runner["state"],
                     "unlimited" if left is None else format_clock(left), str(runner["jobs"]))
                    + ((runner.get("reason") or "-",) if reasons else ()))
    lines.append("runners:")
    lines += ["  " + line for line in table(rows)]
    for runner in runners:
        for node in runner.get("nodes") or []:
            lines.append(f"  {runner['runner']} on {_node_use(node)}")
    return "\n".join(lines)


def _node_use(node: dict[str, Any]) -> str:
    """``node7 2 job(s), cpus 3/8, memory 4096/16000M, gpus 1/2``: booked of what it holds."""
    used, total = node["memory_mb"]
    memory = f"memory {used}M (not counted)" if total is None else f"memory {used}/{total}M"
    return (f"{node['node']} {node['jobs']} job(s), cpus {node['cpus'][0]}/{node['cpus'][1]}, {memory}, "
            f"gpus {node['gpus'][0]}/{node['gpus'][1]}")


def table(rows: list[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]


