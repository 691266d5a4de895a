"""Job descriptions: every problem reported at once, stable ids, no overwritten inputs."""

import pytest

from dropbox_runner.jobs import JobInvalid, check_files, job_id, parse_job, read_job, workspace_names
from dropbox_runner.safefs import Boundaries


def problems_of(data):
    with pytest.raises(JobInvalid) as caught:
        parse_job(data)
    return caught.value.problems


def test_a_valid_hpc_batch_description_parses():
    job = parse_job({"script": "my_container", "args": {"level": 6},
                     "input_map": {"input": "/tmp/foo.mp3"},
                     "output_map": {"json_output": "/tmp/foo.json", "txt_output": "/tmp/foo.txt"}})
    assert job.script == "my_container" and job.args == {"level": 6}


def test_every_problem_is_reported_at_once():
    problems = problems_of({"script": "../evil", "args": {"x": [1, 2]}, "input_map": {"a": "rel/path"},
                            "output_map": {"b": "/x/../etc/passwd"}, "colour": "red"})
    text = "\n".join(problems)
    for expected in ("unknown key 'colour'", "script: '../evil'", "args.x: must be a single value",
                     "input_map.a: must be an absolute path", "output_map.b: '/x/../etc/passwd' contains '..'"):
        assert expected in text
    assert len(problems) == 5


@pytest.mark.parametrize("name", ["a/b", "..", "x/../y", "", "-rf"])
def test_script_names_cannot_escape_the_template_folder(name):
    assert any("script" in problem for problem in problems_of({"script": name}))


def test_keys_must_be_distinct_identifiers_and_not_reserved():
    text = "\n".join(problems_of({"script": "s", "args": {"x": 1, "workspace": 2, "bad-key": 3},
                                  "input_map": {"x": "/a"}}))
    assert "'x': used in more than one" in text
    assert "'workspace': reserved" in text
    assert "'bad-key': keys must be identifiers" in text


def test_a_key_yaml_reads_as_a_boolean_or_a_number_is_refused_not_an_internal_error():
    """`true:`, `yes:` or `1:` as an arg's name: found when the job id's canonical JSON
    failed to sort True beside strings (a TypeError contained as "taking in the job failed")."""
    text = "\n".join(problems_of({"script": "s", "args": {True: 1, "x": 2}, "output_map": {1: "/o"}}))
    assert "True: keys must be identifiers" in text and "1: keys must be identifiers" in text


def test_two_outputs_to_one_destination_are_refused():
    text = "\n".join(problems_of({"script": "s", "output_map": {"a": "/o/x.txt", "b": "/o/./x.txt"}}))
    assert "/o/x.txt is the destination of more than one output" in text


def test_files_are_checked_for_existence_kind_and_roots(tmp_path):
    good = tmp_path / "in.txt"
    good.write_text("x")
    (tmp_path / "dir").mkdir()
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = tmp_path / "allowed" / "link"
    link.parent.mkdir()
    link.symlink_to(outside / "secret")
    (outside / "secret").write_text("s")
    job = parse_job({"script": "s", "input_map": {
        "missing": str(tmp_path / "nope"), "folder": str(tmp_path / "dir"), "escape": str(link)},
        "output_map": {"nowhere": "/no/such/folder/out.txt"}})
    roots = (tmp_path / "allowed", tmp_path / "dir", tmp_path / "nope")
    text = "\n".join(check_files(job, Boundaries(input_roots=roots)))
    assert "does not exist" in text and "is not a regular file" in text
    assert "outside the allowed input folders" in text
    assert "the folder /no/such/folder does not exist" in text


def test_same_base_names_get_distinct_workspace_names():
    names = workspace_names({"a": "/x/data.txt", "b": "/y/data.txt", "c": "/z/other.txt"})
    assert names == {"a": "a-data.txt", "b": "b-data.txt", "c": "other.txt"}


def test_job_ids_derive_from_the_job_not_the_clock():
    raw = {"script": "s"}
    first = job_id("sub-1", "x y.job", raw, {})
    assert first == job_id("sub-1", "x y.job", raw, {})
    assert first.startswith("sub-1.x_y.")
    assert first != job_id("sub-1", "x y.job", raw, {"in": [1, 2]})
    assert first != job_id("sub-2", "x y.job", raw, {})


@pytest.mark.parametrize("content, expected", [
    ("", "empty"), ("script: [unclosed", "not valid YAML"), ("- a\n- b\n", "must hold a mapping"),
    ("just text", "must hold a mapping")])
def test_unreadable_job_files_say_why(tmp_path, content, expected):
    path = tmp_path / "x.job"
    path.write_text(content)
    with pytest.raises(JobInvalid) as caught:
        read_job(path)
    assert expected in str(caught.value)


def test_a_huge_job_file_is_refused_without_parsing(tmp_path):
    path = tmp_path / "x.job"
    path.write_text("script: s\n" + "#" * (2 << 20))
    with pytest.raises(JobInvalid, match="limited to"):
        read_job(path)
