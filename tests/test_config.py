"""Config: YAML, hpc_batch's INI as it is, every problem reported with the file name."""
import pytest

from dropbox_runner.config import ConfigError, load_config

HPC_BATCH_INI = """[remote]
host = carbonate.example.edu
port = 22
user = your_user
key_file = /absolute/path/to/id_rsa
passphrase = pa$5phrase

[hpc]
gres = gpu:v100:1
partition = dl
gpuram = 32

[cronjob]
dropbox = /absolute/path/to/dropbox
lockfile = /absolute/path/to/lockfile

[hpc_env]
workspace = /remote/hpc_batch/workspace
scripts = /remote/hpc_batch/scripts
containers = /remote/containers
model_dir = /remote/models
"""


def test_hpc_batch_ini_is_accepted_as_is(tmp_path):
    path = tmp_path / "hpc_submitter.ini"
    path.write_text(HPC_BATCH_INI)
    config = load_config(path, check_folders=False)
    assert (config.backend, config.scheduler) == ("ssh", "slurm")
    assert config.remote.host == "carbonate.example.edu" and config.remote.port == 22
    assert config.remote.passphrase == "pa$5phrase"
    assert config.classes["default"].gres == "gpu:v100:1"
    assert config.classes["default"].partition == "dl"
    assert str(config.lockfile) == "/absolute/path/to/lockfile"
    assert config.hpc_env["model_dir"] == "/remote/models"
    assert config.templates == tmp_path / "tools"


def test_ini_templates_key_names_the_template_folder(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(HPC_BATCH_INI.replace("[hpc_env]", "templates = /opt/templates\n\n[hpc_env]"))
    assert str(load_config(path, check_folders=False).templates) == "/opt/templates"


def test_ini_unknown_keys_are_reported_with_the_file_name(tmp_path):
    path = tmp_path / "c.ini"
    path.write_text(HPC_BATCH_INI.replace("gpuram = 32", "gpuram = 32\ncolour = red") + "[extra]\na = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert str(path) in str(caught.value)
    assert "[hpc] colour: unknown key" in str(caught.value)
    assert "[extra]: unknown section" in str(caught.value)


def test_yaml_problems_are_collected_at_once(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dropbox: box\nbackend: carrier-pigeon\nmax_attempts: lots\ncolour: red\n"
                    "classes:\n  default: {slots: two, time_limit: 1h, wings: 2}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    text = str(caught.value)
    assert text.startswith(str(path))
    for expected in ("colour: unknown key", "max_attempts: expected a whole number",
                     "classes.default.slots: expected a whole number", "classes.default.wings: unknown key"):
        assert expected in text


def test_yaml_defaults_for_the_local_backend(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dropbox: box\nclasses:\n  default: {slots: 3, time_limit: 1h}\n")
    config = load_config(path, check_folders=False)
    assert config.dropbox == tmp_path / "box"
    assert config.hpc_env["workspace"] == str(tmp_path / "cluster" / "workspace")
    assert config.classes["default"].time_limit == 3600
    assert config.state_dir == tmp_path / "box" / ".dropbox-runner"
    assert config.submitter_id


def test_ssh_backend_needs_remote_and_cluster_folders(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("dropbox: box\nbackend: ssh\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "remote: required" in str(caught.value)
    assert "hpc_env.workspace: required" in str(caught.value)
