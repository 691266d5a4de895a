"""Faults on the cluster side (issue 12, item 2), with the local backend's cluster folder on
a real small tmpfs: a job that fills the disk, an input that cannot fit, a finished record
that cannot be read for a while, a runner's heartbeat file removed."""
import json
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.sweep import trash_entries
from helpers import drain, drop, stop_runners_in, wait_until

from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import Submitter, run_once
from dropbox_runner.transport.local import LocalTransport


@pytest.fixture
def small_cluster(tmp_path):
    """The local backend's cluster folder (workspace, scripts, runners) on a 4 MiB tmpfs."""
    mount = tmp_path / "cluster"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    yield mount
    stop_runners_in(mount / "workspace")     # before config_factory's teardown would: they hold the mount
    if subprocess.run(["umount", str(mount)], check=False).returncode:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def free_bytes(path):
    info = os.statvfs(path)
    return info.f_bavail * info.f_frsize


def job_of(config, script, out, **keys):
    return {"script": script, "cache": False,
            "output_map": {"out": str(config.dropbox.parent / "outputs" / out)}, **keys}


def output_job(config, kib, name):
    return job_of(config, "big_output", f"{name}.bin", args={"kib": kib})


def ledger_job(config, number):
    return job_of(config, "ledger", f"l{number}.txt", args={"seconds": 0})


def test_a_job_whose_output_fills_the_cluster_disk_fails_and_frees_it(config_factory, small_cluster):
    config = config_factory(cluster_root=str(small_cluster))
    drop(config, "hog.job", output_job(config, 8000, "hog"))
    block = drain(config, ["hog.job"])["hog.job"]["job"]
    assert block["status"] == "error" and block["attempts"] == 1, block
    assert "disk was full" in block["message"] and "output was removed" in block["message"]
    assert not (config.dropbox.parent / "outputs" / "hog.bin").exists()
    drop(config, "after.job", output_job(config, 512, "after"))
    assert drain(config, ["after.job"])["after.job"]["job"]["status"] == "ok"
    run_once(config, LocalTransport())
    assert os.listdir(Path(config.workspace) / "jobs") == []
    wait_until(lambda: free_bytes(small_cluster) > 3 << 20, 30, what="the sweep to free the collected jobs' room")


def test_a_bystander_beside_a_job_that_fills_the_disk_is_recorded_in_the_same_cycle(config_factory, small_cluster):
    """The runner's batch of ends that the full disk refuses comes back to its loop, which
    records each job alone: the hog's error (its output removed) and the bystander's
    success, collected by the same cycle.  On a loaded machine the bystander may start only
    once the hog has filled the disk; it then runs again (the tests below), a pass later."""
    config = config_factory(cluster_root=str(small_cluster))
    drop(config, "hog.job", output_job(config, 8000, "hog"))
    drop(config, "bystander.job", ledger_job(config, 1))
    cycles, first_seen = [0], {}

    def cycle():
        run_once(config, LocalTransport())
        cycles[0] += 1
        for name in Dropbox(config.dropbox).scan().finished:
            first_seen.setdefault(name, cycles[0])

    results = drain(config, ["hog.job", "bystander.job"], cycle=cycle)
    assert results["hog.job"]["job"]["status"] == "error" and "disk was full" in results["hog.job"]["job"]["message"]
    bystander = results["bystander.job"]["job"]
    assert bystander["status"] == "ok", bystander
    assert first_seen["bystander.job"] <= first_seen["hog.job"] or bystander["attempts"] == 2, first_seen


def test_a_job_that_failed_on_a_disk_another_filled_runs_again_though_its_end_is_seen_later(
        config_factory, small_cluster):
    """The victim fails while the filler keeps the disk full, but ends only after the runner
    removed the filler's output: the disk has room when the victim's end is seen, yet it ran
    on a full disk, so the fault is the environment's and the victim runs again."""
    config = config_factory(cluster_root=str(small_cluster))
    ledger = config.dropbox.parent / "ledger"
    ledger.with_suffix(".fill").touch()
    drop(config, "victim.job", job_of(config, "full_disk_victim", "victim.txt"))
    drop(config, "filler.job", job_of(config, "fill_disk_until_victim", "filler.bin"))
    results = drain(config, ["filler.job", "victim.job"])
    filler, victim = results["filler.job"]["job"], results["victim.job"]["job"]
    assert filler["status"] == "error" and "disk was full" in filler["message"], filler
    assert victim["status"] == "ok" and victim["attempts"] == 2, victim
    assert (config.dropbox.parent / "outputs" / "victim.txt").read_text() == "done\n"


