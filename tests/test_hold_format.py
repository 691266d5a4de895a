"""``x.job.submitted`` is JSON where JSON keeps the hold exactly (issue 18: every cycle reads
every hold again, and YAML parsing was a third of that), YAML where it cannot, and still
read, within bounds, whatever a tool left there instead."""
import datetime
import json
import os
from pathlib import Path

import pytest
import yaml
from helpers import drain

from dropbox_runner.dropbox import Dropbox, HeldJob
from dropbox_runner.entries import MAX_DEPTH
from dropbox_runner.seal import HoldSeal


def held(description):
    return HeldJob("a.job", "vm.a.0123", description, "fp", "default", 1.5, "digest", {"inputs": {}})


def hold_and_read(tmp_path, description):
    seal = HoldSeal(tmp_path / "state")
    box = Dropbox(tmp_path)
    box.hold(held(description), seal)
    text = (tmp_path / "a.job.submitted").read_text()
    document = Dropbox(tmp_path).read_held("a.job")
    assert seal.verify(document)
    assert HeldJob.from_document("a.job", document) == held(description)
    return text


def test_a_hold_json_can_say_is_written_as_json(tmp_path):
    text = hold_and_read(tmp_path, {"script": "copy", "args": {"n": 1, "x": 2.5, "ok": True, "names": ["é", None]}})
    assert json.loads(text)["description"]["args"]["names"] == ["é", None]


@pytest.mark.parametrize("odd", [{"when": datetime.date(2024, 1, 2)}, {"by_number": {1: "one"}},
                                 {"ratio": float("inf")}])
def test_a_hold_json_would_change_is_written_as_yaml_and_reads_back_the_same(tmp_path, odd):
    text = hold_and_read(tmp_path, {"script": "copy", **odd})
    assert not text.startswith("{")


def test_a_job_whose_args_json_cannot_say_gets_them_back_in_its_result(config, tmp_path):
    """An infinite number is a valid arg, and JSON has none."""
    (config.dropbox / "odd.job").write_text("script: ledger\ncache: false\nargs: {seconds: 0, ratio: .inf}\n"
                                            f"output_map: {{out: {tmp_path / 'out.txt'}}}\n")
    result = drain(config, ["odd.job"])["odd.job"]
    assert result["job"]["status"] == "ok", result["job"]
    assert result["args"] == {"seconds": 0, "ratio": float("inf")}


DEEP_JSON = '{"a": ' + "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1) + "}"


@pytest.mark.parametrize("text", ["[" * 5000 + "]" * 5000, DEEP_JSON, '{"a": 1', '{"id": 1}'])
def test_a_hold_a_tool_rewrote_is_read_within_bounds_or_refused(tmp_path, text):
    """Deep JSON would recurse in the parser and in the seal; broken JSON falls back to
    YAML's bounded reader; what reads is still refused by its seal."""
    (tmp_path / "a.job.submitted").write_text(text)
    seal = HoldSeal(tmp_path / "state")
    try:
        document = Dropbox(tmp_path).read_held("a.job")
    except ValueError:
        return
    assert not seal.verify(document)


def test_a_hold_written_as_yaml_by_an_earlier_version_is_still_read(tmp_path):
    seal = HoldSeal(tmp_path / "state")
    document = held({"script": "copy"}).to_document()
    document["seal"] = seal.sign(document)
    (tmp_path / "a.job.submitted").write_text(yaml.safe_dump(document))
    assert seal.verify(Dropbox(tmp_path).read_held("a.job"))


def test_a_hold_rewritten_into_deep_json_fails_its_job_and_the_job_beside_it_finishes_in_the_same_cycle(
        config, tmp_path):
    from helpers import wait_until

    from dropbox_runner.submitter import run_once
    from dropbox_runner.transport.local import LocalTransport

    for name in ("garbled", "plain"):
        (config.dropbox / f"{name}.job").write_text(
            f"script: ledger\ncache: false\nargs: {{seconds: 0}}\noutput_map: {{out: {tmp_path / name}.txt}}\n")
    run_once(config, LocalTransport())
    plain_id = Dropbox(config.dropbox).read_held("plain.job")["id"]
    (config.dropbox / "garbled.job.submitted").write_text(DEEP_JSON)
    done = Path(config.workspace) / "done"
    wait_until(lambda: done.is_dir() and plain_id in os.listdir(done), 60, what="the plain job done on the cluster")
    run_once(config, LocalTransport())
    box = Dropbox(config.dropbox)
    assert box.read_result("plain.job")["job"]["status"] == "ok"
    assert box.read_result("garbled.job")["job"]["status"] == "error"
