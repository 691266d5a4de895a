"""``scheduler: sge`` in the config: Grid Engine's class fields, from YAML to the qsub command line."""
import pytest
import yaml
from dropbox_runner.on_hpc.sched_sge import qsub_argv

from dropbox_runner.config import ConfigError, load_config


def _config(tmp_path, classes, cluster="cluster"):
    (tmp_path / "box").mkdir(exist_ok=True)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"dropbox": str(tmp_path / "box"), "backend": "local", "scheduler": "sge",
                                    "cluster_root": str(tmp_path / cluster), "classes": classes}))
    return load_config(path)


def test_grid_engine_class_fields_reach_qsub(tmp_path):
    config = _config(tmp_path, {
        "default": {"queue": "all.q", "slots": 4},
        "gpu": {"queue": "gpu.q", "pe": "smp", "cpus": 4, "memory": "16G", "gpus": 2, "gpu_resource": "cuda",
                "time_limit": "1h", "warn_seconds": "2m", "extra_args": "-P lab"},
    })
    assert config.scheduler == "sge"
    gpu = qsub_argv("n", "/l", "/w", config.classes["gpu"].to_request(), ["x"])
    assert gpu[gpu.index("-q") + 1] == "gpu.q"
    assert gpu[gpu.index("-pe"):gpu.index("-pe") + 3] == ["-pe", "smp", "4"]
    assert gpu[gpu.index("-l") + 1] == "h_rt=3600,s_rt=3480,h_vmem=4096M,cuda=2"
    assert gpu[-3:] == ["-P", "lab", "x"]
    default = qsub_argv("n", "/l", "/w", config.classes["default"].to_request(), ["x"])
    assert default[default.index("-q") + 1] == "all.q" and "-l" not in default


@pytest.mark.parametrize("classes, problem", [
    ({"default": {"partition": "gpu"}}, "classes.default.partition: Slurm's; with scheduler: sge use queue"),
    ({"default": {"gres": "gpu:1"}}, "classes.default.gres: Slurm's; with scheduler: sge use gpus"),
    ({"default": {"cpus": 4}}, "classes.default.cpus: with scheduler: sge, cpus are slots of a parallel"),
    ({"default": {"gpus": "two"}}, "classes.default.gpus: expected a GPU count"),
    ({"default": {"memory": "lots"}}, "classes.default.memory: 'lots' is not a memory size"),
])
def test_settings_grid_engine_cannot_honour_are_config_errors(tmp_path, classes, problem):
    with pytest.raises(ConfigError, match=problem):
        _config(tmp_path, classes)


def test_a_workspace_grid_engine_would_split_is_a_config_error(tmp_path):
    # qsub -o takes a comma-separated list of paths: no quoting saves a ',' in the log path.
    with pytest.raises(ConfigError, match="hpc_env.workspace: Grid Engine cannot take a ','"):
        _config(tmp_path, {"default": {}}, cluster="a,b")
    assert _config(tmp_path, {"default": {}}, cluster="a:b").scheduler == "sge"     # -o ":path"