def test_a_job_started_on_a_disk_another_filled_runs_again(config_factory, small_cluster):
    """A job that starts only once its neighbour has filled the disk cannot write a byte; it
    did not fill the disk, so it runs again rather than failing (on a loaded machine the
    bystander of the test above may start that late)."""
    config = config_factory(cluster_root=str(small_cluster))
    ledger = config.dropbox.parent / "ledger"
    drop(config, "holder.job", job_of(config, "hold_until_disk_full", "holder.txt", cpus=3))
    drop(config, "filler.job", job_of(config, "fill_disk_until_victim", "filler.bin"))
    run_once(config, LocalTransport())
    wait_until(ledger.with_suffix(".holding").exists, 30, what="the holder to start")
    drop(config, "victim.job", job_of(config, "full_disk_victim", "victim.txt"))
    run_once(config, LocalTransport())            # staged while the disk has room; queued behind the holder
    ledger.with_suffix(".fill").touch()
    results = drain(config, ["holder.job", "filler.job", "victim.job"])
    filler, victim = results["filler.job"]["job"], results["victim.job"]["job"]
    assert filler["status"] == "error" and "disk was full" in filler["message"], filler
    assert victim["status"] == "ok" and victim["attempts"] == 2, victim


def huge_input_job(tmp_path):
    huge = tmp_path / "inputs" / "huge.bin"
    with open(huge, "wb") as handle:
        handle.truncate(6 << 20)
    return {"script": "copy", "input_map": {"src": str(huge)}, "cache": False,
            "output_map": {"dst": str(tmp_path / "outputs" / "huge.bin")}}


@pytest.mark.parametrize("hint", ["known", "stale"])
def test_an_input_that_cannot_fit_fails_that_job_not_the_push(config_factory, small_cluster, tmp_path, hint):
    """``known``: the last cycle's answer said how much room there is; ``stale``: the disk
    filled since, so the push itself runs out of space (the jobs wait one cycle)."""
    config = config_factory(cluster_root=str(small_cluster))
    drop(config, "first.job", ledger_job(config, 0))
    first = drain(config, ["first.job"])["first.job"]["job"]
    drop(config, "huge.job", huge_input_job(tmp_path))
    drop(config, "small.job", ledger_job(config, 1))
    submitter = Submitter(config, LocalTransport())
    try:
        if hint == "stale":
            (config.state_dir / "workspace-space.json").write_text('{"free_bytes": 1000000000}')
            report = submitter.cycle()
            assert any("ran out of space" in error for error in report.environment_errors)
            assert not (config.dropbox / "huge.job.finished").exists()
        results = drain(config, ["huge.job", "small.job"], cycle=submitter.cycle)
        submitter.cycle()
    finally:
        submitter.close()
    huge_block = results["huge.job"]["job"]
    assert huge_block["status"] == "error" and "do not fit in the cluster workspace" in huge_block["message"]
    assert results["small.job"]["job"]["status"] == "ok"
    ran = Counter((tmp_path / "ledger").read_text().split())
    assert ran == Counter({first["id"]: 1, results["small.job"]["job"]["id"]: 1})
    assert os.listdir(Path(config.workspace) / "jobs") == []       # nothing of the huge job is left
    assert free_bytes(small_cluster) > 3 << 20


def test_a_finished_record_that_cannot_be_read_just_now_is_collected_later(config):
    drop(config, "flaky.job", ledger_job(config, 1))
    run_once(config, LocalTransport())
    job_id = yaml.safe_load((config.dropbox / "flaky.job.submitted").read_text())["id"]
    done = Path(config.workspace) / "done" / job_id
    wait_until(done.exists, timeout=60, what="the job to be done (its runner runs without cycles)")
    record = Path(config.workspace) / "jobs" / job_id / "finished.json"
    aside = record.with_name("finished.json.aside")
    os.replace(record, aside)
    record.mkdir()                 # reading it now fails (EISDIR), as an EIO would
    submitter = Submitter(config, LocalTransport())
    try:
        report = submitter.cycle()
    finally:
        submitter.close()
    assert any("cannot read its finished record just now" in error for error in report.cluster_errors)
    assert not (config.dropbox / "flaky.job.finished").exists()
    record.rmdir()
    os.replace(aside, record)
    block = drain(config, ["flaky.job"])["flaky.job"]["job"]
    assert block["status"] == "ok" and block["attempts"] == 1
    assert (config.dropbox.parent / "ledger").read_text().split() == [block["id"]]


