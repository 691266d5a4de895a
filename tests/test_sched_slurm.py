"""The Slurm dialect with plain strings: argv builders, output parsers, the state map."""
import os
import stat

import pytest
from dropbox_runner.on_hpc import sched_slurm
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import RunnerState
from dropbox_runner.on_hpc.sched_slurm import (
    allocated_gpus,
    job_name,
    parse_sbatch,
    parse_squeue,
    parse_time_left,
    sbatch_argv,
    scancel_argv,
    slurm_minutes,
    squeue_argv,
)
from dropbox_runner.on_hpc.schedulers import (
    RunnerInfo,
    SchedulerUnavailable,
    SubmitFailed,
    effective_warn_seconds,
    store_tag,
    usable_seconds,
)

COMMAND = ["env", "PYTHONPATH=/home/me/on hpc", "python3", "-m", "on_hpc", "run", "/w/runners/r.json"]


# -- sbatch ------------------------------------------------------------------------------
def test_sbatch_argv_carries_every_class_setting():
    resources = {"partition": "gpu", "gres": "gpu:a100:2", "cpus": 8, "memory": "32G",
                 "time_limit": 7200, "warn_seconds": 120, "extra_args": ["--account=lab", "--qos=high"]}
    argv = sbatch_argv("dbr.abc123.gpu-1", "/w/runners/gpu-1.log", "/w", resources, COMMAND)
    assert argv[:2] == ["sbatch", "--parsable"]
    assert "--job-name=dbr.abc123.gpu-1" in argv
    assert "--output=/w/runners/gpu-1.log" in argv
    assert "--open-mode=append" in argv
    assert "--chdir=/w" in argv
    assert "--no-requeue" in argv
    assert "--partition=gpu" in argv
    assert "--gres=gpu:a100:2" in argv
    assert "--cpus-per-task=8" in argv
    assert "--mem=32G" in argv
    assert "--time=120" in argv
    assert "--signal=B:USR1@120" in argv
    assert argv[-3:-1] == ["--account=lab", "--qos=high"]
    assert argv[-1] == "--wrap=exec env 'PYTHONPATH=/home/me/on hpc' python3 -m on_hpc run /w/runners/r.json"


def test_sbatch_argv_leaves_out_what_the_class_does_not_set():
    argv = sbatch_argv("n", "/l", "/w", {"time_limit": None, "warn_seconds": 60, "extra_args": []}, ["x"])
    assert [a for a in argv if a.split("=")[0] in
            ("--partition", "--gres", "--cpus-per-task", "--mem", "--time", "--signal")] == []
    assert argv[-1] == "--wrap=exec x"


@pytest.mark.parametrize("seconds, minutes", [(1, "1"), (59, "1"), (60, "1"), (61, "2"), (90, "2"),
                                              (3600, "60"), (86400 + 1, "1441")])
def test_time_limits_are_whole_minutes_rounded_up(seconds, minutes):
    assert slurm_minutes(seconds) == minutes


def test_the_warning_signal_is_at_most_half_the_limit():
    assert effective_warn_seconds(3600, 60) == 60
    assert effective_warn_seconds(60, 60) == 30           # a 1-minute runner still works 30 s
    assert effective_warn_seconds(60, 0) == 0
    assert effective_warn_seconds(None, 60) == 0
    assert usable_seconds(3600, 60) == 3540
    assert usable_seconds(60, 60) == 30
    assert usable_seconds(None, 60) is None
    argv = sbatch_argv("n", "/l", "/w", {"time_limit": 60, "warn_seconds": 60}, ["x"])
    assert "--signal=B:USR1@30" in argv and "--time=1" in argv
    argv = sbatch_argv("n", "/l", "/w", {"time_limit": 60, "warn_seconds": 0}, ["x"])
    assert not [a for a in argv if a.startswith("--signal")]


@pytest.mark.parametrize("stdout, job_id", [
    ("12345\n", "12345"),
    ("12345;cluster_a\n", "12345"),
    ("  77;c\n\n", "77"),
    ("sbatch: warning: can't honor --ntasks-per-node set to 1\n4242\n", "4242"),
])
def test_parse_sbatch(stdout, job_id):
    assert parse_sbatch(stdout) == job_id


@pytest.mark.parametrize("stdout", ["", "\n", "Submitted batch job 12\n", ";cluster\n", "abc;x\n"])
def test_parse_sbatch_refuses_output_without_a_job_id(stdout):
    with pytest.raises(ValueError):
        parse_sbatch(stdout)


# -- squeue ------------------------------------------------------------------------------
def test_squeue_is_one_call_for_this_account():
    argv = squeue_argv(user=1234)
    assert argv == ["squeue", "--noheader", "--user=1234", "--format=%i|%j|%T|%L|%r"]
    assert squeue_argv()[2] == "--user=%d" % os.getuid()


@pytest.mark.parametrize("text, seconds", [
    ("0:00", 0), ("0:59", 59), ("59:59", 3599), ("1:00:00", 3600), ("23:59:59", 86399),
    ("1-00:00:00", 86400), ("2-03:04:05", 2 * 86400 + 3 * 3600 + 4 * 60 + 5),
    ("364-23:59:58", 364 * 86400 + 86398), (" 12:34 \n", 754), ("INVALID", 0),
])
def test_parse_time_left(text, seconds):
    assert parse_time_left(text) == seconds


def test_parse_time_left_unlimited_and_unknown():
    assert parse_time_left("UNLIMITED") is None
    for text in ("NOT_SET", "", "1-00", "soon", "12"):
        with pytest.raises(ValueError):
            parse_time_left(text)


