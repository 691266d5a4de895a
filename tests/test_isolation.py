"""One bad entry or one fault never stalls the dropbox (issue 12): for each kind, a
bystander dropped beside it finishes ok, the bad entry gets a clear result or one log
line, and nothing is lost or run twice."""
import logging
import os
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import TEST_TEMPLATES, drain, drop, result

from dropbox_runner.dropbox import Dropbox
from dropbox_runner.status import format_status, gather_status
from dropbox_runner.submitter import Submitter, run_once
from dropbox_runner.transport.local import LocalTransport


def bystander(config, number=0):
    name = f"bystander{number}.job"
    drop(config, name, {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                        "output_map": {"out": str(config.dropbox.parent / "outputs" / f"b{number}.txt")}})
    return name


def ledger(config):
    path = config.dropbox.parent / "ledger"
    return Counter(path.read_text().split()) if path.exists() else Counter()


def assert_each_ran_once(config, results):
    """Every ok job of ``results`` ran exactly once, and nothing else ran."""
    ran = ledger(config)
    ok_ids = {block["job"]["id"] for block in results.values() if block["job"]["status"] == "ok"}
    assert set(ran) == ok_ids and set(ran.values()) <= {1}, ran


def make_fifo(path):
    os.mkfifo(path)


def make_folder(path):
    path.mkdir()


def make_socket(path):
    import socket
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.close()


UNUSABLE = {
    "a folder named x.job": ("dir.job", make_folder, "it is a folder"),
    "a FIFO named x.job": ("pipe.job", make_fifo, "it is a FIFO"),
    "a socket named x.job": ("sock.job", make_socket, "it is a socket"),
    "a name too long for .submitted": ("n" * 246 + ".job", lambda p: p.write_text("script: ledger\n"),
                                       "too long"),
    "a folder named x.job.cancel": ("ghost.job.cancel", make_folder, "it is a folder"),
    "a folder named x.job.submitted": ("held.job.submitted", make_folder, "it is a folder"),
}


@pytest.mark.parametrize("kind", sorted(UNUSABLE))
def test_an_unusable_entry_is_logged_once_listed_in_status_and_blocks_nobody(config, kind, caplog):
    entry, make, why = UNUSABLE[kind]
    make(config.dropbox / entry)
    name = bystander(config)
    caplog.set_level(logging.WARNING)
    results = drain(config, [name])
    for _ in range(2):
        run_once(config, LocalTransport())
    assert results[name]["job"]["status"] == "ok"
    assert_each_ran_once(config, results)
    said = [record for record in caplog.records if entry in record.getMessage()]
    assert len(said) == 1 and why in said[0].getMessage(), [r.getMessage() for r in said]
    assert os.path.lexists(config.dropbox / entry)          # left alone
    status = gather_status(config, LocalTransport())
    assert why in status["unusable"][entry]
    assert f"unusable entry {entry!r}" in format_status(status)


def test_a_folder_where_a_result_must_go_blocks_only_its_own_job(config, caplog):
    drop(config, "blocked.job", {"script": "ledger", "args": {"seconds": 0},
                                 "output_map": {"out": str(config.dropbox.parent / "outputs" / "x.txt")}})
    (config.dropbox / "blocked.job.finished").mkdir()
    name = bystander(config)
    caplog.set_level(logging.WARNING)
    results = drain(config, [name])
    run_once(config, LocalTransport())
    assert results[name]["job"]["status"] == "ok"
    assert_each_ran_once(config, results)                    # the blocked job was never run
    assert (config.dropbox / "blocked.job").exists()
    said = [record.getMessage() for record in caplog.records if "'blocked.job'" in record.getMessage()]
    assert len(said) == 1 and "blocked.job.finished is in the way" in said[0]


