"""Work the submitter did once per job that it now does once per cycle, batch or second
(issue 18, thirteenth round): each test counts the calls that used to grow with the jobs."""
import json
import logging
import os
import shutil
import stat
import subprocess
import sys
from datetime import datetime, timezone
from types import SimpleNamespace

import pytest
from dropbox_runner.on_hpc import files
from helpers import drain, drop, make_config, write_config

from dropbox_runner import durable, isotime, logsetup, outcome, rendering, safefs, staging
from dropbox_runner.dropbox import Dropbox, HeldJob
from dropbox_runner.history import History
from dropbox_runner.jobs import check_files
from dropbox_runner.results import timestamp
from dropbox_runner.seal import HoldSeal
from dropbox_runner.transport.local import LocalTransport


def drop_ledger_jobs(config, outputs, count: int) -> list[str]:
    """``count`` quick uncached jobs, each with one output in ``outputs``; their names."""
    names = [f"j{n}.job" for n in range(count)]
    for n, name in enumerate(names):
        drop(config, name, {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                            "output_map": {"out": str(outputs / f"o{n}.txt")}})
    return names


def test_a_batch_opens_each_folder_once_and_stats_one_file_per_folder(tmp_path, monkeypatch):
    """Each write opened and closed its folder, and the commit stat'ed every temporary to
    find its filesystem: three system calls a file that a burst of 1000 paid 1000 times."""
    staging, target = tmp_path / "staging", tmp_path / "dropbox"
    staging.mkdir(mode=0o700)
    target.mkdir()
    opened, stats = [], []
    real_open, real_stat = os.open, os.stat

    def counting_open(path, flags, *args, **kwargs):
        if flags & os.O_DIRECTORY:
            opened.append(str(path))
        return real_open(path, flags, *args, **kwargs)

    def counting_stat(path, *args, **kwargs):
        stats.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", counting_open)
    monkeypatch.setattr(os, "stat", counting_stat)
    batch = durable.DurableBatch(staging=staging)
    for n in range(50):
        batch.write(target / f"f{n}", f"{n}\n".encode())
    batch.commit()
    assert [(target / f"f{n}").read_text() for n in range(50)] == [f"{n}\n" for n in range(50)]
    assert not os.listdir(staging)
    assert sorted(opened) == sorted([str(staging), str(target)])          # was 50 + 2
    # the staging folder, its parent and the target, checked once a batch; one of the
    # temporaries; the two folders whose renames are synced.  Was 50 temporaries + 5.
    assert len(stats) == 6, stats


def test_without_syncfs_a_batch_still_fsyncs_every_file(tmp_path, monkeypatch):
    """Looking at one file per folder is only for finding filesystems: the fallback
    still syncs every file."""
    monkeypatch.setattr(files, "_SYNCFS", None)
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    batch = durable.DurableBatch()
    for n in range(7):
        batch.write(tmp_path / f"f{n}", b"x")
    batch.commit()
    assert len(synced) == 7 + 1


def test_the_umask_is_read_once_a_cycle_not_once_an_output(tmp_path, monkeypatch):
    """Reading ``/proc/self/status`` for each linked output was 2% of a burst's CPU."""
    reads = []
    real = safefs.current_umask

    def counted():
        reads.append(1)
        return real()

    monkeypatch.setattr(outcome, "current_umask", counted)
    monkeypatch.setattr(safefs, "current_umask", counted)
    config = make_config(tmp_path)
    names = drop_ledger_jobs(config, tmp_path / "outputs", 12)
    cycles = []
    real_cycle = outcome.Finisher.begin_cycle
    monkeypatch.setattr(outcome.Finisher, "begin_cycle", lambda self: cycles.append(1) or real_cycle(self))
    results = drain(config, names)
    assert {result["job"]["status"] for result in results.values()} == {"ok"}
    assert len(reads) == len(cycles), (len(reads), len(cycles))      # was one more per job
    mode = stat.S_IMODE((tmp_path / "outputs" / "o0.txt").stat().st_mode)
    assert mode == 0o666 & ~real(), oct(mode)


