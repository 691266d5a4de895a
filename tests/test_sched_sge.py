"""The Grid Engine dialect with plain strings: argv builders, the qstat XML parser, the state map.

The XML below is what Debian's Son of Grid Engine 8.1.9 printed for ``qstat -xml -r -u root``
with one runner running and one waiting (captured from the cell of tests/gridengine.py).
"""
import time

import pytest
from dropbox_runner.on_hpc import schedulers
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import RunnerState
from dropbox_runner.on_hpc.sched_sge import (
    GridEngineConnector,
    allocated_gpus,
    error_reasons,
    jobs_in_error,
    parse_qstat,
    parse_qsub,
    qdel_argv,
    qhold_argv,
    qrls_argv,
    qstat_argv,
    qsub_argv,
    runner_state,
    still_waiting,
)
from dropbox_runner.on_hpc.schedulers import RunnerInfo, SubmitFailed

PENDING, RUNNING, ENDING = RunnerState.PENDING, RunnerState.RUNNING, RunnerState.ENDING

COMMAND = ["env", "PYTHONPATH=/home/me/on hpc", "python3", "-m", "on_hpc", "run", "/w/runners/r.json"]

QSTAT_XML = """<?xml version='1.0'?>
<job_info  xmlns:xsd="http://arc.liv.ac.uk/repos/darcs/sge/source/dist/util/resources/schemas/qstat/qstat.xsd">
  <queue_info>
    <job_list state="running">
      <JB_job_number>2</JB_job_number>
      <JAT_prio>0.75000</JAT_prio>
      <JB_name>dbr.abc123.default-20261122T120648-aaaaaa</JB_name>
      <JB_owner>root</JB_owner>
      <state>r</state>
      <JAT_start_time>2026-11-22T12:06:48</JAT_start_time>
      <queue_name>all.q@vm</queue_name>
      <slots>2</slots>
      <full_job_name>dbr.abc123.default-20261122T120648-aaaaaa</full_job_name>
      <requested_pe name="smp">2</requested_pe>
      <granted_pe name="smp">2</granted_pe>
      <hard_request name="gpu" resource_contribution="0.000000">1</hard_request>
      <hard_request name="h_rt" resource_contribution="0.000000">120</hard_request>
      <hard_request name="s_rt" resource_contribution="0.000000">100</hard_request>
      <binding>NONE</binding>
    </job_list>
  </queue_info>
  <job_info>
    <job_list state="pending">
      <JB_job_number>3</JB_job_number>
      <JAT_prio>0.75000</JAT_prio>
      <JB_name>dbr.abc123.gpu-20261122T120648-bbbbbb</JB_name>
      <JB_owner>root</JB_owner>
      <state>qw</state>
      <JB_submission_time>2026-11-22T12:06:48</JB_submission_time>
      <queue_name></queue_name>
      <slots>2</slots>
      <full_job_name>dbr.abc123.gpu-20261122T120648-bbbbbb</full_job_name>
      <hard_request name="h_rt" resource_contribution="0.000000">1:00:00</hard_request>
    </job_list>
    <job_list state="pending">
      <JB_job_number>4</JB_job_number>
      <JB_name>dbr.abc123.default-20261122T120649-cccccc</JB_name>
      <state>hqw</state>
    </job_list>
    <job_list state="pending">
      <JB_job_number>7</JB_job_number>
      <JB_name>dbr.abc123.default-20261122T120650-eeeeee</JB_name>
      <state>Eqw</state>
    </job_list>
    <job_list state="pending">
      <JB_job_number>5</JB_job_number>
      <JB_name>dbr.zzz999.default-20261122T120649-dddddd</JB_name>
      <state>qw</state>
    </job_list>
    <job_list state="pending">
      <JB_job_number>6</JB_job_number>
      <JB_name>someone-elses-job</JB_name>
      <state>qw</state>
    </job_list>
  </job_info>
</job_info>
"""