BAD_JOB_FILES = {
    "alias bomb": ("".join(f"{c}: &{c} [{', '.join(['*' + p] * 9)}]\n" for p, c in zip("abcdefgh", "bcdefghi"))
                   .join(["a: &a [x, x, x, x, x, x, x, x, x]\n", "script: ledger\n"]), "expands to more than"),
    "deep nesting": ("script: ledger\nargs: " + "[" * 20000 + "]" * 20000 + "\n", "nests deeper than"),
    "wide document": ("script: ledger\nargs: [" + "1, " * 250000 + "1]\n", "more than"),
    "infinite expected_time": ("script: ledger\nexpected_time: .inf\n", "expected_time:"),
    "NaN expected_time": ("script: ledger\nexpected_time: .nan\n", "expected_time:"),
    "NUL byte in a path": ('script: ledger\ninput_map: {i: "/tmp/a\\0b"}\n', "NUL"),
    "path component over NAME_MAX": (f"script: ledger\ninput_map: {{i: /tmp/{'x' * 300}}}\n", "input_map.i"),
    "random bytes": (os.urandom(3000).decode("latin-1"), ""),
    "a list of mappings": ("- a: 1\n- b: 2\n", "must hold a mapping"),
    "ten thousand unknown keys": ("script: ledger\n" + "".join(f"k{n}: 1\n" for n in range(10000)),
                                  "more characters cut"),
}


@pytest.mark.parametrize("kind", sorted(BAD_JOB_FILES))
def test_a_hostile_job_file_gets_a_clear_error_result_at_once(config, kind):
    text, expected = BAD_JOB_FILES[kind]
    (config.dropbox / "bad.job").write_bytes(text.encode("utf-8", "surrogateescape"))
    name = bystander(config)
    results = drain(config, ["bad.job", name], timeout=90)
    block = results["bad.job"]["job"]
    assert block["status"] == "error" and block["rc"] == -1 and expected in block["message"], block
    assert len(block["message"]) < 5000
    assert results[name]["job"]["status"] == "ok"
    assert_each_ran_once(config, results)


@pytest.mark.parametrize("folder", ["fifo", "file", "loop"])
def test_an_output_whose_folder_is_no_folder_gets_an_error_result_at_once(config, folder):
    """The output's folder is resolved by opening it (``jobs._resolved_folder``): a FIFO
    there must not block the open, and a file or a link loop is no folder."""
    where = config.dropbox.parent / "outputs" / "odd"
    if folder == "fifo":
        os.mkfifo(where)
    elif folder == "file":
        where.write_text("")
    else:
        os.symlink(where, where)
    drop(config, "odd.job", {"script": "ledger", "args": {"seconds": 0}, "output_map": {"out": str(where / "o.txt")}})
    name = bystander(config)
    results = drain(config, ["odd.job", name])
    block = results["odd.job"]["job"]
    assert block["status"] == "error" and "output_map.out" in block["message"], block
    assert results[name]["job"]["status"] == "ok"
    assert_each_ran_once(config, results)


def test_inputs_that_are_symlink_loops_get_an_error_result(config):
    loop = config.dropbox.parent / "inputs" / "loop"
    os.symlink(loop, loop)
    drop(config, "loop.job", {"script": "copy", "input_map": {"src": str(loop)},
                              "output_map": {"dst": str(config.dropbox.parent / "outputs" / "l.txt")}})
    name = bystander(config)
    results = drain(config, ["loop.job", name])
    assert results["loop.job"]["job"]["status"] == "error"
    assert "input_map.src" in results["loop.job"]["job"]["message"]
    assert results[name]["job"]["status"] == "ok"


def test_a_job_file_that_is_a_symlink_is_never_followed(config, tmp_path):
    secret = tmp_path / "secret.yaml"
    secret.write_text(yaml.safe_dump({"script": "ledger", "args": {"seconds": 0}, "password": "hunter2"}))
    os.symlink(secret, config.dropbox / "link.job")
    os.symlink("/dev/zero", config.dropbox / "zero.job")
    name = bystander(config)
    results = drain(config, ["link.job", "zero.job", name])
    for bad in ("link.job", "zero.job"):
        block = results[bad]["job"]
        assert block["status"] == "error" and "symbolic link" in block["message"]
        assert not os.path.lexists(config.dropbox / bad)
    assert "hunter2" not in (config.dropbox / "link.job.finished").read_text()
    assert secret.exists()
    assert results[name]["job"]["status"] == "ok"


