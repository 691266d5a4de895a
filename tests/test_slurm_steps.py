"""Jobs as Slurm job steps, against a real Slurm that enforces them.

The cluster of this module confines each step with cgroups (proctrack/cgroup, task/cgroup
with ConstrainCores and ConstrainRAMSpace, task/affinity) on the machine's real CPUs, so
what a job asked for is what it gets, as on a production cluster.  A second cluster with
two slurmd on this machine (two node names, two ports) shows a 2-node runner.  These tests
never skip: a cluster that cannot start fails them.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import realcluster
from helpers import wait_until
from test_slurm_runners import Pipeline, _kill_jobs_of

from dropbox_runner.status import format_status, gather_status
from dropbox_runner.transport.local import LocalTransport
from dropbox_runner.verbs import request_cancel

pytestmark = pytest.mark.cluster    # starts its own daemons (not the shared fixtures)


def _cluster(**options):
    slurm = realcluster.start_slurm(**options)
    try:
        yield slurm
    finally:
        slurm.stop()
        if not os.environ.get("DBR_KEEP_TEST_CLUSTER"):
            shutil.rmtree(slurm.root, ignore_errors=True)


@pytest.fixture(scope="module")
def cgroup_cluster():
    """One node with the machine's own CPUs, two fake GPUs, cgroups enforcing each step."""
    yield from _cluster(cgroup=True)


@pytest.fixture(scope="module")
def two_nodes():
    """Two slurmd on this machine, dbrnode and dbrnode2, two CPUs each."""
    yield from _cluster(nodes=2, cpus=2, gpus=0)


def _pipelines(tmp_path, monkeypatch, slurm):
    monkeypatch.setenv("SLURM_CONF", str(slurm.conf))
    made = []

    def make(classes: dict, **settings) -> Pipeline:
        made.append(Pipeline(tmp_path / f"p{len(made)}", classes, **settings))
        return made[-1]

    yield make
    slurm.run("scancel", "-u", "root")
    slurm.wait_idle(60)
    for p in made:
        _kill_jobs_of(p.config.submitter_id)


@pytest.fixture
def pipeline(tmp_path, monkeypatch, cgroup_cluster):
    yield from _pipelines(tmp_path, monkeypatch, cgroup_cluster)


@pytest.fixture
def pipeline2(tmp_path, monkeypatch, two_nodes):
    yield from _pipelines(tmp_path, monkeypatch, two_nodes)


def _probe(p: Pipeline, output: str, path: Path | None = None) -> dict[str, str]:
    """What the probe template wrote: at its destination, or (``path``: the job, while it
    runs) in its folder on the cluster side."""
    where = p.root / "out" / output if path is None else p.workspace / "jobs" / p.job_id(path) / "output" / output
    return dict(line.split("=", 1) for line in where.read_text().splitlines())


def _probed(p: Pipeline, path: Path, output: str) -> bool:
    try:
        return (p.workspace / "jobs" / p.job_id(path) / "output" / output).exists()
    except (OSError, ValueError, KeyError):
        return False


def _cpus(affinity: str) -> set[int]:
    cpus = set()
    for part in affinity.split(","):
        low, _, high = part.partition("-")
        cpus.update(range(int(low), int(high or low) + 1))
    return cpus


def _overlap(a: dict, b: dict) -> bool:
    """Ran at the same time, as far as the results' whole-second times can tell."""
    return a["start"] <= b["end"] and b["start"] <= a["end"]


GPU_CLASS = {"cpus": 2, "memory": "1000M", "gres": "gpu:2", "slots": 2, "idle_timeout": 3}