# -- qsub --------------------------------------------------------------------------------------
def test_qsub_argv_carries_every_class_setting():
    resources = {"queue": "gpu.q", "pe": "smp", "cpus": 8, "memory": "32G", "gpus": 2,
                 "time_limit": 7200, "warn_seconds": 120, "extra_args": ["-P", "lab"]}
    argv = qsub_argv("dbr.abc123.gpu-1", "/w/runners/gpu-1.log", "/w", resources, COMMAND)
    assert argv[:2] == ["qsub", "-terse"]
    pairs = list(zip(argv, argv[1:]))
    for pair in (("-N", "dbr.abc123.gpu-1"), ("-o", ":/w/runners/gpu-1.log"), ("-j", "y"), ("-wd", "/w"),
                 ("-r", "n"), ("-b", "y"), ("-shell", "n"), ("-q", "gpu.q")):
        assert pair in pairs
    assert argv[argv.index("-pe"):argv.index("-pe") + 3] == ["-pe", "smp", "8"]
    # memory is per slot in Grid Engine: the runner's 32G over its 8 slots
    assert ("-l", "h_rt=7200,s_rt=7080,h_vmem=4096M,gpu=2") in pairs
    assert argv[-len(COMMAND) - 2:] == ["-P", "lab"] + COMMAND        # the argv as is, no shell


def test_qsub_argv_leaves_out_what_the_class_does_not_set():
    argv = qsub_argv("n", "/l", "/w", {"time_limit": None, "warn_seconds": 60, "extra_args": []}, ["x"])
    assert not {"-q", "-pe", "-l"} & set(argv)
    assert argv[-1] == "x"


def test_qsub_argv_warning_and_site_resource_names():
    resources = {"time_limit": 100, "warn_seconds": 0, "memory": "3000", "memory_resource": "mem_free",
                 "gpus": 1, "gpu_resource": "cuda"}
    assert "h_rt=100,mem_free=3000M,cuda=1" in qsub_argv("n", "/l", "/w", resources, ["x"])
    # The warning never takes more than half a short limit (as for Slurm).
    assert "h_rt=60,s_rt=30" in qsub_argv("n", "/l", "/w", {"time_limit": 60, "warn_seconds": 600}, ["x"])
    # Memory without a parallel environment is the one slot's.
    assert "h_vmem=2048M" in qsub_argv("n", "/l", "/w", {"cpus": 4, "memory": "2G"}, ["x"])


def test_parse_qsub():
    assert parse_qsub("17\n") == "17"
    assert parse_qsub("warning: no suitable queues now\n18\n") == "18"
    for bad in ("", "Your job 17 (\"x\") has been submitted\n", "Unable to run job: denied.\n"):
        with pytest.raises(ValueError):
            parse_qsub(bad)


# -- qstat -------------------------------------------------------------------------------------
def test_qstat_argv_is_one_listing_of_this_account():
    assert qstat_argv("alice") == ["qstat", "-xml", "-r", "-u", "alice"]


def test_parse_qstat_finds_this_workspaces_runners_with_their_time_left():
    started = time.mktime(time.strptime("2026-11-22T12:06:48", "%Y-%m-%dT%H:%M:%S"))
    runners = parse_qstat(QSTAT_XML, "abc123", now=started + 30)
    assert runners == {
        "default-20261122T120648-aaaaaa": RunnerInfo("default-20261122T120648-aaaaaa", "2", RUNNING, 90),
        "gpu-20261122T120648-bbbbbb": RunnerInfo("gpu-20261122T120648-bbbbbb", "3", PENDING, 3600),
        "default-20261122T120649-cccccc": RunnerInfo("default-20261122T120649-cccccc", "4", PENDING, None),
        "default-20261122T120650-eeeeee": RunnerInfo("default-20261122T120650-eeeeee", "7", ENDING, None),
    }
    # Past its limit (qdel not through yet): nothing left, never negative.
    assert parse_qstat(QSTAT_XML, "abc123", now=started + 500)["default-20261122T120648-aaaaaa"].time_left == 0