def test_a_job_that_parses_but_is_invalid_is_rejected_in_the_first_cycle_despite_grace(config_factory):
    config = config_factory(grace_seconds=300)
    drop(config, "invalid.job", {"script": "no_such_template"})
    (config.dropbox / "unparsed.job").write_text("script: [")
    run_once(config, LocalTransport())
    assert "there is no template" in result(config, "invalid.job")["job"]["message"]
    assert result(config, "unparsed.job") is None and (config.dropbox / "unparsed.job").exists()


def test_a_job_written_in_place_is_taken_only_once_settled(config_factory):
    """A cron cycle waits (up to settle_seconds) for a file that just changed, and leaves
    one that keeps changing for a later cycle."""
    import threading
    import time

    config = config_factory(settle_seconds=2)
    path = drop(config, "slow.job", {"script": "no_such_template"})
    done = threading.Event()
    writer = threading.Thread(target=lambda: [os.utime(path) for _ in iter(lambda: done.wait(0.2), True)])
    writer.start()
    try:
        started = time.monotonic()
        run_once(config, LocalTransport())
        assert time.monotonic() - started >= 2           # it waited within the cycle...
        assert result(config, "slow.job") is None         # ...but the file never settled
    finally:
        done.set()
        writer.join()
    drop(config, "fresh.job", {"script": "no_such_template"})
    run_once(config, LocalTransport())                    # both settle within this cycle
    for name in ("slow.job", "fresh.job"):
        assert "there is no template" in result(config, name)["job"]["message"]


def test_a_file_still_being_written_never_holds_back_the_jobs_taken_beside_it(config_factory):
    """In a burst (``once``, ``watch``), a cycle that takes other jobs leaves a file that
    has not settled to the next cycle, which the burst runs at once: the jobs taken are
    staged and queued first, not after a wait of up to settle_seconds for that one file."""
    import time

    from dropbox_runner.submitter import run_burst

    config = config_factory(settle_seconds=2)
    names = [bystander(config, number) for number in range(3)]
    for name in names:
        old = time.time() - 60
        os.utime(config.dropbox / name, (old, old))      # written a minute ago: settled
    late = bystander(config, 3)                          # written in place just now: not yet
    started = time.monotonic()
    reports = run_burst(config, LocalTransport())
    assert (reports[0].taken, reports[0].more_new) == (3, True)
    assert reports[0].seconds < 1.5                      # it did not wait for the late file
    assert sum(report.taken for report in reports) == 4 and time.monotonic() - started >= 1.5
    results = drain(config, names + [late])
    assert [results[name]["job"]["status"] for name in names + [late]] == ["ok"] * 4
    assert_each_ran_once(config, results)


def test_a_job_renamed_in_is_taken_by_a_cron_cycle_without_waiting_to_settle(config_factory):
    """The rename shows in the file's ctime, past the mtime of its last write: `once` sees
    the file is complete as `watch` sees the move."""
    import time

    config = config_factory(settle_seconds=30)
    written = config.dropbox.parent / "renamed.job"
    written.write_text(yaml.safe_dump({"script": "no_such_template"}))
    path = config.dropbox / "renamed.job"
    os.rename(written, path)
    while os.lstat(path).st_ctime_ns <= os.lstat(path).st_mtime_ns:     # renamed within the write's tick
        os.rename(path, written)
        os.rename(written, path)
    started = time.monotonic()
    run_once(config, LocalTransport())
    assert time.monotonic() - started < 10
    assert "there is no template" in result(config, "renamed.job")["job"]["message"]


