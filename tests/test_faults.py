"""Faults an operator will meet, on the local backend: full disks, overlapping submitters,
odd names, results taken away mid-collection."""
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from helpers import drain, drop, mounted_tmpfs, wait_until, write_config

from dropbox_runner.config import load_config
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.jobs import check_files, parse_job
from dropbox_runner.safefs import Boundaries


def ledger_job(root, number):
    return {"script": "ledger", "args": {"seconds": 0}, "cache": False,
            "output_map": {"out": str(root / "outputs" / f"o{number}.txt")}}


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KiB tmpfs: the outputs' filesystem runs out of space."""
    with mounted_tmpfs(tmp_path / "small", "64k") as mount:
        yield mount


def test_a_full_output_disk_gives_an_error_and_leaves_nothing_half_written(config, small_disk):
    drop(config, "big.job", {"script": "big_output", "args": {"kib": 200}, "cache": False,
                             "output_map": {"out": str(small_disk / "big.bin")}})
    drop(config, "small.job", {"script": "big_output", "args": {"kib": 8}, "cache": False,
                               "output_map": {"out": str(small_disk / "small.bin")}})
    results = drain(config, ["big.job", "small.job"])
    big = results["big.job"]["job"]
    assert big["status"] == "error" and "No space left" in big["message"]
    assert results["small.job"]["job"]["status"] == "ok"
    assert sorted(os.listdir(small_disk)) == ["small.bin"]


def test_two_submitters_started_at_once_run_each_job_once(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    names = []
    for number in range(30):
        names.append(f"j{number}.job")
        drop(config, names[-1], ledger_job(tmp_path, number))
    loop = ("import sys, time\nfrom dropbox_runner.config import load_config\n"
            "from dropbox_runner.submitter import run_once\nfrom dropbox_runner.transport.local import LocalTransport\n"
            "config = load_config(sys.argv[1])\nend = time.time() + 40\n"
            "while time.time() < end and len(list(config.dropbox.glob('*.finished'))) < 30:\n"
            "    run_once(config, LocalTransport())\n")
    submitters = [subprocess.Popen([sys.executable, "-c", loop, str(config_path)]) for _ in range(2)]
    for process in submitters:
        assert process.wait(timeout=60) == 0
    listing = Dropbox(config.dropbox).scan()
    assert len(listing.finished) == 30 and not listing.new and not listing.submitted
    ledger = Counter((tmp_path / "ledger").read_text().split())
    assert len(ledger) == 30 and set(ledger.values()) == {1}


def test_job_names_with_spaces_and_non_ascii(config):
    names = ["a job with spaces.job", "ünïcødé 日本.job", "quote's \"and\" $(x).job"]
    for number, name in enumerate(names):
        drop(config, name, ledger_job(Path(config.dropbox).parent, number))
    results = drain(config, names)
    assert all(results[name]["job"]["status"] == "ok" for name in names)


def test_a_result_taken_away_after_a_crash_is_written_again_never_rerun(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    drop(config, "taken.job", ledger_job(tmp_path, 0))
    env = dict(os.environ, DROPBOX_RUNNER_FAULT="after_result")
    once = [sys.executable, "-m", "dropbox_runner.cli", "once", "--config", str(config_path)]
    wait_until(lambda: subprocess.run(once, env=env, capture_output=True) and
               (config.dropbox / "taken.job.finished").exists(), 30, 0.1, "a result")
    (config.dropbox / "taken.job.finished").unlink()       # the tool read it and removed it
    result = drain(config, ["taken.job"])["taken.job"]
    assert result["job"]["status"] == "ok"
    assert (tmp_path / "ledger").read_text().split() == [result["job"]["id"]]


def test_unreadable_inputs_and_unwritable_output_folders_are_named(tmp_path, monkeypatch):
    source = tmp_path / "in.txt"
    source.write_text("x")
    monkeypatch.setattr(os, "access", lambda path, mode: False)   # as root, chmod cannot show it
    job = parse_job({"script": "s", "input_map": {"i": str(source)}, "output_map": {"o": str(tmp_path / "o")}})
    text = "\n".join(check_files(job, Boundaries()))
    assert "is not readable" in text and "is not writable" in text


def test_outputs_outside_the_allowed_roots_are_refused(config_factory, tmp_path):
    config = config_factory(allowed_output_roots=[str(tmp_path / "outputs")])
    drop(config, "escape.job", {"script": "ledger", "args": {"seconds": 0},
                                "output_map": {"out": str(tmp_path / "elsewhere.txt")}})
    block = drain(config, ["escape.job"])["escape.job"]["job"]
    assert "outside the allowed output folders" in block["message"]


def test_an_input_removed_after_the_job_was_taken_does_not_matter(config, tmp_path):
    """Inputs are taken once, at intake: the copy that was checked is the one that runs."""
    from dropbox_runner.submitter import Submitter
    from dropbox_runner.transport.local import LocalTransport

    class NoSend(LocalTransport):
        def run(self, command, stdin=b""):
            raise AssertionError("not reached in this cycle")

    doomed = tmp_path / "inputs" / "doomed.txt"
    doomed.write_text("as taken")
    drop(config, "doomed.job", {"script": "copy", "input_map": {"src": str(doomed)}, "cache": False,
                                "output_map": {"dst": str(tmp_path / "outputs" / "d.txt")}})
    submitter = Submitter(config, NoSend())
    submitter.intake.take_new_jobs(Dropbox(config.dropbox).scan(), set())   # taken, not yet sent
    doomed.unlink()
    drop(config, "fine.job", ledger_job(tmp_path, 1))
    results = drain(config, ["doomed.job", "fine.job"])
    assert results["doomed.job"]["job"]["status"] == "ok"
    assert (tmp_path / "outputs" / "d.txt").read_text() == "as taken"
    assert results["fine.job"]["job"]["status"] == "ok"