def test_a_result_asks_for_earlier_runs_only_where_resubmit_kept_some(tmp_path, monkeypatch):
    """Two queries a result (read the earlier runs, forget them) for what is nearly always
    none: now one query a cycle names the jobs that have any (``resubmit``'s, tested in
    test_cache_and_verbs)."""
    asked = []
    for method in ("earlier_runs", "forget_earlier_runs"):
        real = getattr(History, method)
        monkeypatch.setattr(History, method, lambda self, name, real=real: asked.append(name) or real(self, name))
    config = make_config(tmp_path)
    names = drop_ledger_jobs(config, tmp_path / "outputs", 6)
    assert {result["job"]["status"] for result in drain(config, names).values()} == {"ok"}
    assert asked == []


def test_a_burst_s_holds_are_not_read_back_when_the_process_that_wrote_them_collects_them(tmp_path, monkeypatch):
    """Collection read, parsed and re-sealed every hold it finished (5% of a burst's CPU);
    the holds this process wrote are used as written while their files stay the same ones.
    Past ``WHOLE_HOLDS_KEPT`` (memory for a 100,000-job burst) they are read again."""
    from dropbox_runner import submitter as submitter_module
    from dropbox_runner.submitter import Submitter

    reads = []
    real_read_held = Dropbox.read_held
    monkeypatch.setattr(Dropbox, "read_held", lambda self, name: reads.append(name) or real_read_held(self, name))
    monkeypatch.setattr(submitter_module, "WHOLE_HOLDS_KEPT", 4)
    config = make_config(tmp_path)
    names = drop_ledger_jobs(config, tmp_path / "outputs", 6)
    submitter = Submitter(config, LocalTransport())
    try:
        results = drain(config, names, cycle=submitter.cycle)
    finally:
        submitter.close()
    assert {result["job"]["status"] for result in results.values()} == {"ok"}
    assert len(reads) == 2 and set(reads) < set(names)       # the two past the limit


def test_an_entry_is_measured_for_the_cluster_s_room_as_staged_not_walked_again(tmp_path, monkeypatch):
    """With the cluster's free space known, every cycle walked each outbox entry it sent to
    size it (20 µs a job); the sizes staging wrote are used instead.  Entries another
    process staged (a push that ran out of room, then a restart) are still walked, and the
    two measures agree."""
    from dropbox_runner import submitter as submitter_module
    from dropbox_runner.space import entry_bytes, remember_free
    from dropbox_runner.submitter import Submitter

    walked = []
    monkeypatch.setattr(submitter_module, "entry_bytes",
                        lambda folder: walked.append(folder.name) or entry_bytes(folder))
    config = make_config(tmp_path)
    (tmp_path / "inputs" / "in.txt").write_text("x" * 3000)
    names = [f"j{n}.job" for n in range(3)]
    for n, name in enumerate(names):
        drop(config, name, {"script": "copy", "input_map": {"src": str(tmp_path / "inputs" / "in.txt")}, "cache": False,
                            "output_map": {"dst": str(tmp_path / "outputs" / f"o{n}.txt")}})
    remember_free(config.state_dir, 1 << 30)
    first = Submitter(config, LocalTransport())
    real_push = first.transport.push

    def push(source, destination):
        if destination.endswith("/jobs"):       # the jobs; the code's deploy goes through
            raise OSError("rsync: write failed: No space left on device")
        real_push(source, destination)

    monkeypatch.setattr(first.transport, "push", push)
    try:
        report = first.cycle()
        staged = dict(first._staged_bytes)
    finally:
        first.close()
    assert len(report.unsent) == 3 and walked == []
    sizes = {job_id: entry_bytes(config.state_dir / "outbox" / job_id) for job_id in report.unsent}
    assert staged == sizes and min(sizes.values()) > 3000
    second = Submitter(config, LocalTransport())
    try:
        results = drain(config, names, cycle=second.cycle)
    finally:
        second.close()
    assert sorted(walked) == sorted(report.unsent)
    assert {result["job"]["status"] for result in results.values()} == {"ok"}


