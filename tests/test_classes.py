"""Resource classes: from the config (YAML or hpc_batch's INI) through templates and jobs
to the sbatch command line."""
import json
from pathlib import Path

import pytest
import yaml
from dropbox_runner.on_hpc.sched_slurm import sbatch_argv

from dropbox_runner.boundaries import boundaries_for
from dropbox_runner.config import ConfigError, load_config
from dropbox_runner.jobs import JobInvalid
from dropbox_runner.staging import prepare, write_outbox_entry

TEST_TEMPLATES = Path(__file__).parent / "templates"


def _flags(resources):
    return [arg for arg in sbatch_argv("n", "/l", "/w", resources, ["x"])[6:-1]]


def test_the_ini_hpc_section_is_the_default_class(tmp_path):
    ini = tmp_path / "hpc_batch.ini"
    ini.write_text("[remote]\nhost = login.hpc.example\nuser = amp\n"
                   "[hpc]\ngres = gpu:v100:1\npartition = gpu\nmemory = 32G\ngpuram = 16\n"
                   "[cronjob]\ndropbox = %s\n"
                   "[hpc_env]\nworkspace = /scratch/amp/ws\nscripts = /home/amp/scripts\n" % (tmp_path / "box"))
    config = load_config(ini, check_folders=False)
    assert config.scheduler == "slurm" and config.backend == "ssh"
    assert list(config.classes) == ["default"] and config.default_class == "default"
    default = config.classes["default"]
    assert (default.gres, default.partition, default.memory) == ("gpu:v100:1", "gpu", "32G")
    assert _flags(default.to_request()) == [
        "--no-requeue", "--partition=gpu", "--gres=gpu:v100:1", "--mem=32G"]


def test_every_class_setting_reaches_sbatch(tmp_path):
    config = _config(tmp_path, classes={
        "default": {"cpus": 2, "memory": "4G", "slots": 4, "idle_timeout": "30s"},
        "gpu": {"partition": "gpu", "gres": "gpu:2", "cpus": 8, "memory": "64G", "time_limit": "2h",
                "slots": 2, "max_runners": 3, "idle_timeout": "5m", "warn_seconds": "90s",
                "extra_args": "--account=lab --qos=normal"},
    })
    gpu = config.classes["gpu"].to_request()
    assert gpu == {"partition": "gpu", "gres": "gpu:2", "cpus": 8, "memory": "64G", "time_limit": 7200,
                   "slots": 2, "max_runners": 3, "idle_timeout": 300, "warn_seconds": 90,
                   "extra_args": ["--account=lab", "--qos=normal"], "runner_per_job": False,
                   "user_limit": 0, "speculate": 1, "submit_cap": 8, "submit_per_hour": 24,
                   "adaptive_linger": True,
                   "queue": None, "pe": None, "gpus": None, "gpu_resource": "gpu", "memory_resource": "h_vmem",
                   "nodes": 1, "launch": None}
    assert _flags(gpu) == ["--no-requeue", "--partition=gpu", "--gres=gpu:2", "--cpus-per-task=8",
                           "--mem=64G", "--time=120", "--signal=B:USR1@90",
                           "--account=lab", "--qos=normal"]
    assert _flags(config.classes["default"].to_request()) == [
        "--no-requeue", "--cpus-per-task=2", "--mem=4G"]


@pytest.mark.parametrize("scheduler", ["slurm", "sge"])
def test_a_queued_class_left_to_its_defaults_gets_the_simulated_policy(tmp_path, scheduler):
    """bench/simulate.py's sweep meets the issue-16 bar with these (README, Runner policy)."""
    classes = {"default": {"slots": 4}, "gpu": {"slots": 1, "gpus": 1},
               "mine": {"slots": 1, "max_runners": 2, "idle_timeout": "5m", "adaptive_linger": False}}
    if scheduler == "slurm":
        classes["wide"] = {"slots": 4, "nodes": 2}
    config = _config(tmp_path, scheduler=scheduler, classes=classes)
    runners = {name: (c.max_runners, c.idle_timeout, c.adaptive_linger) for name, c in config.classes.items()}
    assert runners.pop("default") == (4, 1800, True)         # ceil(14 job places / 4 slots)
    assert runners.pop("gpu") == (14, 1800, True)
    assert runners.pop("mine") == (2, 300, False)             # what the operator set stays
    assert runners.pop("wide", (2, 1800, True)) == (2, 1800, True)   # 8 places per runner