def test_a_job_the_client_submits_is_taken_by_a_cron_cycle_at_once(config_factory):
    """submit writes, renames and fsyncs within one clock tick; it marks the file finished
    (its mtime set back after the write) so `once` need not wait for it to settle."""
    import time

    from dropbox_runner.client import submit

    config = config_factory(settle_seconds=30)
    path = submit(config.dropbox, {"script": "no_such_template"}, name="client")
    assert Dropbox(config.dropbox).settled("client.job", 30)
    started = time.monotonic()
    run_once(config, LocalTransport())
    assert time.monotonic() - started < 10
    assert "there is no template" in result(config, path.name)["job"]["message"]


def test_a_job_written_in_place_and_touched_still_waits_to_settle(config_factory):
    """Setting a file's times to now moves its ctime and mtime together: not taken for a rename."""
    config = config_factory(settle_seconds=30)
    path = drop(config, "touched.job", {"script": "no_such_template"})
    os.utime(path)
    assert Dropbox(config.dropbox).settled("touched.job", 30) is False


def test_a_file_from_a_server_whose_clock_runs_ahead_still_settles(config_factory):
    config = config_factory(settle_seconds=1)
    path = drop(config, "ahead.job", {"script": "no_such_template"})
    future = os.stat(path).st_mtime + 3600
    os.utime(path, (future, future))
    run_once(config, LocalTransport())       # unchanged through the whole wait: taken
    assert "there is no template" in result(config, "ahead.job")["job"]["message"]


def test_a_job_the_watch_daemon_saw_closed_is_taken_without_settling(config_factory):
    config = config_factory(settle_seconds=30)
    drop(config, "closed.job", {"script": "no_such_template"})
    submitter = Submitter(config, LocalTransport())
    try:
        submitter.intake.closed.add("closed.job")
        submitter.cycle()
    finally:
        submitter.close()
    assert "there is no template" in result(config, "closed.job")["job"]["message"]


def test_an_exception_in_one_jobs_intake_becomes_its_error_result(config, monkeypatch, caplog):
    from dropbox_runner import intake

    real = intake.prepare

    def explode_for_one(config_, name, raw, *rest, **options):
        if name == "cursed.job":
            raise KeyError("something nobody foresaw")
        return real(config_, name, raw, *rest, **options)

    monkeypatch.setattr(intake, "prepare", explode_for_one)
    drop(config, "cursed.job", {"script": "ledger", "args": {"seconds": 0}})
    name = bystander(config)
    results = drain(config, ["cursed.job", name])
    block = results["cursed.job"]["job"]
    assert block["status"] == "error" and "internal error while taking in the job: KeyError" in block["message"]
    assert "Traceback" in caplog.text
    assert results[name]["job"]["status"] == "ok"


def test_a_garbled_finished_record_on_the_cluster_fails_only_its_job(config):
    """The run's record is written where the job's own script can write: untrusted."""
    drop(config, "liar.job", {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                              "output_map": {"out": str(config.dropbox.parent / "outputs" / "l.txt")}})
    submitter = Submitter(config, LocalTransport())
    original = submitter.collector._finish

    def garble(job, record):
        if job.name == "liar.job":
            record = type(record).from_json(dict(record.to_json(), rc="not a number", start="yesterday"))
        return original(job, record)

    submitter.collector._finish = garble
    name = bystander(config)
    try:
        results = drain(config, ["liar.job", name], cycle=submitter.cycle)
    finally:
        submitter.close()
    assert results["liar.job"]["job"]["status"] == "error"
    assert "collecting its run: ValueError" in results["liar.job"]["job"]["message"]
    assert results[name]["job"]["status"] == "ok"
    assert not (config.dropbox / "liar.job.submitted").exists()


@pytest.fixture
def read_only_outputs(tmp_path):
    """An output folder that can be turned read-only (a bind mount remounted ro)."""
    folder = tmp_path / "outputs" / "ro"
    folder.mkdir(parents=True)
    subprocess.run(["mount", "--bind", str(folder), str(folder)], check=True)
    yield folder
    subprocess.run(["umount", "-l", str(folder)], check=False)


