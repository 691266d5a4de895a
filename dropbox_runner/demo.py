"""``dropbox-runner demo``: the whole pipeline on the embedded local backend.

It builds a dropbox and a local "cluster" folder, drops a dozen jobs from the example
templates (one of them invalid on purpose, one with a hostile argument that must arrive
literally), runs cycles the way cron would until every job has a result, and prints a
table of the results.
"""
from __future__ import annotations

import logging
import sys
import tempfile
import time
from pathlib import Path

import yaml

from .client import submit
from .config import load_config
from .dropbox import Dropbox
from .status import table
from .submitter import run_once
from .transport.local import LocalTransport

HOSTILE_LABEL = "; touch /tmp/pwned $(id) `id` 'quoted' \"double\""
TIMEOUT_SECONDS = 120


def run_demo(folder: Path | None, count: int, scheduler: str = "local") -> int:
    """``scheduler: slurm`` makes the runners real Slurm jobs of the Slurm that
    ``sbatch``/``squeue`` reach from here (``SLURM_CONF``)."""
    root = Path(folder or tempfile.mkdtemp(prefix="dropbox-runner-demo-")).resolve()
    config_path = _set_up(root, scheduler)
    config = load_config(config_path)
    print(f"demo folder: {root}\nconfig: {config_path}\n")
    job_files = [submit(config.dropbox, job) for job in _demo_jobs(root, count)]
    transport = LocalTransport()
    started = time.monotonic()
    # The cycles' own log lines would break the progress line (the table says what they say); -v shows them.
    quiet = not logging.getLogger().isEnabledFor(logging.DEBUG)
    terminal = sys.stdout.isatty() and quiet
    if quiet:
        logging.getLogger("dropbox_runner").setLevel(logging.ERROR)   # the table shows the rejection
    last = ""
    while True:
        run_once(config, transport)
        listing = Dropbox(config.dropbox).scan()
        done = sum(1 for path in job_files if path.name in listing.finished)
        elapsed = time.monotonic() - started
        line = (f"{done}/{len(job_files)} finished, {len(listing.submitted)} on the cluster, "
                f"{len(listing.new)} waiting")
        if terminal:
            print(f"\r{line}, {elapsed:.1f}s\033[K", end="", flush=True)
        elif line != last:                 # a log file or a pipe gets whole lines, once each
            print(f"{line}, {elapsed:.1f}s", flush=True)
        last = line
        if done == len(job_files) or elapsed > TIMEOUT_SECONDS:
            break
        time.sleep(0.5)
    print("\n" if terminal else "")
    rows = [("JOB", "SCRIPT", "STATUS", "RC", "RUNNER", "MESSAGE / OUTPUT")]
    for path in job_files:
        result = Dropbox(config.dropbox).read_result(path.name)
        if result is None:
            rows.append((path.name[:8], "?", "missing", "", "", "no result"))
            continue
        job = result["job"]
        outputs = result.get("output_map") or {}
        detail = job["message"] if job["status"] != "ok" else _first_output(outputs)
        rows.append((path.name[:8], str(result.get("script", "?")), job["status"], str(job["rc"]),
                     str(job.get("runner") or "-"), _abridge(detail)))
    print("\n".join(table(rows)))
    missing = sum(1 for row in rows[1:] if row[2] == "missing")
    print(f"\nresults and outputs are in {config.dropbox} and {root / 'outputs'}")
    return 1 if missing else 0


def _set_up(root: Path, scheduler: str = "local") -> Path:
    for sub in ("dropbox", "inputs", "outputs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config_path = root / "dropbox-runner.yaml"
    config_path.write_text(yaml.safe_dump({
        "dropbox": "dropbox",
        "backend": "local",
        "scheduler": scheduler,
        "cluster_root": "cluster",
        "classes": {"default": {"slots": 4, "idle_timeout": 10}},
        "grace_seconds": 0,
    }, sort_keys=False))
    return config_path


def _demo_jobs(root: Path, count: int) -> list[dict]:
    jobs = []
    for number in range(count):
        text = root / "inputs" / f"text{number}.txt"
        text.write_text("the quick brown fox\n" * (number + 1))
        output = str(root / "outputs" / f"result{number}.txt")
        if number == count - 1:
            jobs.append({"script": "wordcount", "args": {"label": "broken"},
                         "input_map": {"text": str(root / "inputs" / "no-such-file.txt")},
                         "output_map": {"counts": output}})
        elif number % 2:
            jobs.append({"script": "checksum", "input_map": {"data": str(text)},
                         "output_map": {"digest": output}})
        else:
            label = HOSTILE_LABEL if number == 0 else f"text {number}"
            jobs.append({"script": "wordcount", "args": {"label": label},
                         "input_map": {"text": str(text)}, "output_map": {"counts": output}})
    return jobs


def _abridge(text: str, width: int = 80) -> str:
    """Whole words from both ends: an error's beginning says what, its end says why."""
    words = text.split()
    if len(" ".join(words)) <= width:
        return " ".join(words)
    head: list[str] = []
    tail: list[str] = []
    while words and len(" ".join(head + words[:1])) <= width // 2:
        head.append(words.pop(0))
    while words and len(" ".join(words[-1:] + tail)) <= width // 2 - 4:
        tail.insert(0, words.pop())
    return " ".join(head + ["..."] + tail)


def _first_output(outputs: dict) -> str:
    for path in outputs.values():
        try:
            return Path(path).read_text(errors="replace").strip().splitlines()[0]
        except (OSError, IndexError):
            return f"(cannot read {path})"
    return ""


if __name__ == "__main__":
    sys.exit(run_demo(None, 12))
