"""The submitter's hot path (issue 18): fewer files made per job on the local backend,
without letting a job's swapped file through."""
import os

import yaml
from helpers import drain, drop, make_config, stop_local_runners, wait_until, write_config

from dropbox_runner.boundaries import boundaries_for
from dropbox_runner.config import load_config
from dropbox_runner.staging import prepare, write_outbox_entry
from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport


def test_a_job_without_inputs_is_staged_without_an_input_folder(tmp_path):
    config = make_config(tmp_path)
    (tmp_path / "inputs" / "a.txt").write_text("hello\n")
    outbox = tmp_path / "outbox"
    plain = prepare(config, "plain.job", {"script": "no_output", "args": {"out": "x"}})
    write_outbox_entry(outbox, plain, config.submitter_id, boundaries_for(config))
    assert sorted(p.name for p in (outbox / plain.job_id).iterdir()) == ["job.json", "job.sh"]
    with_input = prepare(config, "up.job", {"script": "upper", "args": {"label": "x"},
                                            "input_map": {"text": str(tmp_path / "inputs" / "a.txt")},
                                            "output_map": {"upper": str(tmp_path / "outputs" / "a.txt")}})
    write_outbox_entry(outbox, with_input, config.submitter_id, boundaries_for(config))
    assert (outbox / with_input.job_id / "input" / "a.txt").read_text() == "hello\n"


def test_jobs_with_and_without_inputs_run_and_their_outputs_outlive_the_jobs_folder(tmp_path):
    config = make_config(tmp_path)
    (tmp_path / "inputs" / "a.txt").write_text("hello\n")
    drop(config, "up.job", {"script": "upper", "args": {"label": "x"}, "cache": False,
                            "input_map": {"text": str(tmp_path / "inputs" / "a.txt")},
                            "output_map": {"upper": str(tmp_path / "outputs" / "a.txt")}})
    drop(config, "plain.job", {"script": "echo_args", "args": {"first": "1", "second": "2"}, "cache": False,
                               "output_map": {"out": str(tmp_path / "outputs" / "b.txt")}})
    results = drain(config, ["up.job", "plain.job"])
    assert {name: r["job"]["status"] for name, r in results.items()} == {"up.job": "ok", "plain.job": "ok"}
    placed = tmp_path / "outputs" / "a.txt"
    assert placed.read_text() == "HELLO\n"
    # Linked into place (tests/test_collect_move.py): once the collected job's folder is
    # removed (a later cycle), the destination is the output's only name.
    def only_name():
        run_once(config, LocalTransport())
        return placed.stat().st_nlink == 1
    wait_until(only_name, timeout=60, interval=0.2, what="the collected job's folder to be removed")
    assert placed.read_text() == "HELLO\n"
    assert not load_config(tmp_path / "config.yaml").state_dir.joinpath("inbox").exists()   # read in place


def test_watch_takes_a_job_renamed_in_from_another_folder_without_waiting_for_it_to_settle(tmp_path):
    """inotify reports such a rename as a creation unless asked for full events: the job
    then waited settle_seconds as if it were still being written."""
    from test_watch import Watch

    config_path = write_config(tmp_path, settle_seconds=120, tick="1h")
    config = load_config(config_path)
    watch = Watch(config_path, tmp_path / "watch.log")
    watch.start()
    try:
        elsewhere = tmp_path / "elsewhere.job"
        elsewhere.write_text(yaml.safe_dump({"script": "echo_args", "args": {"first": "1", "second": "2"},
                                             "output_map": {"out": str(tmp_path / "outputs" / "c.txt")}}))
        os.rename(elsewhere, config.dropbox / "moved.job")
        watch.wait_for_log("moved.job: taken as", timeout=60)     # not after settle_seconds (120)
    finally:
        watch.stop()
        stop_local_runners(config)


def drop_odd_streams_job(config, tmp_path):
    """odd.job: a job whose stdout is left a FIFO and whose stderr a link to a secret."""
    secret = tmp_path / "secret.txt"
    secret.write_text("the operator's secret\n")
    drop(config, "odd.job", {"script": "odd_streams", "args": {"secret": str(secret)}, "cache": False,
                             "output_map": {"out": str(tmp_path / "outputs" / "odd.txt")}})


def test_a_job_leaving_a_fifo_and_a_link_as_its_streams_is_collected_without_them(tmp_path):
    config = make_config(tmp_path)
    drop_odd_streams_job(config, tmp_path)
    block = drain(config, ["odd.job"], timeout=60)["odd.job"]["job"]
    assert block["status"] == "ok", block
    assert "secret" not in str(block)
    assert (tmp_path / "outputs" / "odd.txt").read_text() == "done\n"


def test_a_bystander_of_a_job_leaving_a_fifo_and_a_link_is_collected_in_the_same_cycle(tmp_path):
    """One job's odd streams are that job's problem: the plain job beside it is not held back."""
    from dropbox_runner.dropbox import Dropbox
    from dropbox_runner.submitter import run_once

    config = make_config(tmp_path)
    drop_odd_streams_job(config, tmp_path)
    drop(config, "plain.job", {"script": "echo_args", "args": {"first": "1", "second": "2"}, "cache": False,
                               "output_map": {"out": str(tmp_path / "outputs" / "plain.txt")}})
    both = {"odd.job", "plain.job"}
    seen = []

    def cycle():
        run_once(config, LocalTransport())
        seen.append(both & set(Dropbox(config.dropbox).scan().finished))

    results = drain(config, sorted(both), timeout=60, cycle=cycle)
    assert {name: r["job"]["status"] for name, r in results.items()} == {"odd.job": "ok", "plain.job": "ok"}
    first = next(done for done in seen if done)
    assert first == both or first == {"plain.job"}, seen    # never the odd job alone first


def test_watchdogs_observer_where_there_is_no_inotify_hears_only_what_the_daemon_acts_on(tmp_path):
    """The cycle's own reads and removals in the dropbox reach no watchdog thread (the
    fallback on platforms without inotify; ``test_inotify.py`` for the reader used here)."""
    from watchdog.events import FileSystemEventHandler

    from dropbox_runner import daemon

    (tmp_path / "old.job").write_text("script: a\n")
    heard = []

    class Counting(FileSystemEventHandler):
        def dispatch(self, event):
            heard.append((event.event_type, os.path.basename(event.dest_path or event.src_path)))

    observer = daemon._native_observer()
    observer.schedule(Counting(), str(tmp_path), recursive=False, event_filter=daemon.WATCHED_EVENTS)
    observer.start()
    try:
        for _ in range(20):
            (tmp_path / "old.job").read_text()
        (tmp_path / "old.job").unlink()
        (tmp_path / "elsewhere.job").write_text("script: a\n")
        os.rename(tmp_path / "elsewhere.job", tmp_path / "moved.job")
        wait_until(lambda: ("moved", "moved.job") in heard, 20, what="the rename")
    finally:
        observer.stop()
        observer.join(timeout=5)
    assert all(kind in ("created", "moved", "closed") for kind, _ in heard), heard