@pytest.mark.parametrize("push", ["moved", "copied"])
def test_a_sent_entry_is_removed_from_the_outbox_once_queued_only_where_the_push_left_it(tmp_path, monkeypatch,
                                                                                         push):
    """The local transport moves a new entry into the workspace, yet every queued job's
    entry was removed again (a Path and a failed lookup a job); a copying push (rsync)
    leaves them, and they are removed once queued."""
    from dropbox_runner import submitter as submitter_module
    from dropbox_runner.submitter import Submitter

    config = make_config(tmp_path)
    outbox = str(config.state_dir / "outbox")
    removed = []
    real_rmtree = shutil.rmtree

    def rmtree(path, *args, **kwargs):    # only the outbox's: tempfile's own removals go through it on some Pythons
        if os.path.dirname(str(path)) == outbox:
            removed.append(os.path.basename(path))
        return real_rmtree(path, *args, **kwargs)

    monkeypatch.setattr(submitter_module.shutil, "rmtree", rmtree)
    names = drop_ledger_jobs(config, tmp_path / "outputs", 3)
    submitter = Submitter(config, LocalTransport())
    real_push = submitter.transport.push

    def copy(source, destination):        # the jobs as rsync sends them; the code's deploy as before
        if push == "moved" or not destination.endswith("/jobs"):
            return real_push(source, destination)
        for entry in os.scandir(source):
            if entry.is_dir():
                shutil.copytree(entry.path, os.path.join(destination, entry.name), dirs_exist_ok=True)

    monkeypatch.setattr(submitter.transport, "push", copy)
    try:
        report = submitter.cycle()
        sent = sorted(set(report.held_ids) | set(report.collected_ids))
        assert len(sent) == 3 and report.sent == 3
        assert sorted(removed) == (sent if push == "copied" else [])
        assert not any(name in sent for name in os.listdir(config.state_dir / "outbox"))
        results = drain(config, names, cycle=submitter.cycle)
    finally:
        submitter.close()
    assert {result["job"]["status"] for result in results.values()} == {"ok"}


def test_a_transition_is_two_statements(tmp_path):
    """A row of ``jobs`` is inserted or updated in one upsert, not an insert that may do
    nothing followed by an update: a job passes four transitions in a burst."""
    history = History(tmp_path / "history.sqlite")
    statements = []
    history.db.set_trace_callback(statements.append)
    history.record("a.job", "submitted", "id-1", detail="class default", **{"class": "default"})
    history.record("a.job", "running", runner="r-1")
    history.record("a.job", "finished", "id-1", status="ok", message="processed OK")
    assert len(statements) == 3 * 2, statements
    row = history.jobs()[0]
    assert (row.job_id, row.state, row.status, row.job_class, row.runner) == ("id-1", "finished", "ok", "default",
                                                                              "r-1")
    assert row.first_seen <= row.updated_at
    assert [state for state, _, _ in history.transitions("a.job")] == ["submitted", "running", "finished"]


def test_a_batch_writes_its_transitions_in_one_statement_a_run_in_the_order_recorded(tmp_path):
    """A cycle's transitions go to SQLite together at the end of its batch, each statement
    over its run of rows; what is read inside the batch sees them, and a batch that fails
    writes none of them."""
    history = History(tmp_path / "history.sqlite")
    calls = []

    class Counting:
        def __init__(self, db):
            self.db = db

        def execute(self, sql, *args):
            calls.append(("execute", sql.split()[0]))
            return self.db.execute(sql, *args)

        def executemany(self, sql, rows):
            calls.append(("executemany", len(rows)))
            return self.db.executemany(sql, rows)

    history.db = Counting(history.db)
    with history.batch():
        for n in range(50):
            history.record(f"j{n}.job", "submitted", f"id-{n}", detail="class default", **{"class": "default"})
        for n in range(50):
            history.record(f"j{n}.job", "finished", f"id-{n}", status="ok", message="processed OK")
        assert calls == [("execute", "BEGIN")]
        assert history.counts() == {"finished": 50}       # a read inside the batch sees what it recorded
        history.record("j0.job", "queued", "id-0")
    assert calls[1:] == [("executemany", 100), ("executemany", 50), ("executemany", 50), ("execute", "SELECT"),
                         ("executemany", 1), ("executemany", 1), ("execute", "COMMIT")]
    assert [state for state, _, _ in history.transitions("j0.job")] == ["submitted", "finished", "queued"]
    with pytest.raises(RuntimeError), history.batch():
        history.record("late.job", "submitted", "id-late")
        raise RuntimeError("the cycle failed")
    assert history.transitions("late.job") == [] and history.counts() == {"finished": 49, "queued": 1}


def test_log_times_read_the_same_and_ask_for_the_zone_once_a_second(monkeypatch):
    asked = []

    def counting(second):
        asked.append(second)
        return isotime.local_iso_seconds(second)

    formatter = logsetup.IsoFormatter("%(asctime)s %(message)s")
    stamps = [1795400000 + n / 1000 for n in range(0, 3000, 7)] + [1795400002.9996, 1795400003.0]
    monkeypatch.setattr(logsetup, "local_iso_seconds", counting)
    lines = []
    for stamp in stamps:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", None, None)
        record.created = stamp
        lines.append(formatter.formatTime(record))
    monkeypatch.undo()
    assert len(asked) == 4, len(asked)         # seconds ...00 to ...03; was one per line
    expected = [datetime.fromtimestamp(stamp).astimezone().isoformat(timespec="milliseconds") for stamp in stamps]
    assert lines == expected


