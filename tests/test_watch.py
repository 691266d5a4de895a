"""The watch daemon on the local backend: events, signals, the shared lock, metrics."""
import logging
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from helpers import run_cli, stop_local_runners, wait_until, write_config

from dropbox_runner.client import submit
from dropbox_runner.config import load_config
from dropbox_runner.slices import FIRST_SLICE, IntakeSlices


class Watch:
    def __init__(self, config_path: Path, log_path: Path):
        self.config_path = config_path
        self.log_path = log_path
        self.process = None

    def start(self):
        self.log = open(self.log_path, "a")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "dropbox_runner.cli", "watch", "--config", str(self.config_path)],
            stdout=self.log, stderr=self.log)
        self.wait_for_log("watching")

    def wait_for_log(self, text, timeout=15):
        def logged():
            assert self.process.poll() is None, self.log_path.read_text()
            return text in self.log_path.read_text()
        wait_until(logged, timeout, what=f"{text!r} in the log")

    def stop(self, signum=signal.SIGTERM):
        if self.process and self.process.poll() is None:
            self.process.send_signal(signum)
            self.process.wait(timeout=30)
        self.log.close()


@pytest.fixture
def watched(tmp_path):
    started = []

    def start(**overrides):
        config_path = write_config(tmp_path, **overrides)
        watch = Watch(config_path, tmp_path / "watch.log")
        watch.start()
        started.append((watch, load_config(config_path)))
        return watch, started[-1][1]

    yield start
    for watch, config in started:
        watch.stop()
        stop_local_runners(config)


def ledger_job(config, number, seconds=0):
    return {"script": "ledger", "args": {"seconds": seconds}, "cache": False,
            "output_map": {"out": str(Path(config.dropbox).parent / "outputs" / f"o{number}.txt")}}


def wait_for_results(paths, timeout=30):
    wait_until(lambda: all(Path(f"{path}.finished").exists() for path in paths), timeout, what="every result")
    return [yaml.safe_load(Path(f"{path}.finished").read_text()) for path in paths]


@pytest.mark.parametrize("observer", ["inotify", "polling"])
def test_dropped_jobs_go_through_without_cron(watched, observer):
    watch, config = watched(observer=observer, tick="1h")
    renamed = submit(config.dropbox, ledger_job(config, 0))          # temp file + rename
    created = config.dropbox / "created.job"
    created.write_text(yaml.safe_dump(ledger_job(config, 1)))        # written in place
    for result in wait_for_results([renamed, created], timeout=20):
        assert result["job"]["status"] == "ok"
    log = watch.log_path.read_text()
    for change in ("created.job: taken as", "created.job: staged and queued", "created.job: finished ok"):
        assert change in log


def test_sigterm_mid_burst_and_a_restart_lose_nothing(watched, tmp_path):
    watch, config = watched(tick="1h")
    paths = [submit(config.dropbox, ledger_job(config, i, 0.5)) for i in range(20)]
    watch.wait_for_log("taken as")             # mid-burst: some jobs taken, most still running
    watch.stop(signal.SIGTERM)
    assert watch.process.returncode == 0
    assert "stopped" in watch.log_path.read_text()
    watch.start()
    results = wait_for_results(paths, timeout=60)
    assert all(result["job"]["status"] == "ok" for result in results)
    ledger = Counter((tmp_path / "ledger").read_text().split())
    assert len(ledger) == 20 and set(ledger.values()) == {1}


def test_only_the_main_thread_can_take_the_daemons_signals(watched, tmp_path):
    """Else a SIGTERM taken by a helper thread waits for the main thread's next wake."""
    watch, config = watched(tick="1h")
    wait_for_results([submit(config.dropbox, ledger_job(config, 0))])      # the waiter has worked
    pid = watch.process.pid
    wanted = sum(1 << (signum - 1) for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP))

    def blocked(task):
        status = Path(f"/proc/{pid}/task/{task}/status").read_text()
        return int(status.split("SigBlk:")[1].split()[0], 16) & wanted == wanted

    tasks = sorted(int(task) for task in os.listdir(f"/proc/{pid}/task"))
    assert len(tasks) >= 3 and tasks[0] == pid                 # main, observer, waiter (at least)
    assert not blocked(pid)
    assert all(blocked(task) for task in tasks[1:])