def test_jobs_run_as_steps_with_the_cpus_and_gpus_they_asked_for(pipeline, cgroup_cluster):
    p = pipeline({"gpu": GPU_CLASS}, default_class="gpu")
    wide = p.drop("probe", "wide", args={"seconds": 1}, cpus=2, gpus=0)
    narrow = [p.drop("probe", f"n{n}", args={"seconds": 4}, cpus=1, gpus=1, memory="200M") for n in range(2)]
    p.run_all([wide, *narrow], timeout=120)
    blocks = {path.name: p.result(path)["job"] for path in (wide, *narrow)}
    assert [b["status"] for b in blocks.values()] == ["ok"] * 3, p.diagnostics()
    probes = {"wide": _probe(p, "wide"), "n0": _probe(p, "n0"), "n1": _probe(p, "n1")}
    # The 2-CPU job had both CPUs; each 1-CPU job one, not its neighbour's, while they overlapped.
    assert len(_cpus(probes["wide"]["affinity"])) == 2
    first, second = (blocks[path.name] for path in narrow)
    assert _overlap(first, second), "the two 1-CPU jobs should have run at once"
    assert [len(_cpus(probes[n]["affinity"])) for n in ("n0", "n1")] == [1, 1]
    assert _cpus(probes["n0"]["affinity"]).isdisjoint(_cpus(probes["n1"]["affinity"]))
    # One GPU each, each a different one; the job that asked for none saw none.
    assert sorted(probes[n]["cuda"] for n in ("n0", "n1")) == ["0", "1"]
    assert probes["wide"]["cuda"] == ""
    # Each ran as its own step of the one runner allocation; the step is in the provenance.
    steps = [probes[n]["step"] for n in ("wide", "n0", "n1")]
    assert len(set(steps)) == 3 and len({s.split(".")[0] for s in steps}) == 1
    for path, output in zip((wide, *narrow), ("wide", "n0", "n1")):
        block = blocks[path.name]
        assert block["scheduler_step_id"] == probes[output]["step"]
        assert block["provenance"]["scheduler_step_id"] == probes[output]["step"]
        assert block["provenance"]["node"] == cgroup_cluster.node
    assert blocks[wide.name]["provenance"]["resources"] == {"cpus": 2, "memory_mb": 500, "gpus": 0}


def test_a_step_is_named_after_its_job(pipeline, cgroup_cluster):
    p = pipeline({"default": {"cpus": 1, "slots": 1, "idle_timeout": 3}})
    path = p.drop("probe", "named", args={"seconds": 60})
    p.run_until(lambda: (p.root / "out").exists() and p.started(path), 60, "the job started")
    job_id = p.job_id(path)
    names = wait_until(lambda: job_id in cgroup_cluster.run("squeue", "-s", "-h", "-o", "%j").stdout.split()
                       and cgroup_cluster.run("squeue", "-s", "-h", "-o", "%j").stdout.split(),
                       timeout=30, what="squeue -s to list the job's step")
    assert job_id in names


def test_a_job_over_its_memory_is_killed_alone(pipeline, cgroup_cluster):
    p = pipeline({"default": {"cpus": 2, "memory": "1000M", "slots": 2, "idle_timeout": 3}})
    neighbour = p.drop("probe", "calm", args={"seconds": 5}, cpus=1, memory="100M")
    hog = p.drop("hog", "hog", args={"megabytes": 600}, cpus=1, memory="100M")
    p.run_all([neighbour, hog], timeout=120)
    calm, greedy = p.result(neighbour)["job"], p.result(hog)["job"]
    assert calm["status"] == "ok", p.diagnostics()
    assert greedy["status"] == "error"
    assert "Out Of Memory" in greedy["stderr"], greedy
    assert greedy["message"] == "killed by Slurm for using more than the 100M memory it asked for (srun: Out Of Memory)"
    assert not (p.root / "out" / "hog").exists()
    assert _overlap(calm, greedy)
    # The same job with the memory it needs runs.
    enough = p.drop("hog", "fed", args={"megabytes": 200}, cpus=1, memory="500M")
    p.run_all([enough], timeout=120)
    assert p.result(enough)["job"]["status"] == "ok", p.result(enough)["job"]