@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/St_Johns", "Asia/Kolkata", "Pacific/Chatham",
                                  "America/Caracas", "Europe/Amsterdam"])
def test_result_times_read_as_a_zone_aware_datetime_says_them(zone, monkeypatch):
    """``timestamp`` no longer goes through datetime (2% of collecting): the same text in
    every zone, across daylight-saving changes, on the rounding edge of a second, and for
    a zone whose offset once had seconds (Amsterdam until 1937: +00:19:32)."""
    import time
    monkeypatch.setenv("TZ", zone)
    time.tzset()
    try:
        stamps = [1795400000 + n * 86400 * 7.3 + n / 7 for n in range(60)]
        stamps += [1795400002.9999996, 1795400002.9999994, 0.0, -1_000_000_000.25, 1711846799.5, 1711846800.0]
        for stamp in stamps:
            expected = datetime.fromtimestamp(stamp, timezone.utc).astimezone().isoformat(timespec="seconds")
            assert timestamp(stamp) == expected, stamp
    finally:
        monkeypatch.undo()
        time.tzset()


def test_jinja2_is_imported_by_the_first_render_not_by_a_cycle_with_nothing_to_take(tmp_path):
    """Importing jinja2 was a quarter of the CPU of a ``once`` that finds nothing new,
    which cron runs every minute; a job dropped later is rendered as before."""
    path = write_config(tmp_path)
    check = ("import sys\n"
             "from dropbox_runner.cli import main\n"
             "assert main(['once', '--config', sys.argv[1]]) == 0\n"
             "print(sorted(name for name in sys.modules if name.startswith('dropbox_runner.') and 'submitter' in name),"
             " 'jinja2' in sys.modules)\n")

    def once() -> str:
        done = subprocess.run([sys.executable, "-c", check, str(path)], capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert once() == "['dropbox_runner.submitter'] False"
    config = make_config(tmp_path)
    drop_ledger_jobs(config, tmp_path / "outputs", 1)
    assert once() == "['dropbox_runner.submitter'] True"
    assert not (config.dropbox / "j0.job").exists()        # taken (and maybe already finished)


def test_a_template_is_parsed_once_a_version_and_an_edit_applies_to_the_next_job(tmp_path):
    templates = tmp_path / "templates"
    templates.mkdir()
    template = templates / "say.template"
    template.write_text("# dropbox-runner: class=default\necho one > <<workspace>>/output/<<out>>\n")
    config = make_config(tmp_path, templates=str(templates))
    rendering._parsed.cache_clear()
    names = [f"j{n}.job" for n in range(8)]
    for n, name in enumerate(names):
        drop(config, name, {"script": "say", "cache": False, "output_map": {"out": str(tmp_path / f"o{n}.txt")}})
    assert {result["job"]["status"] for result in drain(config, names).values()} == {"ok"}
    assert rendering._parsed.cache_info().misses == 1        # was a read and a parse per job
    template.write_text("# dropbox-runner: class=default\necho two > <<workspace>>/output/<<out>>\n")
    drop(config, "edited.job", {"script": "say", "cache": False, "output_map": {"out": str(tmp_path / "e.txt")}})
    assert drain(config, ["edited.job"])["edited.job"]["job"]["status"] == "ok"
    assert (tmp_path / "e.txt").read_text() == "two\n" and (tmp_path / "o0.txt").read_text() == "one\n"


def test_a_job_is_rendered_once_where_the_cache_is_off(tmp_path, monkeypatch):
    """The cache key's neutral rendering is made only when a key is."""
    rendered = []
    real = staging.render
    monkeypatch.setattr(staging, "render", lambda *args: rendered.append(1) or real(*args))
    config = make_config(tmp_path)
    names = [f"j{n}.job" for n in range(6)]
    for n, name in enumerate(names):
        drop(config, name, {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                            "output_map": {"out": str(tmp_path / f"o{n}.txt")}})
    drop(config, "cached.job", {"script": "ledger", "args": {"seconds": 0},
                                "output_map": {"out": str(tmp_path / "c.txt")}})
    results = drain(config, [*names, "cached.job"])
    assert {result["job"]["status"] for result in results.values()} == {"ok"}
    assert "cache_key" in results["cached.job"]["job"]["provenance"]
    assert len(rendered) == len(names) + 2, len(rendered)       # was two per job


# -- sixteenth round ---------------------------------------------------------------------------
def test_a_collected_job_s_streams_are_read_by_the_descriptor_held_where_they_lie(tmp_path, monkeypatch):
    """Each stream was opened a second time through ``/proc/self/fd/N`` by a file object:
    twenty system calls a job, and an empty stream was read all the same.  A held output,
    found a regular file when it was opened, was also looked at through it once more."""
    reopened = []
    real_open, real_os_open, real_stat = open, os.open, os.stat

    def counting_open(path, *args, **kwargs):
        if str(path).startswith("/proc/self/fd/"):
            reopened.append(str(path))
        return real_open(path, *args, **kwargs)

    def counting_os_open(path, *args, **kwargs):
        if str(path).startswith("/proc/self/fd/"):
            reopened.append(str(path))
        return real_os_open(path, *args, **kwargs)

    def counting_stat(path, *args, **kwargs):
        if str(path).startswith("/proc/self/fd/"):
            reopened.append(str(path))
        return real_stat(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    monkeypatch.setattr(os, "stat", counting_stat)
    config = make_config(tmp_path)
    jobs = {"quiet.job": (0, "", ""), "chatty.job": (3, "hello there", "oops"),
            "flood.job": ((1 << 20) // 4 + 10, "abc", "")}          # 4 bytes a line: past the MiB kept
    for n, (name, (times, say, complain)) in enumerate(jobs.items()):
        drop(config, name, {"script": "streams", "args": {"times": times, "say": say, "complain": complain},
                            "cache": False, "output_map": {"out": str(tmp_path / "outputs" / f"o{n}.txt")}})
    results = drain(config, list(jobs))
    assert {name: result["job"]["status"] for name, result in results.items()} == dict.fromkeys(jobs, "ok")
    assert not reopened, reopened
    assert (results["quiet.job"]["job"]["stdout"], results["quiet.job"]["job"]["stderr"]) == ("", "")
    assert results["chatty.job"]["job"]["stdout"] == "hello there\n" * 3
    assert results["chatty.job"]["job"]["stderr"] == "oops\n"
    flood = results["flood.job"]["job"]["stdout"]
    assert flood == "[dropbox-runner: first 40 bytes cut]\n" + "abc\n" * ((1 << 20) // 4)


def test_a_new_outbox_entry_is_made_without_looking_for_an_old_one_and_a_leftover_is_rebuilt(tmp_path, monkeypatch):
    """Removing a possible leftover before each entry cost every job a failed lookup (2%
    of intake); the leftover of a crash half-way is still replaced whole."""
    removed = []
    real_rmtree = shutil.rmtree
    monkeypatch.setattr(staging, "shutil", SimpleNamespace(
        rmtree=lambda path, **kwargs: removed.append(path) or real_rmtree(path, **kwargs)))
    config = make_config(tmp_path)
    names = drop_ledger_jobs(config, tmp_path / "outputs", 3)
    assert {result["job"]["status"] for result in drain(config, names).values()} == {"ok"}
    assert not removed, removed

    job = staging.prepare(config, "again.job", {"script": "ledger", "args": {"seconds": 0},
                                                "output_map": {"out": str(tmp_path / "outputs" / "again.txt")}})
    entry = tmp_path / "outbox" / job.job_id
    (entry / "input").mkdir(parents=True)
    (entry / "job.sh").write_text("half a script")
    (entry / "stray").write_text("left by a crash")
    staging.write_outbox_entry(tmp_path / "outbox", job, "me", safefs.Boundaries())
    assert sorted(os.listdir(entry)) == ["job.json", "job.sh"]
    assert (entry / "job.sh").read_text() == job.script
    assert removed == [entry]


def test_an_output_path_is_looked_up_once_when_its_job_is_checked(tmp_path, monkeypatch):
    """The check asked three times what is at an output's path (``lstat``, then
    ``is_symlink`` and ``exists``), for every job taken."""
    output = tmp_path / "out" / "o.txt"
    output.parent.mkdir()
    job = SimpleNamespace(input_map={}, output_map={"out": str(output)})
    looked = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path, *args, real=real, **kwargs:
                            looked.append(str(path)) or real(path, *args, **kwargs))
    assert check_files(job, safefs.Boundaries()) == []
    assert looked.count(str(output)) == 1, looked
    for leave in ("link", "folder"):
        if leave == "link":
            output.symlink_to(tmp_path / "elsewhere.txt")
        else:
            output.unlink()
            output.mkdir()
        assert check_files(job, safefs.Boundaries()) == [
            f"output_map.out: {output} is not a regular file; only a regular file may be replaced"]


def test_an_output_s_folder_is_resolved_by_one_open_not_a_walk(tmp_path, monkeypatch):
    """``realpath`` looked up each component of every output's folder, and ``is_dir``
    looked once more; the folder is opened once instead and the kernel says where it is,
    links and all."""
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "deep" / "er").mkdir(parents=True)
    outside.mkdir()
    (allowed / "away").symlink_to(outside)
    boundaries = safefs.Boundaries(output_roots=(allowed,))
    looked = []
    for name in ("stat", "lstat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda path, *args, real=real, **kwargs:
                            looked.append(str(path)) or real(path, *args, **kwargs))

    def problems(value):
        return check_files(SimpleNamespace(input_map={}, output_map={"out": value}), boundaries)

    assert problems(str(allowed / "deep" / "er" / "o.txt")) == []
    assert looked == [str(allowed / "deep" / "er" / "o.txt")]
    assert problems(str(allowed / "deep" / "er" / ".." / "o.txt")) == []
    assert problems(str(allowed / "away" / "o.txt")) == [
        f"output_map.out: {allowed / 'away' / 'o.txt'} is outside the allowed output folders"]
    missing = allowed / "none" / "o.txt"
    assert problems(str(missing)) == [f"output_map.out: the folder {missing.parent} does not exist"]
    assert problems(str(outside / "none" / "o.txt")) == [
        f"output_map.out: {outside / 'none' / 'o.txt'} is outside the allowed output folders"]


def test_a_hold_is_written_by_json_s_c_encoder(tmp_path, monkeypatch):
    """``indent`` made ``json`` encode every hold in Python, at twice the cost."""
    def python_encoder(*args, **kwargs):
        raise AssertionError("the hold went through json's Python encoder")

    monkeypatch.setattr(json.encoder, "_make_iterencode", python_encoder)
    seal = HoldSeal(tmp_path / "state")
    job = HeldJob("a.job", "vm.a.0123", {"script": "copy", "args": {"n": [1, "é"]}}, "fp", "default", 1.5,
                  "digest", {"inputs": {}})
    Dropbox(tmp_path).hold(job, seal)
    text = (tmp_path / "a.job.submitted").read_text()
    assert text.startswith("{") and json.loads(text)["description"] == job.description
    document = Dropbox(tmp_path).read_held("a.job")
    assert seal.verify(document) and HeldJob.from_document("a.job", document) == job


def test_a_boundary_check_is_two_lookups_and_says_what_the_roots_and_zones_say():
    """A path was compared with each of some fifteen roots and zones in turn (9 µs, three
    checks a job); one set and one prefix tuple answer the same, edges included."""
    from pathlib import Path

    boundaries = safefs.Boundaries(input_roots=(Path("/data"),), output_roots=(Path("/"),),
                                   no_go=(Path("/proc"), Path("/srv/state")))
    assert boundaries.problem(Path("/data"), output=False) is None
    assert boundaries.problem(Path("/data/a/b"), output=False) is None
    assert "outside the allowed input folders" in boundaries.problem(Path("/data2/a"), output=False)
    assert "outside the allowed input folders" in boundaries.problem(Path("/"), output=False)
    assert boundaries.problem(Path("/anything/at/all"), output=True) is None       # the root "/" holds it
    assert boundaries.problem(Path("/srv/state"), output=True) == "is inside /srv/state, which jobs may never use"
    assert boundaries.problem(Path("/srv/state/x"), output=False).startswith("is inside /srv/state")
    assert boundaries.problem(Path("/proc/1/mem"), output=True).startswith("is inside /proc")
    assert boundaries.problem(Path("/srv/stated"), output=True) is None
    assert safefs.Boundaries().problem(Path("/home/x"), output=False) is None        # no roots: anywhere else
    assert safefs.inside(Path("/data/x"), [Path("/data")]) and not safefs.inside(Path("/database"), [Path("/data")])