def test_sighup_reloads_the_config(watched, tmp_path):
    watch, config = watched(tick="1h")
    wait_for_results([submit(config.dropbox, ledger_job(config, 0))])
    write_config(tmp_path, tick="1h", hpc_env={"ledger": str(tmp_path / "ledger2")})
    watch.process.send_signal(signal.SIGHUP)
    watch.wait_for_log("config reloaded")
    wait_for_results([submit(config.dropbox, ledger_job(config, 1))])
    assert len((tmp_path / "ledger2").read_text().split()) == 1
    assert len((tmp_path / "ledger").read_text().split()) == 1


def test_a_cron_cycle_beside_the_daemon_does_nothing(watched, tmp_path):
    watch, config = watched(tick="1h")
    done = run_cli("once", "--config", str(tmp_path / "config.yaml"))
    assert done.returncode == 0 and "another cycle is running" in done.stderr


def test_metrics_textfile_is_written(watched, tmp_path):
    metrics = tmp_path / "metrics" / "dropbox_runner.prom"
    metrics.parent.mkdir()
    watch, config = watched(tick="1h", metrics_file=str(metrics))
    wait_for_results([submit(config.dropbox, ledger_job(config, 0))])
    wait_until(lambda: metrics.exists() and 'dropbox_runner_results_total{status="ok"} 1' in metrics.read_text(),
               10, 0.1, "the ok result in the metrics")
    text = metrics.read_text()
    for name in ("dropbox_runner_dropbox_jobs", "dropbox_runner_runner_submissions_total 1",
                 "dropbox_runner_cycle_duration_seconds_count", "dropbox_runner_last_success_timestamp_seconds"):
        assert name in text


def test_a_burst_larger_than_a_slice_is_taken_by_cycles_that_follow_at_once(watched, tmp_path):
    """The daemon takes a slice of the new jobs a cycle, so the first slice runs while the
    rest is read; the next cycle must come at once, not at the next tick or event (here an
    hour away, and every job was there before the daemon started)."""

    config_path = write_config(tmp_path, tick="1h")
    config = load_config(config_path)
    paths = []
    for n in range(FIRST_SLICE + 30):
        paths.append(config.dropbox / f"j{n:04d}.job")
        paths[-1].write_text("script: no_such_template\n")
        os.utime(paths[-1], (1, 1))         # long settled
    watch = Watch(config_path, tmp_path / "watch.log")
    watch.start()
    try:
        results = wait_for_results(paths, timeout=60)
    finally:
        watch.stop()
    assert all("there is no template" in result["job"]["message"] for result in results)


def test_once_collects_the_jobs_it_took_when_they_end_within_the_gathering_time(config_factory, monkeypatch):
    """Jobs that end moments after the burst that took them were collected by the next
    ``once``, a cron period later; the call now waits for them (the cluster answers when
    the last one ends) and collects them in one more cycle."""
    from dropbox_runner import submitter
    from dropbox_runner.submitter import run_burst
    from dropbox_runner.transport.local import LocalTransport

    monkeypatch.setattr(submitter, "MAX_GATHER_SECONDS", 60)     # however slow this machine
    config = config_factory()
    (config.dropbox / "quick.job").write_text(yaml.safe_dump(
        {"script": "echo_args", "args": {"first": "1", "second": "2"}, "cache": False,
         "output_map": {"out": str(config.dropbox.parent / "outputs" / "quick.txt")}}))
    reports = run_burst(config, LocalTransport())
    assert [(r.taken, r.finished_ok) for r in reports] == [(1, 0), (0, 1)]
    assert (config.dropbox / "quick.job.finished").exists()


