"""The whole pipeline on the embedded local backend: drop, stage, run, collect."""
import os
import time
from pathlib import Path

import yaml
from helpers import drain, drop, result, run_cli, wait_until, write_config

from dropbox_runner.client import submit_and_wait
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport

HOSTILE = ["; touch /tmp/dbr-pwned-x", "$(touch /tmp/dbr-pwned-y)", "`touch /tmp/dbr-pwned-z`",
           "it's \"quoted\"", "two\nlines", "ünïcødé ✓ 日本"]


def copy_job(config, number, text="hello"):
    source = Path(config.dropbox).parent / "inputs" / f"in{number}.txt"
    source.write_text(f"{text} {number}\n")
    return {"script": "copy", "input_map": {"src": str(source)},
            "output_map": {"dst": str(Path(config.dropbox).parent / "outputs" / f"out{number}.txt")}}


def test_a_burst_goes_through_with_outputs_in_place(config):
    names = [f"job{i}.job" for i in range(12)]
    for i, name in enumerate(names):
        drop(config, name, copy_job(config, i))
    results = drain(config, names)
    for i, name in enumerate(names):
        block = results[name]["job"]
        assert block["status"] == "ok", block
        assert block["rc"] == 0 and block["message"] == "processed OK"
        assert block["stdout"] == f"copied in{i}.txt\n"
        assert block["start"] and block["end"] and block["runner"] and block["attempts"] == 1
        assert results[name]["script"] == "copy"          # the description is kept
        assert (Path(config.dropbox).parent / "outputs" / f"out{i}.txt").read_text() == f"hello {i}\n"
    listing = Dropbox(config.dropbox).scan()
    assert listing.new == [] and listing.submitted == []
    # Once collected, nothing of the jobs stays in the cluster workspace.
    run_once(config, LocalTransport())
    assert os.listdir(Path(config.workspace) / "jobs") == []


def test_hostile_arguments_reach_the_script_literally(config):
    out = Path(config.dropbox).parent / "outputs"
    names = []
    for i, value in enumerate(HOSTILE):
        names.append(f"hostile{i}.job")
        drop(config, names[-1], {"script": "echo_args", "args": {"first": value, "second": "-n"},
                                 "output_map": {"out": str(out / f"h{i}.txt")}})
    results = drain(config, names)
    for i, value in enumerate(HOSTILE):
        assert results[names[i]]["job"]["status"] == "ok"
        assert (out / f"h{i}.txt").read_text(encoding="utf-8") == f"{value}\n-n\n"
    assert not any(Path(f"/tmp/dbr-pwned-{c}").exists() for c in "xyz")


def test_bad_jobs_get_clear_error_results_and_never_block_the_others(config):
    base = Path(config.dropbox).parent
    (config.dropbox / "malformed.job").write_text("script: [unclosed\n")
    (config.dropbox / "empty.job").write_text("")
    (config.dropbox / "list.job").write_text("- a\n- b\n")
    drop(config, "unknown_script.job", {"script": "no_such_tool", "output_map": {"o": str(base / "o.txt")}})
    drop(config, "missing_input.job", {"script": "copy", "input_map": {"src": str(base / "nope.txt")},
                                       "output_map": {"dst": str(base / "outputs" / "x.txt")}})
    drop(config, "unset_variable.job", {"script": "echo_args", "args": {"first": 1},
                                        "output_map": {"out": str(base / "outputs" / "y.txt")}})
    drop(config, "no output dir.job", {"script": "copy", "input_map": {"src": str(base / "config.yaml")},
                                       "output_map": {"dst": "/no/such/dir/z.txt"}})
    drop(config, "good.job", copy_job(config, 1))
    expected = {
        "malformed.job": "not valid YAML", "empty.job": "empty", "list.job": "must hold a mapping",
        "unknown_script.job": "there is no template", "missing_input.job": "does not exist",
        "unset_variable.job": "uses <<second>>", "no output dir.job": "/no/such/dir does not exist",
    }
    results = drain(config, [*expected, "good.job"])
    for name, message in expected.items():
        block = results[name]["job"]
        assert block["status"] == "error" and block["rc"] == -1, (name, block)
        assert message in block["message"], (name, block["message"])
    assert results["good.job"]["job"]["status"] == "ok"
    assert results["missing_input.job"]["script"] == "copy"   # description echoed back
    assert not list(config.dropbox.glob("*.job"))