def test_an_output_folder_made_read_only_while_the_job_runs(config, read_only_outputs):
    drop(config, "ro.job", {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                            "output_map": {"out": str(read_only_outputs / "out.txt")}})
    run_once(config, LocalTransport())
    assert (config.dropbox / "ro.job.submitted").exists()
    subprocess.run(["mount", "-o", "remount,ro,bind", str(read_only_outputs)], check=True)
    name = bystander(config)
    results = drain(config, ["ro.job", name])
    block = results["ro.job"]["job"]
    assert block["status"] == "error" and "Read-only file system" in block["message"], block
    assert results[name]["job"]["status"] == "ok"
    assert os.listdir(read_only_outputs) == []


def test_a_corrupt_history_is_moved_aside_and_rebuilt_with_one_warning(config, caplog):
    first = bystander(config, 1)
    drain(config, [first])
    database = config.state_dir / "history.sqlite"
    for suffix in ("-wal", "-shm"):
        Path(f"{database}{suffix}").unlink(missing_ok=True)
    database.write_bytes(os.urandom(8192))
    caplog.set_level(logging.WARNING)
    second = bystander(config, 2)
    results = drain(config, [second])
    run_once(config, LocalTransport())
    assert results[second]["job"]["status"] == "ok"
    warnings = [r.getMessage() for r in caplog.records if "history.sqlite" in r.getMessage()]
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "rebuilt" in warnings[0]
    assert len(list(config.state_dir.glob("history.sqlite.corrupt-*"))) == 1
    from dropbox_runner.history import History
    history = History(database)
    try:
        rows = {row.name: row for row in history.jobs()}
    finally:
        history.close()
    assert rows[first].state == "finished" and rows[second].state == "finished"


@pytest.fixture
def full_outbox(config):
    """The submitter's outbox on a 256 KiB tmpfs, filled to the last byte."""
    outbox = config.state_dir / "outbox"
    outbox.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(outbox)], check=True)
    filler = outbox / "filler"
    try:
        with open(filler, "wb") as handle:
            while True:
                handle.write(b"\0" * 4096)
                handle.flush()
    except OSError:
        pass
    yield filler
    if subprocess.run(["umount", str(outbox)], check=False).returncode:
        subprocess.run(["umount", "-l", str(outbox)], check=False)


def test_a_full_disk_here_makes_jobs_wait_not_fail(config, full_outbox, caplog):
    names = [bystander(config, number) for number in range(3)]
    submitter = Submitter(config, LocalTransport())
    try:
        report = submitter.cycle()
        assert report.environment_errors and "No space left" in report.environment_errors[0]
        listing = Dropbox(config.dropbox).scan()
        assert sorted(listing.new) == names and not listing.finished     # waiting, none failed
        full_outbox.unlink()                                              # the operator frees space
        results = drain(config, names, cycle=submitter.cycle)
    finally:
        submitter.close()
    assert all(results[name]["job"]["status"] == "ok" for name in names)
    assert_each_ran_once(config, results)


def test_a_locked_history_is_waited_for(config, caplog):
    import sqlite3
    import threading

    first = bystander(config, 1)
    drain(config, [first])
    blocker = sqlite3.connect(str(config.state_dir / "history.sqlite"), isolation_level=None,
                              check_same_thread=False)
    blocker.execute("BEGIN EXCLUSIVE")
    release = threading.Timer(2.0, lambda: blocker.execute("COMMIT"))
    release.start()
    try:
        second = bystander(config, 2)
        results = drain(config, [second])
    finally:
        release.join()
        blocker.close()
    assert results[second]["job"]["status"] == "ok"
    assert not list(config.state_dir.glob("history.sqlite.corrupt-*"))
    assert "database is locked" not in caplog.text       # waited for, not failed on


