"""A job's output read where it lies (local backend) is hard-linked into place instead of
copied, only where that is the same as a copy (issue 18): a regular file with no other
name, the submitter's own, on the destination's filesystem, given the mode a copy gets.
Otherwise it is copied as before; and whatever fails (a refusal, a full disk, a SIGKILL)
leaves every output where the job left it, so the job is collected whole."""
import errno
import os
import stat
import subprocess
import sys

import pytest
from helpers import drain, drop, make_config, mounted_tmpfs, write_config

from dropbox_runner import safefs
from dropbox_runner.config import load_config
from dropbox_runner.inplace import JobFolder
from dropbox_runner.safefs import Boundaries, FileRefused, place_files


def umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


def two_outputs(config, tmp_path, name, what="plain", target="", cache=False, folder=None):
    folder = folder or tmp_path / "outputs"
    drop(config, name, {"script": "two_outputs", "cache": cache, "args": {"what": what, "target": str(target)},
                        "output_map": {"a": str(folder / f"{name}.a"), "b": str(folder / f"{name}.b")}})
    return folder / f"{name}.a", folder / f"{name}.b"


@pytest.fixture
def copies(monkeypatch):
    """Records each copy place_files makes (by destination folder descriptor's path)."""
    made = []
    real = safefs._copy

    def recorded(source, destination):
        made.append(str(safefs.descriptor_path(destination)))
        real(source, destination)
    monkeypatch.setattr(safefs, "_copy", recorded)
    return made


@pytest.fixture
def other_filesystem(tmp_path):
    with mounted_tmpfs(tmp_path / "tmpfs", "1m") as mount:
        yield mount


# -- whole cycles on local runners -------------------------------------------------------------
def test_plain_outputs_are_linked_not_copied_and_get_the_mode_a_copy_gets(tmp_path, copies):
    config = make_config(tmp_path)
    first, second = two_outputs(config, tmp_path, "plain.job")
    assert drain(config, ["plain.job"])["plain.job"]["job"]["status"] == "ok"
    assert first.read_text() == "first\n" and second.read_text() == "second\n"
    assert copies == []
    for path in (first, second):
        assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask(), path
    assert sorted(os.listdir(tmp_path / "outputs")) == ["plain.job.a", "plain.job.b"]     # no temporary left


def test_a_setuid_world_writable_output_is_placed_with_a_copys_mode(tmp_path, copies):
    config = make_config(tmp_path)
    first, second = two_outputs(config, tmp_path, "odd.job", what="odd_mode")
    assert drain(config, ["odd.job"])["odd.job"]["job"]["status"] == "ok"
    assert copies == []
    for path in (first, second):
        mode = path.stat().st_mode
        assert stat.S_IMODE(mode) == 0o666 & ~umask(), oct(mode)
        assert not mode & (stat.S_ISUID | stat.S_ISGID | stat.S_ISVTX | stat.S_IWOTH)


def test_an_output_hard_linked_to_a_file_outside_is_copied_and_the_outside_file_stays_untouched(tmp_path, copies):
    config = make_config(tmp_path)
    outside = tmp_path / "outside.txt"
    outside.write_text("the operator's file\n")
    outside.chmod(0o600)
    before = outside.stat()
    first, second = two_outputs(config, tmp_path, "alias.job", what="hard_link", target=outside)
    assert drain(config, ["alias.job"])["alias.job"]["job"]["status"] == "ok"
    assert first.read_text() == "the operator's file\n"
    assert len(copies) == 1                               # the alias copied, the plain output linked
    assert first.stat().st_ino != before.st_ino and first.stat().st_nlink == 1
    first.write_text("written through the result\n")     # a tool rewriting its result in place
    with open(first, "a") as result:
        result.write("more\n")
    after = outside.stat()
    assert outside.read_text() == "the operator's file\n"
    assert (after.st_mode, after.st_uid, after.st_gid, after.st_mtime_ns) == (
        before.st_mode, before.st_uid, before.st_gid, before.st_mtime_ns)


def test_outputs_bound_for_another_filesystem_are_copied(tmp_path, other_filesystem, copies):
    config = make_config(tmp_path)
    first, second = two_outputs(config, tmp_path, "far.job", folder=other_filesystem)
    assert drain(config, ["far.job"])["far.job"]["job"]["status"] == "ok"
    assert first.read_text() == "first\n" and second.read_text() == "second\n"
    assert len(copies) == 2 and first.stat().st_nlink == 1
    assert sorted(os.listdir(other_filesystem)) == ["far.job.a", "far.job.b"]


def test_the_result_cache_keeps_the_bytes_of_the_run_not_what_a_tool_writes_over_the_result(tmp_path):
    config = make_config(tmp_path)
    first, _ = two_outputs(config, tmp_path, "one.job", cache=True)
    assert drain(config, ["one.job"])["one.job"]["job"]["status"] == "ok"
    first.write_text("a tool rewrote its result\n")
    again, _ = two_outputs(config, tmp_path, "two.job", cache=True)
    block = drain(config, ["two.job"])["two.job"]["job"]
    assert block["status"] == "ok" and block.get("cached") is True
    assert again.read_text() == "first\n"


def test_a_sigkill_while_placing_the_second_output_leaves_the_job_to_be_collected_whole(tmp_path):
    config_path = write_config(tmp_path)
    config = load_config(config_path)
    first, second = two_outputs(config, tmp_path, "crash.job")
    env = dict(os.environ, DROPBOX_RUNNER_FAULT="output_staged")
    once = [sys.executable, "-m", "dropbox_runner.cli", "once", "--config", str(config_path)]
    for _ in range(60):
        if subprocess.run(once, env=env, capture_output=True, timeout=60).returncode == -9:
            break                 # killed with the first output linked, the second not yet placed
    else:
        pytest.fail("the fault point was never reached")
    assert not first.exists() and not second.exists()
    env.pop("DROPBOX_RUNNER_FAULT")
    results = drain(config, ["crash.job"], cycle=lambda: subprocess.run(once, env=env, timeout=60))
    assert results["crash.job"]["job"]["status"] == "ok", results
    assert first.read_text() == "first\n" and second.read_text() == "second\n"


