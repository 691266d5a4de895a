"""What taking inputs costs at intake: validation, the input digests and the outbox entry.

Since inputs are taken once (each copied from the checked file into the outbox, a reflink
where the filesystem has them), intake reads and writes every input; this measures that
step alone, on the local backend, with nothing sent.  Two cases, as bench/transfer.py:
one 1 GiB input, and 1000 small inputs.  Run it against another checkout with
``PYTHONPATH=<checkout> python bench/intake_inputs.py`` to compare.  Prints one JSON object.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from helpers import make_config  # noqa: E402

from dropbox_runner.dropbox import Dropbox  # noqa: E402
from dropbox_runner.submitter import Submitter  # noqa: E402
from dropbox_runner.transport.local import LocalTransport  # noqa: E402


def take(root: Path, count: int, size: int) -> float:
    config = make_config(root)
    for number in range(count):
        path = root / "inputs" / f"in{number:05d}.bin"
        with open(path, "wb") as handle:
            for _ in range(0, size, 1 << 20):
                handle.write(os.urandom(min(size, 1 << 20)))
        job = {"script": "copy", "cache": False, "input_map": {"src": str(path)},
               "output_map": {"dst": str(root / "outputs" / f"o{number}.bin")}}
        (config.dropbox / f"j{number:05d}.job").write_text(yaml.safe_dump(job))
    os.sync()
    submitter = Submitter(config, LocalTransport())
    started = time.perf_counter()
    with submitter.history.batch():
        taken = submitter.intake.take_new_jobs(Dropbox(config.dropbox).scan(), set())
    elapsed = time.perf_counter() - started
    submitter.close()
    assert len(taken.names) == count, "jobs were not taken"
    return elapsed


def main() -> None:
    results = {}
    for case, count, size in (("one 1 GiB input", 1, 1 << 30), ("1000 small inputs", 1000, 4096)):
        root = Path(tempfile.mkdtemp(prefix="dbr-intake-"))
        try:
            results[case] = {"intake_s": round(take(root, count, size), 3)}
        finally:
            shutil.rmtree(root, ignore_errors=True)
    print(json.dumps({"intake_inputs": results}, indent=1))


if __name__ == "__main__":
    main()
