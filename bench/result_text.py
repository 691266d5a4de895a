"""CPU per result text: ``x.job.finished`` as written by ``jobs.dump_yaml`` (the
``yamltext`` emitter, PyYAML for what it leaves) against PyYAML's libyaml dumper alone, on
the result a trivial job's collection writes (its description, the run block with
provenance) and on one with a chatty stdout.  User CPU only: no file is written.

    python bench/result_text.py --results 20000
"""
from __future__ import annotations

import argparse
import time

from dropbox_runner.jobs import _dump_pyyaml, dump_yaml


def result(stdout: str) -> dict:
    block = {"status": "ok", "message": "processed OK", "stderr": "", "stdout": stdout, "rc": 0,
             "start": "2026-11-22T18:12:45+00:00", "end": "2026-11-22T18:12:46+00:00",
             "id": "sub.j00042.3f9a1c2b7d4e", "attempts": 1, "runner": "default-1", "scheduler_job_id": "12345",
             "host": "node01", "duration": 0.012, "queue_wait": 1.532, "version": "0.9.0",
             "job_digest": "9" * 64, "provenance": {"template_digest": "a" * 64, "submitter": "sub",
                                                      "scheduler_job_id": "12345", "host": "node01",
                                                      "runner": "default-1", "node": "node01"}}
    return {"script": "trivial", "output_map": {"out": "/srv/out/o42"}, "job": block}


def per_result_us(dump, document: dict, count: int) -> float:
    start = time.process_time()
    for _ in range(count):
        dump(document)
    return (time.process_time() - start) / count * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=int, default=20000)
    args = parser.parse_args()
    for label, document in (("trivial job", result("")),
                            ("100-line stdout", result("".join(f"step {n}: ok\n" for n in range(100))))):
        emitted, pyyaml = (per_result_us(dump, document, args.results) for dump in (dump_yaml, _dump_pyyaml))
        print(f"{label}: dump_yaml {emitted:.1f} us, PyYAML (libyaml) {pyyaml:.1f} us per result")


if __name__ == "__main__":
    main()
