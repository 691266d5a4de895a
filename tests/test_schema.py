"""`dropbox-runner schema`: the JSON Schema and the submitter's validation agree.

The schema is built from jobs.JOB_FIELDS and the validation's own patterns; these tests run
both over the same corpus (hand-written hostile jobs plus seeded random ones) and fail on
the first job one accepts and the other rejects, so a rule added to either side alone shows.
"""
from __future__ import annotations

import json
import random

import jsonschema
import pytest
from helpers import drain, drop, run_cli

from dropbox_runner.jobs import KNOWN_KEYS, RESERVED_VARIABLES, JobInvalid, parse_job
from dropbox_runner.schema import job_schema, result_schema

VALID = {"script": "wordcount", "args": {"label": "x"}, "input_map": {"text": "/tmp/in.txt"},
         "output_map": {"counts": "/tmp/out.txt"}}

HOSTILE = [
    {}, {"script": ""}, {"script": None}, {"script": 5}, {"script": "../etc/passwd"}, {"script": "a/b"},
    {"script": "a..b"}, {"script": ".hidden"}, {"script": "-x"}, {"script": "ok.v2+1"},
    {"script": "x", "args": []}, {"script": "x", "args": "a=b"}, {"script": "x", "args": None},
    {"script": "x", "args": {"a": [1]}}, {"script": "x", "args": {"a": {"b": 1}}}, {"script": "x", "args": {"a": None}},
    {"script": "x", "args": {"a": 1.5, "b": True, "c": "s"}}, {"script": "x", "args": {"1a": 1}},
    {"script": "x", "args": {"a-b": 1}}, {"script": "x", "args": {"workspace": "/"}},
    {"script": "x", "input_map": {"a": "relative"}}, {"script": "x", "input_map": {"a": "/x/../etc"}},
    {"script": "x", "input_map": {"a": "/x/.."}}, {"script": "x", "input_map": {"a": "/x..y/z"}},
    {"script": "x", "input_map": {"a": 5}}, {"script": "x", "output_map": {"a": ""}},
    {"script": "x", "output_map": {"scripts": "/a"}}, {"script": "x", "class": "gpu"}, {"script": "x", "class": ""},
    {"script": "x", "class": "g p u"}, {"script": "x", "class": 3},
    *({"script": "x", "expected_time": value}
      for value in ("2h", "2H", " 90 s ", 90, 1.5, -5, "1-00:00:00", "10:00", "2 hours", True, "1.5h", "")),
    *({"script": "x", key: value} for key in ("cpus", "gpus")
      for value in (0, 1, 4, -1, "2", " 3 ", "02", "0", "x", 1.5, True, None, "", [1])),
    *({"script": "x", "memory": value} for value in ("4G", "4g", "500M", "500mb", "1.5GiB", "2 T", 512, 0.5, "", None,
                                                     "lots", "4X", True, "-1G", [1], "4Gb ")),
    {"script": "x", "expected_time": None}, {"script": "x", "cache": False}, {"script": "x", "cache": "no"},
    {"script": "x", "cache": None}, {"script": "x", "extra": 1}, {"script": "x", "Script": "y"}, VALID,
]


def _random_jobs(count: int, seed: int = 14) -> list[dict]:
    """Valid jobs with zero to two random changes each: near the boundary, both ways."""
    rng = random.Random(seed)
    values = [None, "", "x", "/abs/path", "rel/path", "/a/../b", 0, -1, 2.5, True, [], {}, {"k": "v"},
              "2h", "1-02:03:04", "5 m", "abc", "gpu", "a..b", "/tmp/x.txt", "a/b", "30M", "x y", 4, "8", "16G"]
    keys = ["a", "b_1", "1x", "workspace", "a b", "containers", "ok", "Z"]
    jobs = []
    for _ in range(count):
        job = json.loads(json.dumps(VALID))
        for _ in range(rng.choice((0, 1, 1, 2))):
            key = rng.choice(sorted(KNOWN_KEYS | {"junk"}))
            if key in ("args", "input_map", "output_map") and isinstance(job.get(key), dict) and rng.random() < 0.7:
                job[key][rng.choice(keys)] = rng.choice(values)
            else:
                job[key] = rng.choice(values)
        jobs.append(job)
    return jobs


def _cross_field(job: dict) -> bool:
    """Rules the schema leaves to the submitter (documented in its description)."""
    maps = [job.get(key) for key in ("args", "input_map", "output_map")]
    names = [name for mapping in maps if isinstance(mapping, dict) for name in mapping]
    outputs = [v for v in (job.get("output_map") or {}).values()] if isinstance(job.get("output_map"), dict) else []
    return len(names) != len(set(names)) or len(outputs) != len(set(map(str, outputs)))


def _submitter_accepts(job: dict) -> bool:
    try:
        parse_job(job)
    except JobInvalid:
        return False
    return True


CORPUS = [job for job in HOSTILE + _random_jobs(400) if not _cross_field(job)]


def test_the_corpus_holds_jobs_both_ways():
    accepted = sum(map(_submitter_accepts, CORPUS))
    assert accepted >= 30 and len(CORPUS) - accepted >= 100, accepted


@pytest.mark.parametrize("job", CORPUS, ids=lambda job: json.dumps(job, default=str)[:60])
def test_the_schema_and_the_submitter_agree(job):
    schema_accepts = jsonschema.Draft202012Validator(job_schema()).is_valid(job)
    assert schema_accepts == _submitter_accepts(job)


def test_the_schema_is_a_valid_schema_and_covers_every_key():
    jsonschema.Draft202012Validator.check_schema(job_schema())
    jsonschema.Draft202012Validator.check_schema(result_schema())
    assert set(job_schema()["properties"]) == KNOWN_KEYS
    reserved = job_schema()["properties"]["args"]["propertyNames"]["not"]["enum"]
    assert set(reserved) == RESERVED_VARIABLES


def test_schema_command_prints_both_schemas():
    done = run_cli("schema")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == job_schema()
    done = run_cli("schema", "--result")
    assert json.loads(done.stdout)["properties"]["status"]["enum"] == ["ok", "error"]


def test_real_results_match_the_result_schema(config, tmp_path):
    (tmp_path / "inputs" / "in.txt").write_text("one two\n")
    ok = {"script": "copy", "input_map": {"src": str(tmp_path / "inputs" / "in.txt")},
          "output_map": {"dst": str(tmp_path / "outputs" / "copy.txt")}}
    drop(config, "ok.job", ok)
    drop(config, "bad.job", {"script": "nope"})
    results = drain(config, ["ok.job", "bad.job"])
    validator = jsonschema.Draft202012Validator(result_schema())
    for name, result in results.items():
        errors = [error.message for error in validator.iter_errors(json.loads(json.dumps(result["job"])))]
        assert not errors, (name, errors)
    assert results["bad.job"]["job"]["status"] == "error"