def test_runners_in_error_state_are_found_with_their_reason():
    assert jobs_in_error(QSTAT_XML, "abc123") == ["7"]
    assert jobs_in_error(QSTAT_XML, "zzz999") == []
    shown = ("job_type:                   binary,noshell\n"
             "error reason          1:      11/22/2026 12:18:32 [0:8423]: error: can't chdir to /gone: "
             "No such file or directory\n"
             "scheduling info:            Job is in error state\n")
    assert error_reasons(shown) == ["11/22/2026 12:18:32 [0:8423]: error: can't chdir to /gone: "
                                    "No such file or directory"]
    assert error_reasons("") == []


def test_parse_qstat_reads_univa_times_and_clock_limits():
    # Univa/Altair print milliseconds in times; a limit may be written h:m:s.
    xml = QSTAT_XML.replace("2026-11-22T12:06:48</JAT_start_time>", "2026-11-22T12:06:48.517</JAT_start_time>")
    xml = xml.replace(">120</hard_request>", ">0:02:00</hard_request>")
    started = time.mktime(time.strptime("2026-11-22T12:06:48", "%Y-%m-%dT%H:%M:%S"))
    assert parse_qstat(xml, "abc123", now=started + 30)["default-20261122T120648-aaaaaa"].time_left == 90


def test_parse_qstat_of_an_empty_listing_and_of_garbage():
    empty = "<?xml version='1.0'?>\n<job_info><queue_info></queue_info><job_info></job_info></job_info>\n"
    assert parse_qstat(empty, "abc123") == {}
    for bad in ("", "error: commlib error: got select error (Connection refused)\n", "<job_info>"):
        with pytest.raises(ValueError):
            parse_qstat(bad, "abc123")


@pytest.mark.parametrize("code, state", [
    ("qw", PENDING), ("hqw", PENDING), ("hRwq", PENDING), ("w", PENDING),
    ("r", RUNNING), ("t", RUNNING), ("Rr", RUNNING), ("Rt", RUNNING),
    ("dr", ENDING), ("dt", ENDING), ("dqw", ENDING), ("Eqw", ENDING),
    ("s", ENDING), ("S", ENDING), ("T", ENDING), ("ts", ENDING), ("z", ENDING), ("", ENDING),
])
def test_state_map(code, state):
    assert runner_state(code) == state


def test_qdel_argv():
    assert qdel_argv(["5", 6]) == ["qdel", "5", "6"]


# -- GPUs --------------------------------------------------------------------------------------
@pytest.mark.parametrize("environ, gpus", [
    ({}, []),
    ({"CUDA_VISIBLE_DEVICES": "0,1"}, ["0", "1"]),            # a site's prolog bound them
    ({"SGE_HGR_gpu": "2 3", "CUDA_VISIBLE_DEVICES": "0,1"}, ["2", "3"]),    # Univa/Altair RSMAP
    ({"SGE_HGR_gpu": " "}, []),
])
def test_allocated_gpus(environ, gpus):
    assert allocated_gpus(environ) == gpus


def test_the_connector_is_chosen_by_name_and_caches_beside_no_runner_record(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    sge = schedulers.connector("sge", store)
    assert isinstance(sge, GridEngineConnector) and sge.lists_at_submission
    assert not sge.listing_cache.endswith(".json")       # runners/*.json are runner records
    assert sge.last_known_runners() == {}
    assert sge.allocation_seconds({"time_limit": 300}) == 300


def test_a_class_grid_engine_cannot_be_asked_for_is_a_refused_submission_not_a_crash(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    sge = schedulers.connector("sge", store)
    with pytest.raises(SubmitFailed, match="not a memory size"):
        sge.submit({"id": "default-1", "resources": {"memory": "lots"}}, "/spec", ["true"], {})


def test_only_jobs_still_waiting_are_deleted_of_those_the_policy_cancels():
    # 2 runs, 3 waits, 4 waits held (as after qhold), 7 is in error: only 3 and 4 may go.
    assert still_waiting(QSTAT_XML, ["2", "3", "4", "7", "99"]) == ["3", "4"]
    assert qhold_argv(["3", 4]) == ["qhold", "-h", "u", "3", "4"]
    assert qrls_argv(["2"]) == ["qrls", "-h", "u", "2"]
    with pytest.raises(ValueError):
        still_waiting("no xml", ["3"])