SQUEUE_OUTPUT = """\
101|dbr.abc123.default-20250101T000000-aaaaaa|RUNNING|1:58
102|dbr.abc123.gpu-20250101T000000-bbbbbb|PENDING|1-02:00:00
103|dbr.abc123.gpu-20250101T000001-cccccc|COMPLETING|0:03
104|dbr.abc123.default-20250101T000002-dddddd|PENDING|UNLIMITED
105|dbr.abc123.default-20250101T000003-eeeeee|PENDING|NOT_SET
106|dbr.abc123.default-20250101T000004-ffffff|SOME_NEW_STATE|INVALID
200|dbr.zzz999.default-20250101T000000-aaaaaa|RUNNING|5:00
201|my-own-job|RUNNING|10:00
garbage line
|||
"""


def test_parse_squeue_keeps_this_workspaces_runners_only():
    found = parse_squeue(SQUEUE_OUTPUT, "abc123", {"default-20250101T000003-eeeeee": 600})
    assert found == {
        "default-20250101T000000-aaaaaa": RunnerInfo("default-20250101T000000-aaaaaa", "101", RunnerState.RUNNING, 118),
        "gpu-20250101T000000-bbbbbb": RunnerInfo("gpu-20250101T000000-bbbbbb", "102", RunnerState.PENDING, 93600),
        "gpu-20250101T000001-cccccc": RunnerInfo("gpu-20250101T000001-cccccc", "103", RunnerState.ENDING, 3),
        "default-20250101T000002-dddddd": RunnerInfo("default-20250101T000002-dddddd", "104", RunnerState.PENDING,
                                                     None),
        # NOT_SET: the limit the runner was submitted with
        "default-20250101T000003-eeeeee": RunnerInfo("default-20250101T000003-eeeeee", "105", RunnerState.PENDING, 600),
        # an unknown state never counts as a runner taking work
        "default-20250101T000004-ffffff": RunnerInfo("default-20250101T000004-ffffff", "106", RunnerState.ENDING, 0),
    }
    assert parse_squeue("", "abc123") == {}


def test_state_map():
    states = sched_slurm.STATE_MAP
    assert {states[s] for s in ("PENDING", "CONFIGURING", "REQUEUED")} == {RunnerState.PENDING}
    assert states["RUNNING"] == RunnerState.RUNNING
    assert {states[s] for s in ("COMPLETING", "SUSPENDED", "TIMEOUT", "CANCELLED", "NODE_FAIL")} == {RunnerState.ENDING}


def test_job_name_and_scancel():
    assert job_name("abc123", "gpu-1") == "dbr.abc123.gpu-1"
    assert scancel_argv(["5", 6]) == ["scancel", "5", "6"]


def test_store_tag_is_stable_and_distinct(tmp_path):
    assert store_tag(str(tmp_path)) == store_tag(str(tmp_path) + "/.")
    assert store_tag(str(tmp_path / "a")) != store_tag(str(tmp_path / "b"))


# -- GPUs --------------------------------------------------------------------------------
@pytest.mark.parametrize("environ, gpus", [
    ({}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, []),                   # not Slurm's: not ours to hand out
    ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "2,3"}, ["2", "3"]),
    ({"SLURM_JOB_GPUS": "2,3", "CUDA_VISIBLE_DEVICES": "0,1"}, ["0", "1"]),   # device cgroups
    ({"SLURM_JOB_GPUS": "2,3"}, ["2", "3"]),
    ({"SLURM_STEP_GPUS": "1", "SLURM_JOB_GPUS": "0,1", "CUDA_VISIBLE_DEVICES": "0"}, ["0"]),
    ({"SLURM_JOB_GPUS": "4,5", "CUDA_VISIBLE_DEVICES": "0"}, ["4", "5"]),     # disagree: Slurm's
])
def test_allocated_gpus(environ, gpus):
    assert allocated_gpus(environ) == gpus


# -- the connector around the real commands, with stand-in programs ----------------------------
def _program(folder, name, script):
    path = folder / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)


@pytest.fixture
def fake_bin(tmp_path, monkeypatch):
    folder = tmp_path / "bin"
    folder.mkdir()
    monkeypatch.setenv("PATH", "%s:%s" % (folder, os.environ["PATH"]))
    return folder


def _connector(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    return store, sched_slurm.SlurmConnector(store)


def test_a_failing_squeue_keeps_the_last_listing(tmp_path, fake_bin):
    store, slurm = _connector(tmp_path)
    name = job_name(store_tag(store.root), "default-1-a")
    _program(fake_bin, "squeue", "echo '7|%s|RUNNING|10:00'\n" % name)
    first = slurm.list_runners()
    assert first == {"default-1-a": RunnerInfo("default-1-a", "7", RunnerState.RUNNING, 600)}
    _program(fake_bin, "squeue", "echo 'slurm_load_jobs error: Socket timed out' >&2; exit 1\n")
    with pytest.raises(SchedulerUnavailable, match="Socket timed out"):
        slurm.list_runners()
    assert slurm.last_known_runners() == first


def test_sbatch_failures_say_whether_a_runner_may_exist(tmp_path, fake_bin):
    store, slurm = _connector(tmp_path)
    spec = {"id": "default-1-a", "resources": {}}
    _program(fake_bin, "sbatch", "echo 'sbatch: error: invalid partition specified: nope' >&2; exit 1\n")
    with pytest.raises(SubmitFailed, match="invalid partition") as refused:
        slurm.submit(spec, "/spec", ["true"], dict(os.environ))
    assert not refused.value.uncertain
    _program(fake_bin, "sbatch", "echo '31;clusterx'\n")
    assert slurm.submit(spec, "/spec", ["true"], dict(os.environ)) == "31"