def test_once_goes_on_collecting_while_the_jobs_it_took_keep_ending(config_factory, monkeypatch):
    """Jobs ending one after another, further apart in all than the gathering time: the
    call gathered only when every one ended within it, and otherwise left even those
    already done to the next call.  It now collects them in rounds as they end."""
    from dropbox_runner import submitter
    from dropbox_runner.submitter import run_burst
    from dropbox_runner.transport.local import LocalTransport

    monkeypatch.setattr(submitter, "MAX_GATHER_SECONDS", 3)
    config = config_factory()
    names = []
    for seconds in (0, 2, 4):
        names.append(f"s{seconds}.job")
        (config.dropbox / names[-1]).write_text(yaml.safe_dump(
            {"script": "sleep", "args": {"seconds": str(seconds)}, "cache": False,
             "output_map": {"out": str(config.dropbox.parent / "outputs" / f"s{seconds}.txt")}}))
    reports = run_burst(config, LocalTransport())
    assert reports[0].taken == 3 and sum(report.finished_ok for report in reports) == 3
    assert len(reports) >= 3          # collected in rounds, as they ended
    assert all((config.dropbox / f"{name}.finished").exists() for name in names)


def test_once_leaves_jobs_still_running_after_the_gathering_time_to_the_next_call(config_factory, monkeypatch):
    import time

    from dropbox_runner import submitter
    from dropbox_runner.submitter import run_burst
    from dropbox_runner.transport.local import LocalTransport

    monkeypatch.setattr(submitter, "MAX_GATHER_SECONDS", 0.3)
    config = config_factory()
    (config.dropbox / "slow.job").write_text(yaml.safe_dump(
        {"script": "sleep", "args": {"seconds": "30"}, "cache": False,
         "output_map": {"out": str(config.dropbox.parent / "outputs" / "slow.txt")}}))
    started = time.monotonic()
    reports = run_burst(config, LocalTransport())
    assert [r.taken for r in reports] == [1] and time.monotonic() - started < 20
    assert (config.dropbox / "slow.job.submitted").exists()


def test_the_loops_own_call_for_a_bursts_next_slice_waits_for_no_quiet_time():
    """A file event starts a quiet time (let the burst of events end); the loop's call for
    its next slice is no event: it cost 50 ms a slice, two seconds over 10,000 jobs."""
    import time

    from dropbox_runner.daemon import QUIET_SECONDS, Wake

    wake = Wake()
    wake.set()
    started = time.monotonic()
    wake.debounce()
    assert time.monotonic() - started >= QUIET_SECONDS
    time.sleep(QUIET_SECONDS)
    wake.again()
    assert wake.event.is_set()
    started = time.monotonic()
    wake.debounce()
    assert time.monotonic() - started < QUIET_SECONDS / 2 and not wake.event.is_set()


def test_the_quiet_time_ends_quiet_seconds_after_the_last_event_not_a_nap_later():
    """A burst renamed in at once is a few ms of events; the loop that napped a whole
    quiet time at each look started its first cycle up to two quiet times after them."""
    import threading
    import time

    from dropbox_runner.daemon import QUIET_SECONDS, Wake

    wake = Wake()
    wake.set()
    later = threading.Timer(QUIET_SECONDS * 0.1, wake.set)      # the burst's last event
    later.start()
    wake.debounce()
    later.join()
    after_last = time.monotonic() - wake.last       # napping whole quiet times: 1.9 of them
    assert QUIET_SECONDS <= after_last < QUIET_SECONDS * 1.6 and not wake.event.is_set()


def test_a_job_heard_whole_after_a_quiet_time_runs_its_cycle_at_once():
    """That cycle takes one slice however much of the burst has come: waiting for quiet
    only held back its runner's request (a 1000-job burst's first job started 60 ms later,
    a lone job was queued 60 ms after its drop instead of 15)."""
    import time

    from dropbox_runner.daemon import QUIET_SECONDS, Wake

    wake = Wake()
    wake.set(job_arrived=True)
    started = time.monotonic()
    wake.debounce()
    assert time.monotonic() - started < QUIET_SECONDS / 2 and not wake.event.is_set()


