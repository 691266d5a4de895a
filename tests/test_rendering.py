"""Templates: hpc_batch's <<name>> syntax, shell-quoted values, strict variables."""
import subprocess
from pathlib import Path

import pytest

from dropbox_runner.config import PACKAGED_TEMPLATES
from dropbox_runner.rendering import Template, TemplateProblem, load_template, render

HOSTILE = ["; touch /tmp/dbr-pwned", "$(touch /tmp/dbr-pwned)", "`touch /tmp/dbr-pwned`",
           "it's \"quoted\"", "two\nlines", "ünïcødé ✓", "*", "", "-rf --no-preserve-root"]


def template(text, name="t"):
    return Template(name, Path(name), text)


@pytest.mark.parametrize("value", HOSTILE)
def test_hostile_values_reach_the_script_literally(tmp_path, value):
    script = render(template("printf '%s' <<value>>\n"), {"value": value})
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=tmp_path)
    assert done.stdout == value
    assert not Path("/tmp/dbr-pwned").exists()


def test_raw_opts_out_of_quoting():
    assert render(template("<<flags|raw>> <<flags>>"), {"flags": "-a -b"}) == "-a -b '-a -b'"


def test_plain_values_look_as_in_hpc_batch():
    text = "--bind <<workspace>>:/mnt --level=<<level>> /mnt/<<input>>"
    assert render(template(text), {"workspace": "/scratch/1234", "level": 6, "input": "foo.mp3"}) == \
        "--bind /scratch/1234:/mnt --level=6 /mnt/foo.mp3"


def test_a_missing_variable_is_an_error_naming_it():
    with pytest.raises(TemplateProblem, match="uses <<level>>"):
        render(template("run --level=<<level>>"), {})


def test_heredocs_and_shifts_are_not_placeholders():
    text = "cat <<EOF\n${#arr[@]} {{ x }} {% y %}\nEOF\necho $((1<<3)) <<v>>\n"
    assert render(template(text), {"v": "a b"}) == "cat <<EOF\n${#arr[@]} {{ x }} {% y %}\nEOF\necho $((1<<3)) 'a b'\n"


def test_header_declares_class_time_and_cache(tmp_path):
    (tmp_path / "g.template").write_text("#!/bin/bash\n# dropbox-runner: class=gpu expected_time=2h cache=false\n")
    loaded = load_template(tmp_path, "g")
    assert (loaded.job_class, loaded.expected_seconds, loaded.cache) == ("gpu", 7200, False)


def test_an_unknown_script_names_the_missing_template(tmp_path):
    with pytest.raises(TemplateProblem, match="there is no template .*nope.template"):
        load_template(tmp_path, "nope")


def test_the_apptainer_example_renders_like_hpc_batch_golden():
    loaded = load_template(PACKAGED_TEMPLATES, "apptainer_gpu")
    script = render(loaded, {"workspace": "/scratch/ws/job 1", "containers": "/sif", "container": "my_container",
                             "level": 6, "input": "foo.mp3", "txt_output": "foo.txt", "json_output": "foo.json"})
    golden = Path(__file__).with_name("golden") / "apptainer_gpu.sh"
    assert script == golden.read_text()
    assert loaded.job_class == "gpu"
