"""Staging through the submitter against plain rsync of the same files over the same SSH.

Two cases: one 1 GiB input, and 1000 small inputs (one per job, as a collection arrives).
"Submitter" is the first cycle that takes the jobs: validation, input digests for the
provenance, the outbox, one rsync push and the queue command (on_hpc is deployed before
the clock starts).  "rsync" is one plain ``rsync -a`` of the same files over the same SSH
options into a fresh folder.  Prints one JSON object.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

import sshsetup  # noqa: E402

from dropbox_runner.cluster import ClusterSide  # noqa: E402
from dropbox_runner.config import load_config  # noqa: E402
from dropbox_runner.submitter import run_once  # noqa: E402
from dropbox_runner.transport import open_transport  # noqa: E402


def make_inputs(folder: Path, count: int, size: int) -> list[Path]:
    folder.mkdir(parents=True)
    paths = []
    for number in range(count):
        path = folder / f"in{number:05d}.bin"
        with open(path, "wb") as handle:
            handle.write(os.urandom(size))
        paths.append(path)
    return paths


def through_submitter(sshd, root: Path, inputs: list[Path]) -> float:
    scratch = sshsetup.new_scratch(sshd)
    config_path = sshsetup.write_config(root, sshd, scratch, templates=str(HERE.parent / "tests" / "templates"),
                                        grace_seconds=0, classes={"default": {"slots": 1, "idle_timeout": 1}})
    config = load_config(config_path)
    (root / "out").mkdir(parents=True)
    transport = open_transport(config)
    ClusterSide(config, transport).deploy()
    for number, path in enumerate(inputs):
        job = {"script": "copy", "cache": False, "input_map": {"src": str(path)},
               "output_map": {"dst": str(root / "out" / f"o{number}.bin")}}
        (config.dropbox / f"j{number:05d}.job").write_text(yaml.safe_dump(job))
    started = time.perf_counter()
    run_once(config, transport)
    elapsed = time.perf_counter() - started
    transport.close()
    assert len(list(config.dropbox.glob("*.submitted"))) == len(inputs), "jobs were not taken"
    return elapsed


def plain_rsync(sshd, root: Path, inputs: list[Path]) -> float:
    scratch = sshsetup.new_scratch(sshd)
    shell = " ".join(shlex.quote(part) for part in sshd.ssh_argv()[:-1])
    started = time.perf_counter()
    subprocess.run(["rsync", "-a", "--mkpath", "-e", shell, *map(str, inputs), f"{sshd.user}@{sshd.host}:{scratch}/"],
                   check=True, capture_output=True, input=b"")
    return time.perf_counter() - started


def main() -> None:
    sshd = sshsetup.start_private_sshd()
    root = Path(tempfile.mkdtemp(prefix="dbr-transfer-"))
    try:
        results = {}
        for case, count, size in (("one 1 GiB input", 1, 1 << 30), ("1000 small inputs", 1000, 4096)):
            inputs = make_inputs(root / case.replace(" ", "_") / "inputs", count, size)
            submitter = through_submitter(sshd, root / case.replace(" ", "_") / "sub", inputs)
            rsync = plain_rsync(sshd, root / case.replace(" ", "_") / "rsync", inputs)
            results[case] = {"submitter_s": submitter, "rsync_s": rsync, "ratio": submitter / rsync}
        print(json.dumps({"transfer": results}, indent=1))
    finally:
        sshsetup.stop_private_sshd(sshd)
        subprocess.run(["pkill", "-u", sshd.user], check=False)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