def test_a_failing_script_leaves_no_output_and_reports_rc_and_stderr(config):
    out = Path(config.dropbox).parent / "outputs" / "never.txt"
    drop(config, "fails.job", {"script": "fail", "output_map": {"out": str(out)}})
    drop(config, "forgets.job", {"script": "no_output", "output_map": {"out": str(out)}})
    results = drain(config, ["fails.job", "forgets.job"])
    failed = results["fails.job"]["job"]
    assert failed["status"] == "error" and failed["rc"] == 3
    assert failed["message"] == "Remote command failed with return code 3"
    assert failed["stderr"] == "something went wrong\n"
    forgot = results["forgets.job"]["job"]
    assert forgot["status"] == "error" and "did not write out" in forgot["message"]
    assert not out.exists()
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]


def test_a_job_killed_by_a_signal_gets_an_error_not_a_requeue(config):
    drop(config, "killed.job", {"script": "self_kill", "output_map": {}})
    block = drain(config, ["killed.job"])["killed.job"]["job"]
    assert block["status"] == "error" and block["signal"] == "SIGKILL"
    assert block["rc"] == 137 and block["attempts"] == 1


def test_inputs_with_the_same_base_name_do_not_overwrite_each_other(config):
    base = Path(config.dropbox).parent
    for folder in ("a", "b"):
        (base / folder).mkdir()
        (base / folder / "data.txt").write_text(f"from {folder}\n")
    out = base / "outputs" / "both.txt"
    drop(config, "two.job", {"script": "two_inputs", "input_map": {"a": str(base / "a" / "data.txt"),
                                                                  "b": str(base / "b" / "data.txt")},
                             "output_map": {"out": str(out)}})
    assert drain(config, ["two.job"])["two.job"]["job"]["status"] == "ok"
    assert out.read_text() == "from a\nfrom b\n"


def test_a_job_still_being_written_is_not_taken_before_it_settles(config_factory):
    import threading
    config = config_factory(grace_seconds=30, settle_seconds=1)
    path = config.dropbox / "slow.job"
    path.write_text("script: copy\ninput_map:\n  src: /tm")
    done = threading.Event()
    writer = threading.Thread(target=lambda: [os.utime(path) for _ in iter(lambda: done.wait(0.2), True)])
    writer.start()                   # a slow writer: the file keeps changing through the cycle
    try:
        run_once(config, LocalTransport())
    finally:
        done.set()
        writer.join()
    assert (config.dropbox / "slow.job").exists()
    assert result(config, "slow.job") is None
    job = copy_job(config, 7)
    (config.dropbox / "slow.job").write_text(yaml.safe_dump(job))
    assert drain(config, ["slow.job"])["slow.job"]["job"]["status"] == "ok"


def test_a_job_past_its_grace_period_is_failed(config_factory):
    config = config_factory(grace_seconds=1)
    (config.dropbox / "stuck.job").write_text("script: copy\ninput_map:\n  src: /tm")
    old = time.time() - 5
    os.utime(config.dropbox / "stuck.job", (old, old))
    assert "invalid job" in drain(config, ["stuck.job"])["stuck.job"]["job"]["message"]