def test_a_bursts_later_events_and_a_job_only_made_still_wait_for_quiet():
    """Only the first job of a burst goes at once: the next cycles take what the quiet
    time gathers, and a job written in place is heard made, then whole a moment later."""
    import time

    from dropbox_runner.daemon import QUIET_SECONDS, Wake

    wake = Wake()
    wake.set(job_arrived=True)
    wake.debounce()                         # the burst's first cycle
    wake.set(job_arrived=True)              # more of the same burst
    started = time.monotonic()
    wake.debounce()
    assert time.monotonic() - started >= QUIET_SECONDS
    time.sleep(QUIET_SECONDS)
    wake.set()                              # a job file made, still being written
    wake.set(job_arrived=True)              # ...and closed
    started = time.monotonic()
    wake.debounce()
    assert time.monotonic() - started >= QUIET_SECONDS


def test_the_daemon_takes_a_lone_job_without_waiting_for_quiet(tmp_path, monkeypatch):
    """End to end, with a quiet time long enough to see: the daemon idle, a job renamed
    in gets its result (an error: no such template) well within it."""
    import threading
    import time

    from dropbox_runner import daemon as daemon_module
    from dropbox_runner.daemon import Daemon

    monkeypatch.setattr(daemon_module, "QUIET_SECONDS", 3.0)
    monkeypatch.setattr(daemon_module, "MAX_DEBOUNCE_SECONDS", 5.0)
    daemon = Daemon(write_config(tmp_path, tick="1h"))
    loop = threading.Thread(target=daemon._serve)
    loop.start()
    try:
        time.sleep(0.5)                     # the start's own cycle, then quiet
        written = tmp_path / "lone.job.part"
        written.write_text("script: no_such_template\n")
        started = time.monotonic()
        os.rename(written, tmp_path / "dropbox" / "lone.job")
        wait_until(lambda: (tmp_path / "dropbox" / "lone.job.finished").exists(), 20, what="the result")
        assert time.monotonic() - started < 2.0
    finally:
        daemon.stopping = True
        daemon.wake.again()
        loop.join(30)
    assert not loop.is_alive()


def test_a_steady_stream_of_events_still_gets_a_cycle_within_the_longest_debounce(monkeypatch):
    """The quiet time never comes while tools keep dropping jobs: the cycle runs anyway."""
    import time

    from dropbox_runner import daemon

    monkeypatch.setattr(daemon, "MAX_DEBOUNCE_SECONDS", 0.2)
    wake = daemon.Wake()
    wake.last = time.monotonic() + 3600      # as if events kept coming
    wake.event.set()
    started = time.monotonic()
    wake.debounce()
    assert 0.2 <= time.monotonic() - started < 0.4 and not wake.event.is_set()


def test_a_cycle_with_an_intake_slice_takes_that_many_oldest_first_and_says_more_wait(config_factory):
    from dropbox_runner.submitter import Submitter
    from dropbox_runner.transport.local import LocalTransport

    config = config_factory()
    for n in range(25):
        (config.dropbox / f"j{n:02d}.job").write_text("script: no_such_template\n")
        os.utime(config.dropbox / f"j{n:02d}.job", (n + 1, n + 1))      # j00 oldest
    submitter = Submitter(config, LocalTransport())
    submitter.slices = IntakeSlices(first=4, largest=16)
    try:
        reports = [submitter.cycle()]
        first = sorted(p.name for p in config.dropbox.glob("*.finished"))
        reports += [submitter.cycle() for _ in range(2)]
        size_after_the_burst = submitter.slices.size
    finally:
        submitter.close()
    assert first == [f"j{n:02d}.job.finished" for n in range(4)]
    # each slice larger than the last (up to the largest), and small again once the burst is over
    assert [r.rejected for r in reports] == [4, 16, 5] and [r.more_new for r in reports] == [True, True, False]
    assert size_after_the_burst == 4


def test_a_slice_is_never_smaller_than_a_share_of_the_jobs_held():
    """Behind a queue wait every job taken stays held and each cycle goes over them all:
    slices of a fixed size made a burst's cost grow with its square."""
    from dropbox_runner.slices import HELD_PER_NEW

    slices = IntakeSlices(first=4, largest=16)
    slices.after(True, held=4)
    assert slices.size == 16
    slices.after(True, held=1000)
    assert slices.size == 1000 // HELD_PER_NEW
    slices.after(False, held=1000)
    assert slices.size == 4


