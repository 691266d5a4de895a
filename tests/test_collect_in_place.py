"""The local backend collects a done job where it lies (issue 18): no inbox folder, link or
scratch is made for it, and what the job left there is read with the pull's protections:
no link followed anywhere along the way, no FIFO opened blocking, only regular files, and
what was checked is what is read."""
import errno
import os
import signal
import socket
import threading

import pytest
from helpers import drain, drop, make_config

from dropbox_runner import inplace
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.inplace import JobFolder
from dropbox_runner.submitter import run_once
from dropbox_runner.transport import TransportError
from dropbox_runner.transport.local import LocalTransport

SECRET = "the operator's secret\n"
WANTED = ["stdout", "stderr", "output/a.txt"]


def job_folder(tmp_path):
    job = tmp_path / "jobs" / "j1"
    (job / "output").mkdir(parents=True)
    (job / "stdout").write_text("out\n")
    (job / "output" / "a.txt").write_text("result\n")
    return job


def secret_file(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text(SECRET)
    return secret


@pytest.fixture
def no_hang():
    """A FIFO opened blocking fails the test instead of hanging it."""
    def hung(*_):
        raise AssertionError("blocked opening a FIFO")      # not an OSError, which would be caught

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def open_descriptors():
    return set(os.listdir("/proc/self/fd"))


# -- the folder, unit by unit ------------------------------------------------------------------
def test_regular_files_are_found_and_absent_ones_are_not(tmp_path):
    job_folder(tmp_path)
    with JobFolder(tmp_path / "jobs", "j1", WANTED) as folder:
        assert sorted(folder.files) == ["output/a.txt", "stdout"]
        assert folder.files["output/a.txt"].read_text() == "result\n"
        assert folder.files["stdout"].read_text() == "out\n"


def test_what_was_checked_is_what_is_read_when_the_name_is_swapped_afterwards(tmp_path):
    job = job_folder(tmp_path)
    secret = secret_file(tmp_path)
    with JobFolder(tmp_path / "jobs", "j1", WANTED) as folder:
        (job / "output" / "a.txt").unlink()
        (job / "output" / "a.txt").symlink_to(secret)      # a job's leftover process swaps it
        assert folder.files["output/a.txt"].read_text() == "result\n"


@pytest.mark.parametrize("leave", ["link", "fifo", "socket", "folder"])
def test_an_output_that_is_not_a_regular_file_is_absent(tmp_path, leave, no_hang):
    job = job_folder(tmp_path)
    secret = secret_file(tmp_path)
    output = job / "output" / "a.txt"
    output.unlink()
    if leave == "link":
        output.symlink_to(secret)
    elif leave == "fifo":
        os.mkfifo(output)       # opened blocking, this would hang the test
    elif leave == "socket":
        socket.socket(socket.AF_UNIX).bind(str(output))
    else:
        output.mkdir()
    with JobFolder(tmp_path / "jobs", "j1", WANTED) as folder:
        assert sorted(folder.files) == ["stdout"]


def test_an_output_folder_swapped_for_a_link_to_a_folder_with_the_expected_name_is_not_followed(tmp_path):
    job = job_folder(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "a.txt").write_text(SECRET)
    (job / "output" / "a.txt").unlink()
    (job / "output").rmdir()
    (job / "output").symlink_to(elsewhere, target_is_directory=True)
    with JobFolder(tmp_path / "jobs", "j1", WANTED + ["output/sub/b.txt"]) as folder:
        assert sorted(folder.files) == ["stdout"]


def test_a_sub_folder_or_the_job_folder_itself_as_a_link_is_not_followed(tmp_path):
    job = job_folder(tmp_path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "b.txt").write_text(SECRET)
    (job / "output" / "sub").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    with JobFolder(tmp_path / "jobs", "j1", ["output/sub/b.txt"]) as folder:
        assert folder.files == {}
    (tmp_path / "jobs" / "j2").symlink_to(job, target_is_directory=True)
    with JobFolder(tmp_path / "jobs", "j2", WANTED) as folder:
        assert folder.files == {}


def test_streams_left_as_a_link_and_a_fifo_are_absent(tmp_path, no_hang):
    job = job_folder(tmp_path)
    (job / "stdout").unlink()
    (job / "stdout").symlink_to(secret_file(tmp_path))
    os.mkfifo(job / "stderr")
    with JobFolder(tmp_path / "jobs", "j1", WANTED) as folder:
        assert sorted(folder.files) == ["output/a.txt"]


def test_a_file_swapped_for_a_link_just_before_it_is_opened_is_absent(tmp_path, monkeypatch):
    job = job_folder(tmp_path)
    secret = secret_file(tmp_path)
    real_open = os.open

    def swapping_open(path, flags, *args, **kwargs):
        if path == "a.txt":      # the job swaps its output between any check and the open
            os.unlink(job / "output" / "a.txt")
            os.symlink(secret, job / "output" / "a.txt")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(inplace.os, "open", swapping_open)
    with JobFolder(tmp_path / "jobs", "j1", WANTED) as folder:
        assert "output/a.txt" not in folder.files


def test_a_missing_job_folder_has_no_files(tmp_path):
    (tmp_path / "jobs").mkdir()
    with JobFolder(tmp_path / "jobs", "gone", WANTED) as folder:
        assert folder.files == {}
    with JobFolder(tmp_path / "no-jobs", "gone", WANTED) as folder:
        assert folder.files == {}


def test_an_unreadable_file_is_an_error_naming_it_and_leaves_nothing_open(tmp_path, monkeypatch):
    job_folder(tmp_path)
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if path == "a.txt":
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    before = open_descriptors()
    monkeypatch.setattr(inplace.os, "open", refusing_open)
    with pytest.raises(PermissionError, match="cannot read .*j1/output/a.txt"):
        JobFolder(tmp_path / "jobs", "j1", WANTED)
    monkeypatch.undo()
    assert open_descriptors() == before


def test_closing_releases_every_descriptor(tmp_path, no_hang):
    job_folder(tmp_path)
    os.mkfifo(tmp_path / "jobs" / "j1" / "stderr")
    before = open_descriptors()
    folder = JobFolder(tmp_path / "jobs", "j1", WANTED)
    assert open_descriptors() != before
    folder.close()
    assert open_descriptors() == before


def test_the_local_transport_is_never_asked_to_pull(tmp_path):
    with pytest.raises(TransportError):
        LocalTransport().pull(str(tmp_path), ["j1/output"], tmp_path / "inbox")


# -- whole cycles on local runners -------------------------------------------------------------
def leave_odd(config, tmp_path, name, what, target):
    drop(config, name, {"script": "leave_odd", "cache": False,
                        "args": {"what": what, "target": str(target)},
                        "output_map": {"out": str(tmp_path / "outputs" / f"{name}.txt")}})


def drain_or_fail(config, names, timeout=90):
    """``drain`` in a thread, so a cycle blocked on a FIFO fails the test instead of hanging it."""
    results = {}
    worker = threading.Thread(target=lambda: results.update(drain(config, names, timeout=timeout)), daemon=True)
    worker.start()
    worker.join(timeout + 30)
    assert not worker.is_alive(), "a collecting cycle hung"
    assert sorted(results) == sorted(names), results
    return results


@pytest.mark.parametrize("what", ["link_output", "fifo_output", "socket_output", "linked_output_folder"])
def test_an_output_left_as_a_link_fifo_socket_or_linked_folder_is_never_delivered(tmp_path, what):
    config = make_config(tmp_path)
    secret = secret_file(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "odd.job.txt").write_text(SECRET)       # the name the job's output would have
    leave_odd(config, tmp_path, "odd.job", what, elsewhere if what == "linked_output_folder" else secret)
    block = drain_or_fail(config, ["odd.job"])["odd.job"]["job"]
    assert block["status"] == "error" and "did not write out (expected at output/odd.job.txt)" in block["message"]
    assert not os.path.lexists(tmp_path / "outputs" / "odd.job.txt")
    assert SECRET.strip() not in (config.dropbox / "odd.job.finished").read_text()


@pytest.mark.parametrize("what", ["fifo_stdout", "link_stdout"])
def test_stdout_left_as_a_fifo_or_a_link_is_collected_as_empty(tmp_path, what):
    config = make_config(tmp_path)
    leave_odd(config, tmp_path, "odd.job", what, secret_file(tmp_path))
    block = drain_or_fail(config, ["odd.job"])["odd.job"]["job"]
    assert block["status"] == "ok", block
    assert block.get("stdout", "") == "" and SECRET.strip() not in str(block)
    assert (tmp_path / "outputs" / "odd.job.txt").read_text() == "done\n"


def test_a_local_collection_makes_no_inbox_folder_link_or_scratch(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    made = []
    real_mkdir, real_link = os.mkdir, os.link
    monkeypatch.setattr(os, "mkdir", lambda path, *a, **k: made.append(str(path)) or real_mkdir(path, *a, **k))
    monkeypatch.setattr(os, "link", lambda src, dst, **k: made.append(str(dst)) or real_link(src, dst, **k))
    for number in range(3):
        drop(config, f"plain{number}.job", {"script": "echo_args", "args": {"first": "1", "second": "2"},
                                           "cache": False,
                                           "output_map": {"out": str(tmp_path / "outputs" / f"{number}.txt")}})
    results = drain(config, [f"plain{number}.job" for number in range(3)])
    assert {r["job"]["status"] for r in results.values()} == {"ok"}
    assert (tmp_path / "outputs" / "0.txt").read_text() == "1\n2\n"
    assert not (config.state_dir / "inbox").exists()
    assert not [path for path in made if "inbox" in path], made


def test_an_unreadable_output_fails_its_own_job_and_the_others_are_collected_in_the_same_cycle(
        tmp_path, monkeypatch):
    config = make_config(tmp_path)
    for name in ("sealed", "plain"):
        drop(config, f"{name}.job", {"script": "echo_args", "args": {"first": "1", "second": "2"}, "cache": False,
                                     "output_map": {"out": str(tmp_path / "outputs" / f"{name}.txt")}})
    real_open = os.open

    def refusing_open(path, flags, *args, **kwargs):
        if path == "sealed.txt" and kwargs.get("dir_fd") is not None:     # the job's, not the destination's
            raise PermissionError(errno.EACCES, "Permission denied")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(inplace.os, "open", refusing_open)
    seen = []

    def cycle():
        run_once(config, LocalTransport())
        seen.append({"sealed.job", "plain.job"} & set(Dropbox(config.dropbox).scan().finished))

    results = drain(config, ["sealed.job", "plain.job"], cycle=cycle)
    sealed, plain = results["sealed.job"]["job"], results["plain.job"]["job"]
    assert sealed["status"] == "error" and "could not be read" in sealed["message"], sealed
    assert "sealed.txt" in sealed["message"], sealed
    assert plain["status"] == "ok" and (tmp_path / "outputs" / "plain.txt").read_text() == "1\n2\n"
    assert next(done for done in seen if done) == {"sealed.job", "plain.job"}, seen
    assert not (tmp_path / "outputs" / "sealed.txt").exists()


def test_a_job_with_more_outputs_than_can_be_held_open_gets_an_error_result_not_a_wait(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    drop(config, "many.job", {"script": "echo_args", "args": {"first": "1", "second": "2"}, "cache": False,
                              "output_map": {"out": str(tmp_path / "outputs" / "many.txt")}})
    real_open = os.open

    def exhausted_open(path, flags, *args, **kwargs):
        if path == "many.txt" and kwargs.get("dir_fd") is not None:
            raise OSError(errno.EMFILE, "Too many open files")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(inplace.os, "open", exhausted_open)
    block = drain(config, ["many.job"])["many.job"]["job"]
    assert block["status"] == "error" and "Too many open files" in block["message"], block


def test_a_failing_disk_while_reading_in_place_makes_the_job_wait_not_fail(tmp_path, monkeypatch):
    config = make_config(tmp_path)
    drop(config, "io.job", {"script": "echo_args", "args": {"first": "1", "second": "2"}, "cache": False,
                            "output_map": {"out": str(tmp_path / "outputs" / "io.txt")}})
    real_open = os.open
    failing = [True]

    def failing_open(path, flags, *args, **kwargs):
        if path == "io.txt" and kwargs.get("dir_fd") is not None and failing[0]:
            raise OSError(errno.EIO, "Input/output error")
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(inplace.os, "open", failing_open)
    waited = []

    def cycle():
        report = run_once(config, LocalTransport())
        if report and not report.collected_ids and any("io.job" in said for said in report.environment_errors):
            waited.append(True)
            failing[0] = False          # the disk recovers
            assert not (config.dropbox / "io.job.finished").exists()

    block = drain(config, ["io.job"], cycle=cycle)["io.job"]["job"]
    assert waited and block["status"] == "ok", block
