"""Per-job resources on the submitter side and in the runner's ledger, GPU detection on the
embedded backend, and the srun/sbatch calls: pure functions with plain strings, and the
runner as its own process on the local scheduler (the same code runs inside Slurm in
test_slurm_steps.py)."""
from __future__ import annotations

import json
import os
import signal

import pytest
from dropbox_runner.on_hpc.files import read_json, write_json
from dropbox_runner.on_hpc.gpus import NoGpus, local_gpus, proc_gpus, smi_gpus
from dropbox_runner.on_hpc.headnode import node_use
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.resources import (
    Ledger,
    Node,
    Request,
    gres_gpus,
    job_request,
    memory_mb,
    never_fits,
    parse_cpus_per_node,
)
from dropbox_runner.on_hpc.runner import STEP_ID_FILE, _step_id
from dropbox_runner.on_hpc.sched_slurm import allocation_layout, sbatch_argv, srun_argv
from helpers import drain, drop, make_config
from test_runner_limits import finish, finish_with_claims, stage, start_runner

from dropbox_runner.config import ConfigError


# ------------------------------------------------------------------ figures and the ledger
@pytest.mark.parametrize("text, mb", [("500M", 500), ("4G", 4096), ("1.5g", 1536), (2000, 2000),
                                      ("2000", 2000), ("1T", 1 << 20), ("512K", 0), (None, None)])
def test_memory_is_read_as_slurm_reads_it(text, mb):
    assert memory_mb(text) == mb


@pytest.mark.parametrize("text", ["lots", "-1G", "4 GB please", True])
def test_memory_that_is_not_a_size_is_an_error(text):
    with pytest.raises(ValueError):
        memory_mb(text)


@pytest.mark.parametrize("gres, count", [("gpu:2", 2), ("gpu:a100:4", 4), ("gpu", 1), ("", 0), (None, 0),
                                         ("tmpdisk:100,gpu:v100:1", 1), ("shard:8", 0)])
def test_gpus_per_node_from_gres(gres, count):
    assert gres_gpus(gres) == count


@pytest.mark.parametrize("text, counts", [("4", [4]), ("2(x3)", [2, 2, 2]), ("4,2(x2)", [4, 2, 2]),
                                          ("", []), ("garbage", [])])
def test_cpus_per_node_as_slurm_writes_them(text, counts):
    assert parse_cpus_per_node(text) == counts


def test_a_job_asking_nothing_gets_one_slot_of_a_node():
    resources = {"cpus": 8, "memory": "16G", "gres": "gpu:2", "slots": 2}
    assert job_request({}, resources) == Request(4, 8192, 1)
    assert job_request({}, {"slots": 4}) == Request(1, 0, 0)                 # CPUs counted in slots
    assert job_request({"cpus": 3, "memory_mb": 100, "gpus": 0}, resources) == Request(3, 100, 0)
    assert job_request({}, {"slots": 4}, gpus_per_node=2) == Request(1, 0, 1)   # never more jobs than GPUs


def test_the_ledger_packs_jobs_by_what_they_need():
    ledger = Ledger([Node("a", 4, 1000, ["0", "1"])])
    big = ledger.place(Request(3, 500, 1))
    assert big == ("a", ["0"])
    assert ledger.place(Request(2, 100, 0)) is None           # 1 CPU left
    small = ledger.place(Request(1, 500, 1))
    assert small == ("a", ["1"])
    assert ledger.place(Request(0, 1, 0)) is None             # memory all booked
    ledger.release(Request(3, 500, 1), big)
    assert ledger.place(Request(2, 400, 1)) == ("a", ["0"])
    assert ledger.describe() == [{"node": "a", "jobs": 2, "cpus": [3, 4], "memory_mb": [900, 1000],
                                  "gpus": [2, 2]}]