def test_a_runner_whose_heartbeat_file_vanished_writes_it_again(config):
    drop(config, "long.job", {"script": "ledger", "args": {"seconds": 14}, "cache": False,
                              "output_map": {"out": str(config.dropbox.parent / "outputs" / "long.txt")}})
    runners = Path(config.workspace) / "runners"
    alive = wait_until(lambda: run_once(config, LocalTransport()) and False or list(runners.glob("*.alive.json")),
                       timeout=30, what="a runner")
    alive[0].unlink()
    wait_until(alive[0].exists, timeout=30, what="the heartbeat file written again")
    block = drain(config, ["long.job"])["long.job"]["job"]
    assert block["status"] == "ok" and block["attempts"] == 1
    assert (config.dropbox.parent / "ledger").read_text().split() == [block["id"]]


def test_a_disk_filled_by_someone_else_is_not_the_jobs_fault(config_factory, small_cluster):
    """The runner's log, the job's record and its output share the full disk: the runner
    lives on, the job is handed back (not failed for another's files) and runs again once
    there is room, exactly once to completion."""
    config = config_factory(cluster_root=str(small_cluster), max_attempts=50,
                            classes={"default": {"slots": 4, "idle_timeout": 60}})
    drop(config, "first.job", output_job(config, 8, "first"))
    assert drain(config, ["first.job"])["first.job"]["job"]["status"] == "ok"
    drop(config, "squeezed.job", {"script": "sleep_then_write", "args": {"seconds": 2}, "cache": False,
                                  "output_map": {"out": str(config.dropbox.parent / "outputs" / "sq.txt")}})
    run_once(config, LocalTransport())
    runners = Path(config.workspace) / "runners"
    claimed = wait_until(lambda: list((Path(config.workspace) / "claimed").glob("*/*")), timeout=30,
                         what="the job claimed")
    job_id = claimed[0].name
    # The first job's folder, removed by a sweep after the cycle that collected it, must be
    # gone before the disk is filled: freed after, it made room for the run's output (a
    # runner rung by the cycle claims the job before the sweep is done).
    store = JobStore(config.workspace)
    wait_until(lambda: not trash_entries(store), timeout=30, what="the sweep to finish")
    filler = small_cluster / "filler"
    subprocess.run(["dd", "if=/dev/zero", f"of={filler}", "bs=4k"], capture_output=True)
    assert free_bytes(small_cluster) < 64 * 1024
    # The run fails writing its output; its end cannot be recorded on the full disk.
    claim = store.claim_of(job_id)
    wait_until(lambda: not os.path.exists(f"/proc/{claim['pgid']}"), timeout=30, what="the run to end")
    runner_pid = json.loads(next(runners.glob("*.alive.json")).read_text())["pid"]
    assert os.path.exists(f"/proc/{runner_pid}")        # the runner outlived the full disk
    filler.unlink()
    block = drain(config, ["squeezed.job"])["squeezed.job"]["job"]
    assert block["status"] == "ok" and block["attempts"] == 2, block
    assert os.path.exists(f"/proc/{runner_pid}")        # and it handed the job back itself


def test_a_hold_that_cannot_be_read_just_now_loses_nothing_on_the_cluster(config, monkeypatch):
    """EIO on a .submitted: its job waits, and the cluster keeps its done run for it (it is
    not in this cycle's in_flight, so nothing collected is removed in this cycle)."""
    import errno

    from dropbox_runner.dropbox import Dropbox as DropboxClass

    drop(config, "done.job", ledger_job(config, 1))
    run_once(config, LocalTransport())
    job_id = yaml.safe_load((config.dropbox / "done.job.submitted").read_text())["id"]
    wait_until((Path(config.workspace) / "done" / job_id).exists, timeout=60, what="the job done")
    drop(config, "busy.job", {"script": "ledger", "args": {"seconds": 3}, "cache": False,
                              "output_map": {"out": str(config.dropbox.parent / "outputs" / "busy.txt")}})
    real_read = DropboxClass.read

    def flaky(self, name, suffix="", *rest):
        if name == "done.job" and suffix == ".submitted":
            raise OSError(errno.EIO, "Input/output error")
        return real_read(self, name, suffix, *rest)

    monkeypatch.setattr(DropboxClass, "read", flaky)
    submitter = Submitter(config, LocalTransport())
    try:
        report = submitter.cycle()
    finally:
        submitter.close()
    assert any("done.job" in error and "Input/output error" in error for error in report.environment_errors)
    assert not (config.dropbox / "done.job.finished").exists()
    assert (Path(config.workspace) / "jobs" / job_id / "finished.json").exists()     # kept for it
    monkeypatch.setattr(DropboxClass, "read", real_read)
    results = drain(config, ["done.job", "busy.job"])
    assert results["done.job"]["job"]["status"] == "ok" and results["done.job"]["job"]["id"] == job_id
    ran = Counter((config.dropbox.parent / "ledger").read_text().split())
    assert ran == Counter({job_id: 1, results["busy.job"]["job"]["id"]: 1})