def test_a_burst_taken_while_its_jobs_stay_held_takes_slices_that_grow_with_them(config_factory):
    from dropbox_runner.slices import HELD_PER_NEW
    from dropbox_runner.submitter import Submitter
    from dropbox_runner.transport.local import LocalTransport

    config = config_factory()

    def drop_sleepers(first: int, count: int) -> None:
        for n in range(first, first + count):
            (config.dropbox / f"s{n:03d}.job").write_text(yaml.safe_dump(
                {"script": "sleep", "args": {"seconds": "60"}, "cache": False,
                 "output_map": {"out": str(config.dropbox.parent / "outputs" / f"s{n}.txt")}}))
            os.utime(config.dropbox / f"s{n:03d}.job", (n + 1, n + 1))

    drop_sleepers(0, 40)
    submitter = Submitter(config, LocalTransport())
    try:
        assert submitter.cycle().held == 40          # no slices: all forty taken, and held
        drop_sleepers(40, 40)
        submitter.slices = IntakeSlices(first=2, largest=2)
        taken = [submitter.cycle().taken for _ in range(3)]
    finally:
        submitter.close()
    assert taken == [2, (40 + 2) // HELD_PER_NEW, (40 + 2 + 10) // HELD_PER_NEW]


def test_a_held_jobs_result_is_read_only_where_the_scan_saw_one(config_factory, monkeypatch):
    """Looking for a result written before a crash, for every held job in every cycle, was
    a failed open a job a cycle; the scan already says which results exist."""
    from dropbox_runner.dropbox import Dropbox
    from dropbox_runner.submitter import Submitter
    from dropbox_runner.transport.local import LocalTransport

    config = config_factory()
    for n in range(3):
        (config.dropbox / f"s{n}.job").write_text(yaml.safe_dump(
            {"script": "sleep", "args": {"seconds": "60"}, "cache": False,
             "output_map": {"out": str(config.dropbox.parent / "outputs" / f"s{n}.txt")}}))
    reads = []
    real_read_result = Dropbox.read_result
    monkeypatch.setattr(Dropbox, "read_result", lambda self, name: reads.append(name) or real_read_result(self, name))
    submitter = Submitter(config, LocalTransport())
    try:
        submitter.cycle()
        assert submitter.cycle().held == 3 and reads == []
        # a result written, then a crash before its .submitted was removed: found and cleaned up
        hold = yaml.safe_load((config.dropbox / "s0.job.submitted").read_text())
        (config.dropbox / "s0.job.finished").write_text(yaml.safe_dump({"job": {"id": hold["id"]}}))
        assert submitter.cycle().held == 2 and reads == ["s0.job"]
    finally:
        submitter.close()
    assert not (config.dropbox / "s0.job.submitted").exists()


def test_once_takes_a_burst_in_slices_within_one_call(config_factory, caplog):
    """``once`` takes every new job (a cron minute is too long to leave work for), but in
    slices: cycles back to back, so the first slice is queued before the rest is read."""
    from dropbox_runner.submitter import run_burst
    from dropbox_runner.transport.local import LocalTransport

    config = config_factory()
    for n in range(FIRST_SLICE * 2):
        (config.dropbox / f"j{n:03d}.job").write_text("script: no_such_template\n")
        os.utime(config.dropbox / f"j{n:03d}.job", (n + 1, n + 1))
    with caplog.at_level(logging.INFO, logger="dropbox_runner"):
        reports = run_burst(config, LocalTransport())
    assert [r.rejected for r in reports] == [FIRST_SLICE, FIRST_SLICE]
    assert not list(config.dropbox.glob("*.job"))
    assert sum("cycle: 0 taken, %d rejected" % FIRST_SLICE in r.getMessage() for r in caplog.records) == 2


class DoneAtOnce:
    """A cluster side whose ``wait`` reports a finished job at once."""

    def __init__(self):
        self.calls = 0

    def wait(self, ignore, timeout, every=None, gather=None):
        self.calls += 1
        return ["a-job"]

    def close(self):
        pass


def test_a_signal_handled_in_another_thread_still_wakes_the_loop_at_once():
    """A signal's C handler may run where the main thread's wait does not notice it: in
    another thread, or just before the wait began (a SIGTERM once went unanswered until the
    next tick, an hour, in the test suite).  The loop's wait also watches the descriptor
    that handler writes to, so the Python handler runs at once."""
    import threading
    import time

    from dropbox_runner.daemon import Wake

    wake = Wake()
    handled = []
    previous_handler = signal.signal(signal.SIGUSR1, lambda signum, frame: handled.append(time.monotonic()))
    previous_fd = wake.catch_signals()
    release = threading.Event()
    helper = threading.Thread(target=release.wait, args=(10,))     # takes the signal the main thread blocks
    helper.start()
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1})
    try:
        started = time.monotonic()
        os.kill(os.getpid(), signal.SIGUSR1)
        wake.wait(5)
        assert handled and handled[0] - started < 1
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGUSR1})
        release.set()
        helper.join()
        signal.set_wakeup_fd(previous_fd)
        signal.signal(signal.SIGUSR1, previous_handler)