def test_the_ledger_fills_every_node_and_knows_what_can_never_fit():
    ledger = Ledger([Node("n1", 2, None, []), Node("n2", 2, None, [])])
    placed = [ledger.place(Request(2, 10 ** 6, 0)) for _ in range(3)]
    assert [p and p.node for p in placed] == ["n1", "n2", None]   # memory not counted
    assert ledger.full() and not ledger.fits_anywhere(Request(3, 0, 0))
    assert not ledger.fits_anywhere(Request(1, 0, 1))


def test_never_fits_gives_the_figures():
    resources = {"cpus": 4, "memory": "8G", "gres": "gpu:1"}
    assert never_fits(Request(4, 8192, 1), resources, "gpu", 1) == []
    assert never_fits(Request(5, 9000, 2), resources, "gpu", 1) == [
        "cpus 5 exceeds the 4 CPU(s) a node of class gpu holds",
        "memory 9000M exceeds the 8192M a node of class gpu holds",
        "gpus 2 exceeds the 1 GPU(s) a node of class gpu holds"]
    assert never_fits(Request(1, 0, 3), {}, "local", None) == []       # GPUs found by the runner


# ------------------------------------------------------------------ GPUs on the embedded backend
SMI = ("GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1b)\n"
       "GPU 1: NVIDIA H100 80GB HBM3 (UUID: GPU-77c0)\n")


def test_gpus_come_from_cuda_visible_devices_then_the_class_then_the_machine(tmp_path):
    none = tmp_path / "none"
    assert local_gpus(None, True, {"CUDA_VISIBLE_DEVICES": "2,3"}, none, lambda: SMI) == ["2", "3"]
    assert local_gpus(["0", "1"], True, {}, none, lambda: "") == ["0", "1"]
    assert local_gpus("none", True, {"CUDA_VISIBLE_DEVICES": "0"}, none, lambda: SMI) == []
    assert local_gpus(None, True, {}, none, lambda: SMI) == ["0", "1"]
    proc = tmp_path / "gpus"
    for address in ("0000:c1:00.0", "0000:41:00.0"):
        (proc / address).mkdir(parents=True)
    assert local_gpus(None, True, {}, proc, lambda: "") == ["0", "1"]
    # A class that needs none finds none unless CUDA_VISIBLE_DEVICES names some (as before).
    assert local_gpus(None, False, {}, proc, lambda: SMI) == []
    assert local_gpus(None, False, {"CUDA_VISIBLE_DEVICES": "0,1"}, none, lambda: "") == ["0", "1"]


@pytest.mark.parametrize("environ", [{}, {"CUDA_VISIBLE_DEVICES": ""}, {"CUDA_VISIBLE_DEVICES": "-1"}])
def test_a_gpu_class_with_no_gpu_to_be_found_is_an_error(tmp_path, environ):
    with pytest.raises(NoGpus, match="gpus: \\[0, 1\\]"):
        local_gpus(None, True, environ, tmp_path / "none", lambda: "")


def test_nvidia_smi_and_proc_parsing(tmp_path):
    assert smi_gpus(lambda: SMI) == ["0", "1"]
    assert smi_gpus(lambda: "No devices were found\n") == []
    assert smi_gpus(lambda: "") == []
    assert proc_gpus(str(tmp_path / "absent")) == []


def test_a_local_gpu_class_binds_each_job_to_its_own_gpu_when_none_is_named(store_root, monkeypatch):
    """The machine of the issue: one GPU, CUDA_VISIBLE_DEVICES unset, a GPU class with 4
    slots.  Jobs now run one at a time, each with the GPU."""
    store = store_root
    fake_bin = os.path.join(store.root, "bin")
    os.makedirs(fake_bin)
    with open(os.path.join(fake_bin, "nvidia-smi"), "w") as handle:
        handle.write("#!/bin/sh\necho 'GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5a1b)'\n")
    os.chmod(os.path.join(fake_bin, "nvidia-smi"), 0o755)
    env = {"PATH": fake_bin + ":" + os.environ["PATH"]}
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    jobs = [stage(store, "sub.g%d" % n, 'echo "$CUDA_VISIBLE_DEVICES $(date +%s.%N)" > gpus; sleep 0.5; '
                  'echo "$(date +%s.%N)" >> gpus') for n in range(3)]
    log = finish(start_runner(store, env=env, slots=4, resources={"gres": "gpu:1"}))
    assert "gpus 0;" in log
    spans = []
    for job in jobs:
        first, end = open(os.path.join(store.job_dir(job), "gpus")).read().split("\n")[:2]
        gpu, start = first.split()
        assert gpu == "0"
        spans.append((float(start), float(end)))
    spans.sort()
    assert all(spans[n][1] <= spans[n + 1][0] for n in range(len(spans) - 1))    # one at a time