def test_the_watch_daemon_takes_a_file_written_in_place_once_closed_never_half_written(tmp_path):
    """settle_seconds is 60, so only the close-write event can explain a take within it."""
    import subprocess
    import sys
    import time

    from helpers import stop_local_runners, wait_until, write_config

    from dropbox_runner.config import load_config

    config_path = write_config(tmp_path, settle_seconds=60)
    config = load_config(config_path)
    log = tmp_path / "watch.log"
    with open(log, "a") as output:
        daemon = subprocess.Popen([sys.executable, "-m", "dropbox_runner.cli", "watch", "--config", str(config_path)],
                                  stdout=output, stderr=output)
    try:
        wait_until(lambda: "watching" in log.read_text(), timeout=30, what="the daemon watching")
        text = yaml.safe_dump({"script": "ledger", "args": {"seconds": 0}, "cache": False,
                               "output_map": {"out": str(tmp_path / "outputs" / "slow.txt")}})
        with open(config.dropbox / "slow.job", "w") as handle:      # written in place, in two parts
            handle.write(text[: len(text) // 2])
            handle.flush()
            time.sleep(1.5)                                          # events (created, modified) meanwhile
            handle.write(text[len(text) // 2:])
        started = time.monotonic()
        block = wait_until(lambda: result(config, "slow.job"), timeout=45, what="the result")["job"]
        assert block["status"] == "ok", block                        # never taken half-written
        assert time.monotonic() - started < 45
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        stop_local_runners(config)


def test_a_full_cache_disk_never_holds_back_a_result(config_factory, tmp_path):
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(cache)], check=True)
    try:
        config = config_factory(cache_dir=str(cache))
        drop(config, "big.job", {"script": "big_output", "args": {"kib": 200},
                                 "output_map": {"out": str(tmp_path / "outputs" / "big.bin")}})
        name = bystander(config)
        results = drain(config, ["big.job", name])
        assert results["big.job"]["job"]["status"] == "ok"
        assert (tmp_path / "outputs" / "big.bin").stat().st_size == 200 * 1024
        assert results[name]["job"]["status"] == "ok"
        assert not [p for p in cache.rglob("*") if p.name.startswith(".partial-")]
    finally:
        if subprocess.run(["umount", str(cache)], check=False).returncode:
            subprocess.run(["umount", "-l", str(cache)], check=False)


def test_an_arg_named_true_is_its_jobs_invalid_result_and_the_job_beside_it_runs(config, tmp_path):
    """`true:` as an arg's name (YAML reads a boolean) once crashed the job id's sort."""
    (config.dropbox / "bool_key.job").write_text("script: ledger\nargs: {seconds: 0, true: 1}\n")
    (config.dropbox / "plain.job").write_text(
        f"script: ledger\ncache: false\nargs: {{seconds: 0}}\noutput_map: {{out: {tmp_path / 'plain.txt'}}}\n")
    report = run_once(config, LocalTransport())
    assert report.rejected == 1 and report.taken == 1
    assert "True: keys must be identifiers" in result(config, "bool_key.job")["job"]["message"]
    assert drain(config, ["plain.job"])["plain.job"]["job"]["status"] == "ok"


def test_a_broken_template_fails_only_its_jobs_and_its_fix_applies_to_the_next(config_factory, tmp_path):
    """Templates are parsed once per version of their file: a broken one is the job's error
    (the bystander of another template runs), and once fixed the next job uses the fix."""
    templates = tmp_path / "templates"
    templates.mkdir()
    (templates / "ledger.template").write_text((TEST_TEMPLATES / "ledger.template").read_text())
    broken = templates / "say.template"
    broken.write_text("# dropbox-runner: expected_time=soon\necho hi > <<workspace>>/output/<<out>>\n")
    config = config_factory(templates=str(templates))
    say = {"script": "say", "cache": False, "output_map": {"out": str(tmp_path / "outputs" / "say.txt")}}
    drop(config, "say.job", say)
    name = bystander(config)
    results = drain(config, ["say.job", name])
    assert results["say.job"]["job"]["status"] == "error"
    assert "expected_time" in results["say.job"]["job"]["message"]
    assert results[name]["job"]["status"] == "ok"
    broken.write_text("# dropbox-runner: expected_time=1m\necho hi > <<workspace>>/output/<<out>>\n")
    drop(config, "again.job", say)
    assert drain(config, ["again.job"])["again.job"]["job"]["status"] == "ok"
    assert (tmp_path / "outputs" / "say.txt").read_text() == "hi\n"