def test_events_folded_into_a_cycle_do_not_wake_the_loop_again_after_it():
    """Events that came during the quiet time are the cycle's: the loop's next wait sleeps
    until something new, not at once for another cycle (a round trip with jobs held)."""
    import threading
    import time

    from dropbox_runner.daemon import QUIET_SECONDS, Wake

    wake = Wake()
    wake.set()
    wake.wait(5)
    later = threading.Timer(QUIET_SECONDS * 0.1, wake.set)      # the burst's later events
    later.start()
    wake.debounce()
    later.join()
    started = time.monotonic()
    wake.wait(0.3)
    assert time.monotonic() - started >= 0.25


def waiter_on(config_factory, cluster):
    """A FinishWaiter (not started) whose cluster side is ``cluster``, and the Wake it sets."""
    from dropbox_runner.daemon import FinishWaiter, Wake

    wake = Wake()
    waiter = FinishWaiter(config_factory(), wake)
    waiter.cluster = cluster
    return wake, waiter


def test_finished_jobs_gather_for_as_long_as_the_last_cycle_took_before_the_loop_wakes(config_factory):
    """Waking the loop at the first finished job made a burst end in some twenty small
    collecting cycles; the waiter now lets more finish first, for the last cycle's time
    (capped), and a stop still ends that wait at once."""
    import time

    from dropbox_runner.report import CycleReport
    from dropbox_runner.slices import MAX_GATHER_SECONDS

    wake, waiter = waiter_on(config_factory, DoneAtOnce())
    started = time.monotonic()
    waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=0.4))
    waiter.start()
    try:
        assert wake.event.wait(5)
        assert 0.4 <= time.monotonic() - started < 2
        waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=30))     # a long cycle: the cap holds
        assert waiter.gather == MAX_GATHER_SECONDS
        wake.event.clear()
        assert wake.event.wait(5)
        wake.event.clear()
        waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=MAX_GATHER_SECONDS))
        time.sleep(0.1)         # inside a gathering wait now
        stopping = time.monotonic()
        waiter.stop()
        waiter.join(5)
        assert not waiter.is_alive() and time.monotonic() - stopping < MAX_GATHER_SECONDS
    finally:
        waiter.stop()


def test_finished_jobs_found_during_a_cycle_wait_for_its_end_and_the_gathering_after_it(config_factory):
    """A job done while a cycle runs must not wake another cycle the moment that one
    ends (that cycle may have collected it): the waiter asks again once it has ended,
    and wakes the loop only after the gathering time."""
    import time

    from dropbox_runner.report import CycleReport

    wake, waiter = waiter_on(config_factory, DoneAtOnce())
    waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=0.1))
    waiter.cycle_starts()
    waiter.start()
    try:
        assert not wake.event.wait(1.0)         # the cycle runs on
        asks = waiter.cluster.calls
        ended = time.monotonic()
        waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=0.3))
        assert wake.event.wait(5)
        assert 0.3 <= time.monotonic() - ended < 2
        # asked again after the cycle (the cluster gathering, in the same call), before waking
        assert waiter.cluster.calls == asks + 1
    finally:
        waiter.stop()