# -- place_files on a job folder held open -----------------------------------------------------
def held_job(tmp_path, names=("a.txt", "b.txt")):
    job = tmp_path / "jobs" / "j1"
    (job / "output").mkdir(parents=True)
    for name in names:
        (job / "output" / name).write_text(f"{name}\n")
    folder = JobFolder(tmp_path / "jobs", "j1", [f"output/{name}" for name in names])
    return job / "output", folder


def test_a_refused_second_output_leaves_the_first_where_it_was_and_nothing_at_either_destination(tmp_path):
    output, folder = held_job(tmp_path)
    destinations = tmp_path / "dest"
    (destinations / "b.txt").mkdir(parents=True)            # only a regular file may be replaced
    with folder, pytest.raises(FileRefused, match="is a folder"):
        place_files([(folder.held["output/a.txt"], str(destinations / "a.txt")),
                     (folder.held["output/b.txt"], str(destinations / "b.txt"))], Boundaries())
    assert os.listdir(destinations) == ["b.txt"]
    assert (output / "a.txt").read_text() == "a.txt\n" and (output / "a.txt").stat().st_nlink == 1


def test_a_full_disk_while_copying_the_second_output_leaves_the_first_where_it_was(tmp_path, monkeypatch):
    output, folder = held_job(tmp_path)
    os.link(output / "b.txt", tmp_path / "alias")                # so b is copied, and the copy fails
    destinations = tmp_path / "dest"
    destinations.mkdir()

    def full(source, destination):
        raise OSError(errno.ENOSPC, "No space left on device")
    monkeypatch.setattr(safefs, "_copy", full)
    with folder, pytest.raises(OSError, match="No space"):
        place_files([(folder.held["output/a.txt"], str(destinations / "a.txt")),
                     (folder.held["output/b.txt"], str(destinations / "b.txt"))], Boundaries())
    assert os.listdir(destinations) == []
    assert (output / "a.txt").read_text() == "a.txt\n" and (output / "a.txt").stat().st_nlink == 1


@pytest.mark.parametrize("swap", ["symlink", "fifo", "other_file"])
def test_an_output_swapped_after_it_was_opened_is_never_what_is_placed(tmp_path, swap, copies):
    output, folder = held_job(tmp_path, ("a.txt",))
    secret = tmp_path / "secret"
    secret.write_text("secret\n")
    with folder:
        os.rename(output / "a.txt", tmp_path / "moved-away")
        if swap == "symlink":
            os.symlink(secret, output / "a.txt")
        elif swap == "fifo":
            os.mkfifo(output / "a.txt")
        else:
            (output / "a.txt").write_text("swapped in\n")
        place_files([(folder.held["output/a.txt"], str(tmp_path / "placed.txt"))], Boundaries())
    placed = os.lstat(tmp_path / "placed.txt")
    assert stat.S_ISREG(placed.st_mode) and (tmp_path / "placed.txt").read_text() == "a.txt\n"
    assert placed.st_ino != os.lstat(output / "a.txt").st_ino and len(copies) == 1


def test_an_output_swapped_between_the_check_and_the_link_is_unlinked_again_and_copied(tmp_path, monkeypatch,
                                                                                         copies):
    output, folder = held_job(tmp_path, ("a.txt",))
    real_link = os.link

    def racing_link(source, target, **kwargs):
        os.rename(output / "a.txt", tmp_path / "moved-away")
        (output / "a.txt").write_text("swapped in\n")           # a regular file of ours, one name
        return real_link(source, target, **kwargs)
    monkeypatch.setattr(safefs.os, "link", racing_link)
    destination = tmp_path / "dest"
    destination.mkdir()
    with folder:
        place_files([(folder.held["output/a.txt"], str(destination / "a.txt"))], Boundaries())
    assert os.listdir(destination) == ["a.txt"] and (destination / "a.txt").read_text() == "a.txt\n"
    assert (output / "a.txt").stat().st_nlink == 1 and len(copies) == 1


def test_in_a_setgid_folder_a_linked_output_gets_the_folders_group_as_a_copy_would(tmp_path, copies):
    output, folder = held_job(tmp_path, ("a.txt",))
    destination = tmp_path / "shared"
    destination.mkdir()
    os.chown(destination, -1, 65534)                          # the tools' group (nogroup here)
    destination.chmod(0o2775)
    (destination / "a-copy.txt").write_text("what a new file gets\n")
    with folder:
        place_files([(folder.held["output/a.txt"], str(destination / "a.txt"))], Boundaries())
    placed, copy = (destination / "a.txt").stat(), (destination / "a-copy.txt").stat()
    assert copies == [] and placed.st_gid == copy.st_gid == 65534 and placed.st_uid == copy.st_uid


def test_an_output_owned_by_another_account_is_copied_so_the_result_is_the_daemons(tmp_path, copies):
    output, folder = held_job(tmp_path, ("a.txt",))
    os.chown(output / "a.txt", 65534, 65534)
    destination = tmp_path / "dest"
    destination.mkdir()
    with folder:
        place_files([(folder.held["output/a.txt"], str(destination / "a.txt"))], Boundaries())
    placed = (destination / "a.txt").stat()
    assert len(copies) == 1 and placed.st_uid == os.geteuid() and placed.st_nlink == 1
    assert (output / "a.txt").stat().st_uid == 65534