def test_cancel_of_a_running_job_ends_its_step(pipeline, cgroup_cluster):
    p = pipeline({"default": {"cpus": 2, "slots": 2, "idle_timeout": 3}})
    path = p.drop("probe", "doomed", args={"seconds": 300}, cpus=1)
    p.run_until(lambda: _probed(p, path, "doomed"), 60, "the job started")
    probe = _probe(p, "doomed", path)
    step = probe["step"]
    assert step in cgroup_cluster.run("squeue", "-s", "-h", "-o", "%i").stdout.split()
    request_cancel(p.config, [path.name])
    p.run_all([path], timeout=60)
    block = p.result(path)["job"]
    assert block["status"] == "error" and block["message"] == "cancelled"
    wait_until(lambda: step not in cgroup_cluster.run("squeue", "-s", "-h", "-o", "%i").stdout.split(),
               timeout=30, what=f"step {step} to end")
    wait_until(lambda: not Path(f"/proc/{probe['pid']}").exists(), timeout=30, what="the job's process to end")


def test_plain_processes_stay_a_class_option(pipeline, cgroup_cluster):
    p = pipeline({"default": {"cpus": 2, "slots": 2, "idle_timeout": 3, "launch": "process"}})
    path = p.drop("probe", "plain", args={"seconds": 0})
    p.run_all([path], timeout=90)
    block = p.result(path)["job"]
    assert block["status"] == "ok"
    probe = _probe(p, "plain")
    assert probe["step"].endswith(".") or probe["step"].endswith(".batch")   # the batch step's
    assert "scheduler_step_id" not in block


def test_a_2_node_runner_places_jobs_on_both_nodes(pipeline2, two_nodes):
    p = pipeline2({"wide": {"nodes": 2, "cpus": 2, "slots": 2, "idle_timeout": 3}}, default_class="wide")
    paths = [p.drop("probe", f"j{n}", args={"seconds": 6}, cpus=2) for n in range(2)]
    p.run_until(lambda: all(_probed(p, path, f"j{n}") for n, path in enumerate(paths)), 90, "both jobs started")
    status = format_status(gather_status(p.config, LocalTransport()))
    p.run_all(paths, timeout=90)
    blocks = [p.result(path)["job"] for path in paths]
    assert [b["status"] for b in blocks] == ["ok", "ok"], p.diagnostics()
    assert blocks[0]["runner"] == blocks[1]["runner"] and _overlap(*blocks)
    nodes = sorted(_probe(p, f"j{n}")["node"] for n in range(2))
    assert nodes == ["dbrnode", "dbrnode2"]
    assert sorted(b["provenance"]["node"] for b in blocks) == nodes
    # Status shows what each node of the runner holds.
    assert "dbrnode 1 job(s), cpus 2/2" in status and "dbrnode2 1 job(s), cpus 2/2" in status, status
    # One allocation of both nodes: its runner saw them at its start.
    [log] = p.runner_logs().values()
    assert "dbrnode: 2 cpu" in log and "dbrnode2: 2 cpu" in log, log


def test_the_walltime_warning_ends_the_running_steps_and_requeues_their_jobs(pipeline, cgroup_cluster):
    p = pipeline({"default": {"cpus": 2, "slots": 2, "idle_timeout": 3, "time_limit": "10m"}})
    path = p.drop("probe", "warned", args={"seconds": 300}, cpus=1)
    p.run_until(lambda: _probed(p, path, "warned"), 60, "the job started")
    probe = _probe(p, "warned", path)
    runner_job = p.claim(p.job_id(path))["sched_id"]
    # What Slurm does warn_seconds before the limit (--signal=B:USR1@...), now.
    cgroup_cluster.run("scancel", "--batch", "--signal=USR1", runner_job, check=True)
    wait_until(lambda: probe["step"] not in cgroup_cluster.run("squeue", "-s", "-h", "-o", "%i").stdout.split(),
               timeout=30, what=f"step {probe['step']} to end")
    wait_until(lambda: not Path(f"/proc/{probe['pid']}").exists(), timeout=30, what="the job's process to end")
    interruptions = p.workspace / "jobs" / p.job_id(path) / "interruptions.json"
    wait_until(interruptions.exists, timeout=30, what="the job to be handed back")
    assert "USR1" in interruptions.read_text()