def test_when_every_held_job_is_done_the_loop_wakes_without_gathering(config_factory):
    import time

    from dropbox_runner.report import CycleReport

    wake, waiter = waiter_on(config_factory, DoneAtOnce())    # reports "a-job" done: the only one held
    started = time.monotonic()
    waiter.update(CycleReport(held_ids=["a-job"], seconds=30))
    waiter.start()
    try:
        assert wake.event.wait(5) and time.monotonic() - started < 0.4
    finally:
        waiter.stop()


def test_no_wait_is_opened_while_a_burst_is_still_being_taken(config_factory):
    """The cycle taking the next slice of a burst runs at once and collects what is done:
    a wait kept open meanwhile started an ``on_hpc`` command per slice for nothing."""
    from dropbox_runner.report import CycleReport

    wake, waiter = waiter_on(config_factory, DoneAtOnce())
    waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=0.1, more_new=True))
    waiter.start()
    try:
        assert not wake.event.wait(0.5) and waiter.cluster.calls == 0
        waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=0.1))    # the burst is taken
        assert wake.event.wait(5) and waiter.cluster.calls >= 1
    finally:
        waiter.stop()


def test_the_waiter_asks_one_kept_open_process_and_ends_it_once_nothing_is_held(config_factory, monkeypatch):
    """Each wait was a fresh ``on_hpc wait`` command: an interpreter's start on the head
    node, one to three a burst, half of what ``watch`` spent a job more than ``once``."""
    from dropbox_runner.on_hpc.jobstore import JobStore

    from dropbox_runner.cluster import ClusterSide
    from dropbox_runner.daemon import FinishWaiter, Wake
    from dropbox_runner.report import CycleReport
    from dropbox_runner.transport.local import LocalTransport

    config = config_factory()
    store = JobStore(str(config.workspace))
    store.ensure_layout()
    job = f"{config.submitter_id}.j1"
    open(os.path.join(store.done_dir(), job), "w").close()
    ClusterSide(config, LocalTransport()).deploy()       # installed, as after the first cycle
    commands, sessions = [], []
    real_run, real_open = LocalTransport.run, LocalTransport.open_session
    monkeypatch.setattr(LocalTransport, "run", lambda self, command, stdin=b"": commands.append(command)
                        or real_run(self, command, stdin))
    monkeypatch.setattr(LocalTransport, "open_session", lambda self, command: sessions.append(real_open(self, command))
                        or sessions[-1])
    wake = Wake()
    waiter = FinishWaiter(config, wake)
    waiter.start()
    try:
        for _ in range(3):          # three cycles, each leaving the job held: three waits
            wake.event.clear()
            waiter.update(CycleReport(held_ids=[job], seconds=0.05))
            assert wake.event.wait(20)
        assert len(sessions) == 1 and sessions[0].alive()
        assert not [command for command in commands if "on_hpc wait" in command]
        waiter.update(CycleReport(held_ids=[], seconds=0.05))     # nothing held: the process ends
        wait_until(lambda: not sessions[0].alive(), 10, what="the kept-open process ended")
    finally:
        waiter.stop()
        waiter.join(10)
    assert len(sessions) == 1


class DoneOneByOne:
    """A cluster side where one of two held jobs is done at once and the other a moment
    later: ``wait`` for every held job returns then."""

    def __init__(self):
        self.gathering = []

    def wait(self, ignore, timeout, every=None, gather=None):
        import time
        self.gathering.append((sorted(every or []), gather))
        time.sleep(0.1)
        return ["a-job", "another"]

    def close(self):
        pass


def test_gathering_ends_when_the_last_held_job_is_done_not_after_the_whole_time(config_factory):
    """At the end of a burst the gathering waited its whole time (up to half a second)
    after the last job had ended; the cluster now tells when every held job is done."""
    import time

    from dropbox_runner.report import CycleReport
    from dropbox_runner.slices import MAX_GATHER_SECONDS

    wake, waiter = waiter_on(config_factory, DoneOneByOne())
    started = time.monotonic()
    waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=30))
    waiter.start()
    try:
        assert wake.event.wait(5)
        assert time.monotonic() - started < MAX_GATHER_SECONDS - 0.15
        # one command: it waits for every held job, gathering at most the capped time
        [(every, gather)] = waiter.cluster.gathering
        assert every == ["a-job", "another"] and 0 < gather <= MAX_GATHER_SECONDS
    finally:
        waiter.stop()