def test_a_local_gpu_class_that_finds_no_gpu_does_not_start(store_root, monkeypatch):
    store = store_root
    job = stage(store, "sub.g", "true")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    runner = start_runner(store, env={"PATH": "/usr/bin:/bin"}, slots=2,
                          resources={"gres": "gpu:1"})
    log = finish(runner)
    assert runner.returncode == 2
    assert "cannot start: this class needs GPUs but none was found" in log
    assert store.ready_jobs("default") == [job]                     # the job waits
    from dropbox_runner.on_hpc.headnode import start_errors
    [error] = start_errors(store)
    assert "gpus: none" in error and start_errors(store) == []     # told once


@pytest.fixture
def store_root(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    return store


# ------------------------------------------------------------------ the runner packs by resources
def test_the_runner_packs_jobs_by_cpus_not_by_slots(store_root):
    store = store_root
    script = 'date +%s.%N > span; sleep 1; date +%s.%N >> span'
    big = stage(store, "sub.big", script)
    small = [stage(store, "sub.s%d" % n, script) for n in range(2)]
    for job, cpus in [(big, 3)] + [(job, 1) for job in small]:
        meta_path = os.path.join(store.job_dir(job), "job.json")
        write_json(meta_path, dict(read_json(meta_path), cpus=cpus))
    os.utime(os.path.join(store.ready_dir("default"), big), (1, 1))         # first in line
    log, claimed = finish_with_claims(store, start_runner(store, slots=1, resources={"cpus": 4}))
    spans = {job: [float(x) for x in open(os.path.join(store.job_dir(job), "span")).read().split()]
             for job in [big] + small}
    # 3 + 1 CPUs at once; the second 1-CPU job waited for a CPU.
    overlapping = [job for job in small if spans[job][0] < spans[big][1]]
    assert len(overlapping) == 1, (spans, log)
    claims = [claimed[job] for job in [big] + small]
    assert [c["request"]["cpus"] for c in claims] == [3, 1, 1]


def test_a_job_bigger_than_the_allocation_is_refused_by_the_runner(store_root):
    store = store_root
    job = stage(store, "sub.huge", "true")
    meta_path = os.path.join(store.job_dir(job), "job.json")
    write_json(meta_path, dict(read_json(meta_path), cpus=16, memory_mb=10))
    log = finish(start_runner(store, slots=1, resources={"cpus": 4}))
    record = read_json(store.finished_path(job))
    assert record["rc"] == -1 and "asks for 16 CPU(s), 10M memory and 0 GPU(s)" in record["error"], log


def test_status_shows_what_each_node_holds(store_root):
    store = store_root
    write_json(os.path.join(store.runners_dir(), "r1.alive.json"), {"nodes": [
        {"node": "n1", "jobs": 0, "cpus": [0, 4], "memory_mb": [0, 1000], "gpus": [0, 2]},
        {"node": "n2", "jobs": 0, "cpus": [0, 4], "memory_mb": [0, 1000], "gpus": [0, 2]}]})
    job = stage(store, "sub.a", "true")
    assert store.claim("default", job, "r1")
    with open(store.claims_path("r1"), "w") as journal:
        journal.write(json.dumps({"job": job, "runner": "r1", "node": "n2",
                                  "request": {"cpus": 3, "memory_mb": 200, "gpus": 1}}) + "\n")
    assert node_use(store, "r1") == [
        {"node": "n1", "jobs": 0, "cpus": [0, 4], "memory_mb": [0, 1000], "gpus": [0, 2]},
        {"node": "n2", "jobs": 1, "cpus": [3, 4], "memory_mb": [200, 1000], "gpus": [1, 2]}]


# ------------------------------------------------------------------ srun and sbatch
@pytest.mark.parametrize("text, expected", [("4242.7\n", "4242.7"), ("999.0", None), ("4242.", None),
                                            ("4242.x", None), ("", None), ("4242.7 ; scancel 1", None)])
def test_a_step_id_is_taken_only_when_it_is_of_this_allocation(tmp_path, text, expected):
    (tmp_path / STEP_ID_FILE).write_text(text)
    assert _step_id(str(tmp_path), "4242") == expected
    assert _step_id(str(tmp_path / "absent"), "4242") is None


def test_a_job_step_asks_for_exactly_what_the_job_asked_for():
    argv = srun_argv(["/bin/bash", "job.sh"], "sub.x.1a2b", Request(2, 512, 1), "node7", "step.id")
    assert argv[:argv.index("/bin/sh")] == [
        "srun", "--exact", "--nodes=1", "--ntasks=1", "--cpus-per-task=2", "--nodelist=node7",
        "--job-name=sub.x.1a2b", "--quiet", "--gres=gpu:1", "--mem=512M"]
    assert argv[-2:] == ["/bin/bash", "job.sh"]
    cpu_only = srun_argv(["job.sh"], "j", Request(1, 0, 0), "n", "step.id")
    assert "--gres=none" in cpu_only and not [a for a in cpu_only if a.startswith("--mem")]


def test_sbatch_for_nodes_and_for_steps():
    flags = sbatch_argv("n", "log", "/w", {"nodes": 2, "cpus": 4, "memory": "8G", "gres": "gpu:2"}, ["x"])
    start = flags.index("--nodes=2")
    assert flags[start:start + 3] == ["--nodes=2", "--ntasks-per-node=1", "--cpus-per-task=4"]
    # Steps need their CPUs in the allocation: one per slot when the class names none.
    assert "--cpus-per-task=3" in sbatch_argv("n", "log", "/w", {"slots": 3}, ["x"])
    assert not [a for a in sbatch_argv("n", "log", "/w", {"slots": 3, "launch": "process"}, ["x"])
                if a.startswith("--cpus-per-task")]


def test_the_allocation_layout_from_slurm_environment():
    environ = {"SLURMD_NODENAME": "c1", "SLURM_JOB_NODELIST": "c[1-2]", "SLURM_JOB_CPUS_PER_NODE": "8(x2)",
               "SLURM_MEM_PER_NODE": "16000", "SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}
    nodes = allocation_layout(environ, {"gres": "gpu:2", "nodes": 2}, lambda listed: ["c1", "c2"])
    assert [(n.name, n.cpus, n.memory_mb, n.gpus) for n in nodes] == [
        ("c1", 8, 16000, ["0", "1"]), ("c2", 8, 16000, ["0", "1"])]
    plain = allocation_layout(environ, {"gres": "gpu:2", "launch": "process", "slots": 2}, lambda listed: None)
    assert [(n.name, n.cpus, n.gpus) for n in plain] == [("c1", 2, ["0", "1"])]   # the batch node only


# ------------------------------------------------------------------ intake and config
def test_a_job_that_can_never_fit_its_class_is_refused_at_intake_with_the_figures(config_factory):
    config = config_factory(classes={
        "default": {"cpus": 4, "memory": "1G", "slots": 2, "idle_timeout": 2},
        "gpu": {"gpus": ["0"], "slots": 1, "idle_timeout": 2}})
    out = config.dropbox.parent / "outputs"
    base = {"script": "no_output", "args": {"out": "x"}}
    drop(config, "big.job", dict(base, cpus=8, memory="2G"))
    drop(config, "greedy.job", dict(base, gpus=2, **{"class": "gpu"}))
    drop(config, "bad.job", dict(base, cpus=0, memory="lots", gpus="two"))
    drop(config, "odd.job", dict(base, cpus="²", memory="0", gpus=-1))
    drop(config, "fits.job", dict(base, cpus=4, memory="1G", output_map={"o": str(out / "o")}))
    results = drain(config, ["big.job", "greedy.job", "bad.job", "odd.job", "fits.job"], timeout=60)
    big = results["big.job"]["job"]["message"]
    assert "cpus 8 exceeds the 4 CPU(s) a node of class default holds" in big
    assert "memory 2048M exceeds the 1024M a node of class default holds" in big
    assert "gpus 2 exceeds the 1 GPU(s) a node of class gpu holds" in results["greedy.job"]["job"]["message"]
    bad = results["bad.job"]["job"]["message"]
    assert "cpus: must be a whole number of at least 1" in bad and "memory: 'lots' is not a memory size" in bad
    assert "gpus: must be a whole number of at least 0" in bad
    odd = results["odd.job"]["job"]["message"]
    assert "cpus: must be a whole number of at least 1, got '²'" in odd and "memory: must be at least 1M" in odd
    assert "gpus: must be a whole number of at least 0, got -1" in odd
    # The one that fits ran (and failed on its own terms: the template writes no output).
    fits = results["fits.job"]["job"]
    assert fits["rc"] == 0 and fits["provenance"]["resources"] == {"cpus": 4, "memory_mb": 1024, "gpus": 0}


def test_a_template_header_asks_for_resources_a_job_may_override(config_factory, tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "wide.template").write_text("#!/bin/bash\n# dropbox-runner: cpus=3 memory=2G gpus=0\n"
                                             "echo hi > <<workspace>>/output/<<out>>\n")
    config = config_factory(templates=str(templates), classes={"default": {"cpus": 4, "slots": 4}})
    out = config.dropbox.parent / "outputs"
    drop(config, "a.job", {"script": "wide", "output_map": {"out": str(out / "a")}, "cache": False})
    drop(config, "b.job", {"script": "wide", "output_map": {"out": str(out / "b")}, "cpus": 1, "memory": "1G",
                           "cache": False})
    results = drain(config, ["a.job", "b.job"], timeout=60)
    assert results["a.job"]["job"]["provenance"]["resources"] == {"cpus": 3, "memory_mb": 2048, "gpus": 0}
    assert results["b.job"]["job"]["provenance"]["resources"] == {"cpus": 1, "memory_mb": 1024, "gpus": 0}


@pytest.mark.parametrize("classes, scheduler, expected", [
    ({"default": {"launch": "thread"}}, "slurm", "launch: 'thread' is not one of step, process"),
    ({"default": {"launch": "step"}}, "local", "launch: step needs scheduler: slurm"),
    ({"default": {"nodes": 2}}, "local", "nodes: more than one node needs scheduler: slurm"),
    ({"default": {"nodes": 0}}, "slurm", "nodes: must be at least 1"),
    ({"default": {"gpus": "some"}}, "local", "expected a GPU count, a list of GPU ids like [0, 1], none or auto"),
    ({"default": {"gpus": [0, 1]}}, "slurm", "gpus: a list of GPU ids is for scheduler: local"),
    ({"default": {"gpus": ["0,1"]}}, "local", "expected a GPU count, a list of GPU ids"),
    ({"default": {"memory": "plenty"}}, "slurm", "memory: 'plenty' is not a memory size"),
])
def test_resource_settings_are_checked_when_the_config_loads(tmp_path, classes, scheduler, expected):
    with pytest.raises(ConfigError) as error:
        make_config(tmp_path, classes=classes, scheduler=scheduler)
    assert expected in str(error.value)


def test_gpu_lists_and_none_in_the_config(tmp_path):
    config = make_config(tmp_path, classes={"default": {"gpus": [0, 1]}, "cpu": {"gpus": "none"},
                                            "found": {"gpus": "auto"}, "mig": {"gpus": ["MIG-5a1b-77c0"]}})
    assert config.classes["default"].gpus == ["0", "1"] and config.classes["mig"].gpus == ["MIG-5a1b-77c0"]
    assert config.classes["cpu"].gpus == "none" and config.classes["found"].gpus is None
    counted = make_config(tmp_path, scheduler="slurm", classes={"default": {"gpus": 2}})
    assert "--gres=gpu:2" in sbatch_argv("n", "log", "/w", counted.classes["default"].to_request(), ["x"])


def test_a_multi_node_runner_counts_slots_on_every_node(tmp_path):
    """Eight ready jobs fit one pending 2-node runner of 4 slots a node: no second runner."""
    from test_ensure_runners import FakeScheduler, cycle
    from test_ensure_runners import stage as stage_job

    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    sched = FakeScheduler(store)
    jobs = [stage_job(store, "sub.j%d" % n) for n in range(8)]
    wide = {"default": {"slots": 4, "nodes": 2, "max_runners": 3}}
    cycle(store, sched, jobs, classes=wide)
    cycle(store, sched, jobs, classes=wide)
    assert len(sched.submitted) == 1
    jobs.append(stage_job(store, "sub.extra"))
    cycle(store, sched, jobs, classes=wide)
    assert len(sched.submitted) == 2                     # the ninth is beyond both nodes' slots


@pytest.mark.parametrize("scheduler, settings, known", [
    ("slurm", {"gres": "gpu:a100:2"}, 2), ("slurm", {}, 0), ("slurm", {"gpus": 3}, 3),
    ("slurm", {"gpus": 3, "gres": "gpu:1"}, 1), ("sge", {"gpus": 2}, 2), ("local", {}, None),
    ("local", {"gpus": "none"}, 0), ("local", {"gpus": ["0", "1"]}, 2), ("local", {"gres": "gpu:1"}, 1)])
def test_the_gpus_intake_judges_a_class_by(tmp_path, scheduler, settings, known):
    from dropbox_runner.staging import known_gpus
    config = make_config(tmp_path, scheduler=scheduler, classes={"default": {}})
    assert known_gpus(config, settings) == known


def test_a_job_too_long_for_the_time_left_books_nothing(store_root):
    """A ready job that no longer fits the runner's time left is passed over on every
    wake; the job behind it, which fits, still starts beside the one running."""
    import time

    from helpers import wait_until
    store = store_root
    running = stage(store, "sub.a", "sleep 8")
    runner = start_runner(store, slots=2, time_limit=20, warn_seconds=2, resources={"cpus": 2})
    claim = wait_until(lambda: store.claim_of(running), 15, what="sub.a to start")
    time.sleep(1.5)                                           # the runner now has < 18 s left
    too_long = stage(store, "sub.c", "true", expected=18)
    short = stage(store, "sub.d", "true")
    os.utime(os.path.join(store.ready_dir("default"), short), (time.time() + 60,) * 2)   # after sub.c
    try:
        wait_until(lambda: os.path.exists(store.finished_path(short)), 5, what="sub.d to run beside sub.a")
        assert not os.path.exists(store.finished_path(running))   # it ran beside the long one
        assert store.ready_jobs("default") == [too_long]
    finally:
        runner.kill()
        runner.wait()
        os.killpg(claim["pgid"], signal.SIGKILL)


@pytest.mark.parametrize("stderr, killed", [
    (b"started\nsrun: error: dbrnode: task 0: Out Of Memory\n", True),
    (b"slurmstepd: error: Detected 1 oom-kill event(s)\nsrun: error: node7: task 0: Out Of Memory\n", True),
    (b"my tool: Out Of Memory while decoding\n", False),
    (b"", False)])
def test_a_step_killed_for_its_memory_is_told_by_srun_s_own_line(tmp_path, stderr, killed):
    from dropbox_runner.on_hpc.runner import _out_of_memory
    (tmp_path / "stderr").write_bytes(stderr)
    assert _out_of_memory(str(tmp_path / "stderr")) is killed
    assert _out_of_memory(str(tmp_path / "absent")) is False