def test_a_local_class_left_to_its_defaults_keeps_one_runner_and_a_fixed_minute(tmp_path):
    """Local runners share one machine and start at once: no queue wait to race or save."""
    config = _config(tmp_path, scheduler="local", classes={"default": {"slots": 4}})
    default = config.classes["default"]
    assert (default.max_runners, default.idle_timeout, default.adaptive_linger) == (1, 60, False)


@pytest.mark.parametrize("classes, problem", [
    ({"gpu-a100": {}}, "class names are identifiers"),
    ({"default": {"slots": 0}}, "classes.default.slots: must be at least 1"),
    ({"default": {"max_runners": 0}}, "classes.default.max_runners: must be at least 1"),
    ({"default": {"adaptive_linger": "no"}}, "classes.default.adaptive_linger: expected true or false"),
    ({"default": {"partitoin": "x"}}, "classes.default.partitoin: unknown key"),
    ({"default": {"time_limit": "soon"}}, "classes.default.time_limit"),
])
def test_bad_classes_are_config_errors(tmp_path, classes, problem):
    with pytest.raises(ConfigError, match=problem):
        _config(tmp_path, classes=classes)


def test_templates_declare_class_and_expected_time_and_jobs_may_override(tmp_path):
    config = _config(tmp_path, classes={"default": {}, "gpu": {"gres": "gpu:1"}})
    out = str(tmp_path / "out.txt")
    declared = prepare(config, "a.job", {"script": "gpu_env", "args": {"seconds": 1}, "output_map": {"out": out}})
    assert declared.job_class == "gpu"                        # the template's header
    overridden = prepare(config, "b.job", {"script": "gpu_env", "args": {"seconds": 1},
                                           "output_map": {"out": out}, "class": "default",
                                           "expected_time": "90s"})
    assert overridden.job_class == "default"
    plain = prepare(config, "c.job", {"script": "ledger", "args": {"seconds": 1, "ledger": "/tmp/l"},
                                      "output_map": {"out": out}})
    assert plain.job_class == "default"
    for job, expected in ((declared, None), (overridden, 90)):
        write_outbox_entry(tmp_path / "outbox", job, config.submitter_id, boundaries_for(config))
        meta = json.loads((tmp_path / "outbox" / job.job_id / "job.json").read_text())
        assert (meta["class"], meta["expected_seconds"]) == (job.job_class, expected)


def test_a_job_expecting_more_than_its_class_can_give_is_refused_at_intake(tmp_path):
    config = _config(tmp_path, classes={"default": {"time_limit": "1m", "warn_seconds": 10}})
    job = {"script": "ledger", "args": {"seconds": 1, "ledger": "/tmp/l"},
           "output_map": {"out": str(tmp_path / "o")}}
    prepare(config, "fits.job", dict(job, expected_time="50s"))
    with pytest.raises(JobInvalid) as refused:
        prepare(config, "long.job", dict(job, expected_time="2m"))
    assert refused.value.problems == [
        "expected_time 2m exceeds what a runner of class 'default' can give a job: "
        "its time_limit 1m less 10s warning = 50s"]


def _config(tmp_path, **values):
    (tmp_path / "box").mkdir(exist_ok=True)
    data = {"dropbox": str(tmp_path / "box"), "backend": "local", "scheduler": "slurm",
            "cluster_root": str(tmp_path / "cluster"), "templates": str(TEST_TEMPLATES),
            "grace_seconds": 0}
    data.update(values)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)