def test_jobs_done_wake_the_loop_without_a_quiet_time(config_factory):
    """The quiet time lets a burst of file events end before a cycle; the waiter's call,
    for jobs done, is no file event, and waited it out (50 ms) before every collection."""
    import time

    from dropbox_runner.daemon import QUIET_SECONDS
    from dropbox_runner.report import CycleReport

    wake, waiter = waiter_on(config_factory, DoneOneByOne())
    waiter.update(CycleReport(held_ids=["a-job", "another"], seconds=30))
    waiter.start()
    try:
        assert wake.event.wait(5)
        started = time.monotonic()
        wake.debounce()
        assert time.monotonic() - started < QUIET_SECONDS / 2
    finally:
        waiter.stop()


def test_the_cluster_side_wait_for_every_job_returns_when_the_last_is_done_or_at_its_timeout(tmp_path):
    import threading
    import time

    from dropbox_runner.on_hpc import headnode
    from dropbox_runner.on_hpc.jobstore import JobStore

    store = JobStore(str(tmp_path))
    store.ensure_layout()
    open(os.path.join(store.done_dir(), "sub.a"), "w").close()
    later = threading.Timer(0.3, lambda: open(os.path.join(store.done_dir(), "sub.b"), "w").close())
    started = time.monotonic()
    later.start()
    answer = headnode.wait({"root": str(tmp_path), "submitter": "sub", "every": ["sub.a", "sub.b"], "timeout": 5})
    assert sorted(answer["done"]) == ["sub.a", "sub.b"] and 0.3 <= time.monotonic() - started < 1.5
    started = time.monotonic()
    answer = headnode.wait({"root": str(tmp_path), "submitter": "sub", "every": ["sub.a", "sub.never"],
                            "timeout": 0.4})
    assert sorted(answer["done"]) == ["sub.a", "sub.b"] and 0.4 <= time.monotonic() - started < 1.5


def test_the_cluster_side_wait_gathers_after_the_first_job_for_the_time_it_is_given(tmp_path):
    """The watch daemon's one command: it answers once every held job is done, or once
    one is and the gathering time is over; with none done, only at its timeout."""
    import time

    from dropbox_runner.on_hpc import headnode
    from dropbox_runner.on_hpc.jobstore import JobStore

    store = JobStore(str(tmp_path))
    store.ensure_layout()
    request = {"root": str(tmp_path), "submitter": "sub", "every": ["sub.a", "sub.never"], "gather": 0.3,
               "timeout": 5}
    started = time.monotonic()
    assert headnode.wait(dict(request, timeout=0.6)) == {"done": []}
    assert 0.6 <= time.monotonic() - started < 1.5              # nothing done: the gathering time alone ends nothing
    open(os.path.join(store.done_dir(), "sub.a"), "w").close()
    started = time.monotonic()
    assert headnode.wait(request) == {"done": ["sub.a"]}
    assert 0.3 <= time.monotonic() - started < 1.5


def test_the_daemon_makes_the_template_environment_before_it_watches(tmp_path):
    """Its first burst's first job does not wait for jinja2's import; ``once`` stays lazy,
    so a cron call that finds nothing new never pays it."""
    from dropbox_runner import rendering
    from dropbox_runner.daemon import Daemon
    from dropbox_runner.submitter import run_once
    from dropbox_runner.transport.local import LocalTransport

    rendering._environment.cache_clear()
    daemon = Daemon(write_config(tmp_path))
    parts = daemon._start()
    try:
        assert rendering._environment.cache_info().currsize == 1
    finally:
        daemon._stop(*parts)
    rendering._environment.cache_clear()
    run_once(load_config(write_config(tmp_path / "cron")), LocalTransport())
    assert rendering._environment.cache_info().currsize == 0
