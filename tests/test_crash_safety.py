"""SIGKILL of the submitter at every step boundary loses nothing and runs nothing twice."""
import os
import subprocess
import sys
from collections import Counter

import pytest
import yaml
from helpers import drop, write_config

from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox

FAULT_POINTS = ["after_intake", "after_outbox", "after_hold", "after_reject_result", "after_push",
                "after_queue", "after_pull", "after_outputs", "after_result"]
JOBS = 6


def once(config_path, fault=None):
    env = dict(os.environ)
    env.pop("DROPBOX_RUNNER_FAULT", None)
    if fault:
        env["DROPBOX_RUNNER_FAULT"] = fault
    return subprocess.run([sys.executable, "-m", "dropbox_runner.cli", "once", "--config", str(config_path)],
                          capture_output=True, text=True, env=env, timeout=60)


@pytest.mark.parametrize("point", FAULT_POINTS)
def test_sigkill_at_each_step_boundary(tmp_path, point):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    names = []
    for i in range(JOBS):
        names.append(f"j{i}.job")
        drop(config, names[-1], {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                                 "output_map": {"out": str(tmp_path / "outputs" / f"o{i}.txt")}})
    (config.dropbox / "bad.job").write_text("script: [")
    kills = 0
    for attempt in range(40):
        # Killed at the point until that has happened once, then every other cycle (runners
        # may finish the jobs within one cycle: the point must be met while there is work).
        faulty = kills == 0 or attempt % 2 == 0
        done = once(config_path, fault=point if faulty else None)
        if done.returncode == -9:
            kills += 1
        else:
            assert done.returncode == 0, done.stderr
        finished = Dropbox(config.dropbox).scan().finished
        if all(name in finished for name in [*names, "bad.job"]) and kills and not faulty:
            break
    assert kills >= 1, f"the fault point {point} was never reached"

    listing = Dropbox(config.dropbox).scan()
    assert listing.new == [] and listing.submitted == []
    ledger = Counter((tmp_path / "ledger").read_text().split())
    assert len(ledger) == JOBS and set(ledger.values()) == {1}, ledger
    for i, name in enumerate(names):
        document = yaml.safe_load((config.dropbox / f"{name}.finished").read_text())
        assert document["job"]["status"] == "ok", document
        assert (tmp_path / "outputs" / f"o{i}.txt").read_text() == "done\n"
    bad = yaml.safe_load((config.dropbox / "bad.job.finished").read_text())
    assert bad["job"]["status"] == "error"
    leftovers = [p.name for p in (tmp_path / "outputs").iterdir() if p.name.startswith(".")]
    assert leftovers == []
    assert not [p for p in config.dropbox.iterdir() if p.name.startswith(".tmp-")]
