"""The daemon's own inotify reader: what it hears, a burst of renames in linear time, and
the kernel's overflow and a removed dropbox told to the operator."""
import errno
import logging
import os
import struct
import time

from helpers import make_config, wait_until
from watchdog.observers.polling import PollingObserver

from dropbox_runner import daemon
from dropbox_runner.inotify import IN_CLOSE_WRITE, IN_MOVED_TO, IN_Q_OVERFLOW, DropboxInotify, parse


class Ears:
    def __init__(self):
        self.heard = []
        self.overflows = 0

    def hear(self, name, complete):
        self.heard.append((name, complete))

    def overflow(self):
        self.overflows += 1


def listening(folder):
    ears = Ears()
    watcher = DropboxInotify(str(folder), ears.hear, ears.overflow)
    watcher.start()
    return ears, watcher


def stopped(watcher):
    watcher.stop()
    watcher.join(timeout=5)
    assert not watcher.is_alive()


def test_only_a_job_file_heard_whole_can_begin_a_burst():
    """A job renamed in, or closed after writing, may run its cycle at once (``Wake``);
    a file only made, a cancellation and a hidden file may not."""
    wake = daemon.Wake()
    handler = daemon.DropHandler(wake)
    for name, complete in (("made.job", False), ("x.job.cancel", True), (".hidden.job", True)):
        handler.heard(name, complete)
        assert not wake.burst_begun, name
        wake.last = 0.0                     # as after a quiet time
    handler.heard("whole.job", True)
    assert wake.burst_begun and "whole.job" in handler.closed


def test_the_daemon_hears_of_new_and_renamed_jobs_but_not_of_reads_and_removals(tmp_path):
    """The cycle's own reads and removals in the dropbox reach no thread of the daemon."""
    config = make_config(tmp_path)
    (config.dropbox / "old.job").write_text("script: a\n")
    elsewhere = tmp_path / "elsewhere.job"
    elsewhere.write_text("script: a\n")
    ears = Ears()
    handler = daemon.DropHandler(daemon.Wake())
    handler.heard = ears.hear
    watcher = daemon._observer(config, handler)
    assert isinstance(watcher, DropboxInotify)
    watcher.start()
    try:
        for _ in range(20):
            (config.dropbox / "old.job").read_text()
        (config.dropbox / "old.job").unlink()
        (config.dropbox / "written.job").write_text("script: a\n")
        os.rename(elsewhere, config.dropbox / "moved.job")
        wait_until(lambda: ("moved.job", True) in ears.heard, 20, what="the rename")
    finally:
        stopped(watcher)
    assert ears.heard == [("written.job", False), ("written.job", True), ("moved.job", True)]


def test_a_burst_of_renames_is_heard_whole_in_time_that_grows_with_it_linearly(tmp_path):
    """watchdog's move pairing searched its backlog for each rename: 10,000 took 5 s of CPU."""
    source, dropbox = tmp_path / "pending", tmp_path / "dropbox"
    source.mkdir()
    dropbox.mkdir()
    count = 10000       # below the kernel's default queue (16384): none may be dropped
    for number in range(count):
        (source / f"t{number}.job").touch()
    ears, watcher = listening(dropbox)
    try:
        started = time.process_time()
        for number in range(count):
            os.rename(source / f"t{number}.job", dropbox / f"t{number}.job")
        wait_until(lambda: len(ears.heard) >= count, 60, what="every rename")
        cpu = time.process_time() - started
    finally:
        stopped(watcher)
    assert ears.heard == [(f"t{number}.job", True) for number in range(count)]
    assert cpu < 2, f"{count} renames and their events took {cpu:.1f} s of CPU"


def test_names_of_every_length_and_encoding_come_back_whole():
    long_name = "j" * 250 + ".job"
    raw = [(IN_MOVED_TO, long_name.encode()), (IN_CLOSE_WRITE, b"caf\xe9.job"), (IN_Q_OVERFLOW, b"")]
    buffer = b""
    for mask, name in raw:
        padded = name + b"\0" * (-len(name) % 16 or (16 if name else 0))
        buffer += struct.pack("iIII", 1, mask, 0, len(padded)) + padded
    assert list(parse(buffer)) == [(IN_MOVED_TO, long_name), (IN_CLOSE_WRITE, os.fsdecode(b"caf\xe9.job")),
                                   (IN_Q_OVERFLOW, "")]


def test_an_overflow_wakes_the_loop_and_says_why(tmp_path, caplog):
    ears, watcher = listening(tmp_path)
    try:
        assert watcher._handle(IN_Q_OVERFLOW, "")
    finally:
        stopped(watcher)
    assert ears.overflows == 1 and "max_queued_events" in caplog.text


def test_a_removed_dropbox_ends_the_watch_with_an_error_not_a_spinning_thread(tmp_path, caplog):
    caplog.set_level(logging.ERROR)
    folder = tmp_path / "dropbox"
    folder.mkdir()
    ears, watcher = listening(folder)
    folder.rmdir()
    wait_until(lambda: not watcher.is_alive(), 10, what="the watcher to end")
    watcher.join(timeout=5)
    assert "new jobs are taken at each tick only" in caplog.text


def test_a_dropbox_inotify_cannot_watch_is_polled_and_the_operator_told_why(tmp_path, monkeypatch, caplog):
    def refused(*args):
        raise OSError(errno.ENOSPC, "inotify_add_watch: No space left on device")

    monkeypatch.setattr(daemon, "DropboxInotify", refused)
    observer = daemon._observer(make_config(tmp_path), daemon.DropHandler(daemon.Wake()))
    assert isinstance(observer, PollingObserver)
    assert "max_user_watches" in caplog.text