def test_submit_and_wait_is_the_hpc_batch_client_call(config):
    import threading
    stop = threading.Event()

    def cron():
        while not stop.is_set():
            run_once(config, LocalTransport())
            time.sleep(0.2)

    thread = threading.Thread(target=cron)
    thread.start()
    try:
        answer = submit_and_wait(str(config.dropbox), copy_job(config, 3), period=0.2)
    finally:
        stop.set()
        thread.join()
    assert answer["job"]["status"] == "ok" and answer["script"] == "copy"
    assert list(config.dropbox.iterdir()) == [config.dropbox / ".dropbox-runner"]


def test_cli_once_status_and_submit(config, tmp_path):
    config_path = str(tmp_path / "config.yaml")
    job_file = tmp_path / "one.yaml"
    job_file.write_text(yaml.safe_dump(copy_job(config, 5)))
    dropped = run_cli("submit", str(config.dropbox), str(job_file))
    assert dropped.returncode == 0 and dropped.stdout.strip().endswith(".job")
    status = run_cli("status", "--config", config_path, "--json")
    assert yaml.safe_load(status.stdout)["jobs"]["waiting"] == 1
    def cycle_and_look():
        assert run_cli("once", "--config", config_path).returncode == 0
        return Path(dropped.stdout.strip() + ".finished").exists()
    wait_until(cycle_and_look, 30, 0.2, "the result")
    text = run_cli("status", "--config", config_path).stdout
    assert "finished 1" in text and "runners:" in text


def test_cluster_command_failure_is_reported_and_jobs_wait(config, tmp_path):
    drop(config, "waits.job", copy_job(config, 9))
    broken = write_config(tmp_path, python="/nonexistent/python3")
    done = run_cli("once", "--config", str(broken))
    assert done.returncode == 4 and "jobs wait for the next cycle" in done.stderr
    assert not (config.dropbox / "waits.job.finished").exists()
    assert (config.dropbox / "waits.job.submitted").exists()


def test_a_second_cycle_while_one_runs_does_nothing_and_exits_0(config, tmp_path):
    from dropbox_runner.lock import cycle_lock
    drop(config, "wait.job", copy_job(config, 4))
    with cycle_lock(config.lockfile) as locked:
        assert locked
        done = run_cli("once", "--config", str(tmp_path / "config.yaml"))
    assert done.returncode == 0 and "another cycle is running" in done.stderr
    assert (config.dropbox / "wait.job").exists()


def test_a_hand_edited_submitted_file_ends_in_a_clear_error(config):
    drop(config, "edited.job", copy_job(config, 6))
    drop(config, "garbled.job", copy_job(config, 8))
    run_once(config, LocalTransport())
    held = config.dropbox / "edited.job.submitted"
    held.write_text(held.read_text().replace("copy", "checksum"))
    (config.dropbox / "garbled.job.submitted").write_text("{{{ not yaml")
    results = drain(config, ["edited.job", "garbled.job"])
    assert "edited after the job was taken" in results["edited.job"]["job"]["message"]
    assert "cannot be read" in results["garbled.job"]["job"]["message"]


def test_a_hold_edited_between_two_cycles_of_one_submitter_is_checked_again(config):
    """The watch daemon's cycles do not re-check a hold they verified while its file stays
    the same one; an edit makes it another file, and the seal is checked again."""
    from dropbox_runner.submitter import Submitter

    drop(config, "edited.job", {"script": "sleep_then_write", "args": {"seconds": 3}, "cache": False,
                                "output_map": {"out": str(Path(config.dropbox).parent / "outputs" / "slept.txt")}})
    submitter = Submitter(config, LocalTransport())
    try:
        submitter.cycle()
        submitter.cycle()                               # verified, then remembered
        held = config.dropbox / "edited.job.submitted"
        held.write_text(held.read_text().replace("sleep_then_write", "copy"))
        drop(config, "bystander.job", copy_job(config, 7))
        results = drain(config, ["edited.job", "bystander.job"], cycle=submitter.cycle)
    finally:
        submitter.close()
    assert "edited after the job was taken" in results["edited.job"]["job"]["message"]
    assert results["bystander.job"]["job"]["status"] == "ok"
