"""`dropbox-runner check` with `scheduler: sge`, against the real sshd and Grid Engine cell:
a good set-up passes, and a class naming what the cell does not have is found, with a fix."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from sshsetup import new_scratch, write_config

from dropbox_runner.check import format_checks, run_checks

TEMPLATES = Path(__file__).parent / "templates"
GOOD = {"default": {"queue": "all.q", "slots": 2},
        "gpu": {"queue": "gpu.q", "pe": "smp", "cpus": 2, "gpus": 2, "memory": "2G"}}


@pytest.fixture
def setup(tmp_path, sge_sshd, sge_cluster):
    scratch = new_scratch(sge_sshd)
    templates = tmp_path / "templates"
    shutil.copytree(TEMPLATES, templates)

    def variant(**settings) -> Path:
        values = dict(scheduler="sge", templates=str(templates), classes=GOOD)
        values.update(settings)
        return write_config(tmp_path, sge_sshd, scratch, **values)

    yield variant
    shutil.rmtree(scratch, ignore_errors=True)


def _failed(results) -> dict[str, str]:
    return {result.name: f"{result.detail} | fix: {result.fix}" for result in results if not result.ok}


def test_a_good_grid_engine_setup_passes(setup):
    results = run_checks(setup())
    assert _failed(results) == {}, format_checks(results)
    names = {result.name for result in results}
    assert {"login", "workspace", "qstat", "class default", "class gpu"} <= names, names


@pytest.mark.parametrize("change, field, found", [
    ({"queue": "nosuch.q"}, "queue", "no queue 'nosuch.q' (qconf lists all.q, gpu.q)"),
    ({"pe": "mpi"}, "pe", "no parallel environment 'mpi' (qconf lists smp)"),
    ({"gpu_resource": "cuda"}, "gpu_resource", "no GPU complex 'cuda'"),
    ({"memory_resource": "m_mem_free"}, "memory_resource", "no memory complex 'm_mem_free'"),
])
def test_a_class_naming_what_the_cell_lacks_is_found(setup, change, field, found):
    results = run_checks(setup(classes={**GOOD, "gpu": {**GOOD["gpu"], **change}}))
    failed = _failed(results)
    assert set(failed) == {"class gpu"}, format_checks(results)
    assert found in failed["class gpu"] and f"set classes.gpu.{field}" in failed["class gpu"]


def test_grid_engine_that_does_not_answer_is_found(setup):
    # The account's sessions reach the cell through SGE_QMASTER_PORT: this python points
    # it at a port where no qmaster listens.
    folder = Path(tempfile.mkdtemp(prefix="dbr-python-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        python = folder / "python3"
        python.write_text('#!/bin/sh\nSGE_QMASTER_PORT=1 exec /usr/bin/python3 "$@"\n')
        python.chmod(0o755)
        results = run_checks(setup(python=str(python)))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    failed = _failed(results)
    assert set(failed) == {"qstat"}, format_checks(results)
    assert "SGE_ROOT" in failed["qstat"]
