"""``dropbox-runner watch``: the cycle, run when something happens instead of once a minute.

Three things wake the daemon: a job file appearing in the dropbox (a watchdog observer,
inotify or polling), a job finishing on the cluster (one long-running ``wait`` at a time,
asked of an ``on_hpc serve`` kept open while jobs are held), and a periodic tick.  Each
wakes the same cycle as ``once``; bursts of events are folded into one cycle.  The daemon
holds the dropbox's lock for its whole life, so a cron ``once`` beside it does nothing.
"""
from __future__ import annotations

import logging
import os
import select
import signal
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from watchdog.events import (
    FileClosedEvent,
    FileCreatedEvent,
    FileMovedEvent,
    FileSystemEvent,
    FileSystemEventHandler,
)
from watchdog.observers import Observer
from watchdog.observers.polling import PollingObserver

from . import rendering
from .boundaries import startup_warnings
from .cluster import ClusterSide
from .config import Config, load_config
from .inotify import DropboxInotify, InotifyUnavailable
from .lock import cycle_lock
from .report import CycleReport
from .slices import MAX_GATHER_SECONDS, IntakeSlices
from .submitter import Submitter, log_cycle, run_cycle
from .transport import TransportError, open_transport

log = logging.getLogger(__name__)

QUIET_SECONDS = 0.05        # a burst of events is over when none came for this long
MAX_DEBOUNCE_SECONDS = 1.0  # ...or after this long, so a steady stream still gets cycles
WAIT_SECONDS = 30           # the bounded wait of one ``wait`` request
MAX_BACKOFF_SECONDS = 300
NETWORK_FILESYSTEMS = {"nfs", "nfs4", "cifs", "smbfs", "smb3", "fuse.sshfs", "9p", "lustre", "gpfs",
                       "beegfs", "glusterfs", "ceph", "fuse.glusterfs"}


STOP_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


@contextmanager
def signals_kept_for_the_main_thread() -> Iterator[None]:
    """Threads started inside block the daemon's signals (a thread inherits its creator's
    mask), so the kernel delivers them to the main thread.  Python runs handlers only
    there, and only once that thread wakes: a SIGTERM taken by the observer's or the
    waiter's thread left the main thread asleep in its wait for the next tick."""
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class Wake:
    """Why the main loop should run a cycle now; set from any thread, and woken by any
    signal once ``catch_signals`` is called."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.last = 0.0
        self.burst_begun = False    # a job file heard whole after a quiet time: see ``debounce``
        # Kept open as long as the process runs: the threads that wake it may outlive the loop.
        self._read, self._write = os.pipe()
        for fd in (self._read, self._write):
            os.set_blocking(fd, False)      # set_wakeup_fd wants it so; a full pipe is awake anyway

    def set(self, job_arrived: bool = False) -> None:
        """A file event; ``job_arrived``: a job file renamed in, or closed after writing."""
        now = time.monotonic()
        if job_arrived and now - self.last >= QUIET_SECONDS:
            self.burst_begun = True
        self.last = now
        self._wake()

    def again(self) -> None:
        """A call for a cycle that is no file event (the loop's own, for a burst's next
        slice; the finish waiter's, for jobs done): there is no burst of events to let
        finish (50 ms lost a slice, and after every gathering, when it counted as one)."""
        self._wake()

    def _wake(self) -> None:
        self.event.set()
        try:
            os.write(self._write, b"\0")
        except BlockingIOError:
            pass        # the pipe is full of wakes the loop has yet to read

    def catch_signals(self) -> int:
        """Have every signal's arrival write to the pipe ``wait`` watches (the previous
        wakeup descriptor is returned, to put back).  A signal whose C handler ran just
        before the loop's wait began, or in another thread, set Python's flag but woke
        nothing: the main thread slept on to the next tick, an hour by default, and a
        SIGTERM went unanswered (seen once in the test suite)."""
        return signal.set_wakeup_fd(self._write, warn_on_full_buffer=False)

    def wait(self, timeout: float) -> None:
        """Until a wake, a signal (once caught) or ``timeout``; the handler of a signal
        that came runs as this returns, in the main thread."""
        if not self.event.is_set():
            select.select([self._read], [], [], timeout)

    def debounce(self) -> None:
        """Let a burst of events finish before the cycle runs: until none came for
        QUIET_SECONDS, and not a moment longer.  Napping a whole quiet time at each look
        kept a burst renamed in at once (a few ms of events) waiting up to twice that: its
        first job started some 30 ms later.

        A job heard whole after a quiet time begins a burst, and its cycle does not wait:
        that cycle takes one slice (``slices.py``), however much of the burst has arrived,
        so the quiet time only held back its runner's request and its first job (1000 jobs
        renamed in: the first started some 60 ms sooner, 0.08-0.13 s after the drop).
        A lone job gains the same.  The burst's later cycles wait for quiet as before, as
        does a job written in place: its closing comes just after its making."""
        at_once, self.burst_begun = self.burst_begun, False
        ends = time.monotonic() + MAX_DEBOUNCE_SECONDS
        while not at_once:
            now = time.monotonic()
            quiet_at = min(self.last + QUIET_SECONDS, ends)
            if now >= quiet_at:
                break
            time.sleep(quiet_at - now)
        self.event.clear()
        try:        # with the event: a wake the cycle about to run answers must not wake the loop again
            while os.read(self._read, 512):
                pass
        except BlockingIOError:
            pass


# Only what DropHandler acts on.  inotify is then asked for nothing else: the cycle's own
# reads, writes and removals in the dropbox (some twenty events a job) no longer reach
# watchdog's threads, which competed with the cycle for the interpreter (issue 18).
WATCHED_EVENTS = [FileCreatedEvent, FileMovedEvent, FileClosedEvent]


class DropHandler(FileSystemEventHandler):
    """Runs on watchdog's dispatch thread: it only wakes the loop (an exception here would
    silently stop all later events)."""

    def __init__(self, wake: Wake, closed: set[str] | None = None):
        self.wake = wake
        self.closed = closed if closed is not None else set()   # job files complete: closed or renamed in

    def on_created(self, event: FileSystemEvent) -> None:
        self._maybe_wake(event.src_path)

    def on_moved(self, event: FileSystemEvent) -> None:
        self._maybe_wake(event.dest_path, complete=True)

    def on_closed(self, event: FileSystemEvent) -> None:
        self._maybe_wake(event.src_path, complete=True)

    def _maybe_wake(self, path: str | bytes, complete: bool = False) -> None:
        try:
            self.heard(Path(path.decode() if isinstance(path, bytes) else path).name, complete)
        except Exception:  # noqa: BLE001 - see the class docstring
            log.exception("dropbox event handler failed")

    def heard(self, name: str, complete: bool) -> None:
        """A name made, closed or renamed in (``complete``: closed or renamed in)."""
        if name.endswith((".job", ".job.cancel")) and not name.startswith("."):
            job_arrived = complete and name.endswith(".job")
            if job_arrived:
                self.closed.add(name)
            self.wake.set(job_arrived)


class FinishWaiter(threading.Thread):
    """Keeps one ``wait`` going while this submitter has jobs on the cluster, and wakes
    the loop when one is done.  It has its own connection, so a cycle never waits
    for it.

    Once one is done it lets more finish, until as long as the last cycle took (at most
    MAX_GATHER_SECONDS) has passed since that cycle ended, before waking the loop; when a
    cycle ran meanwhile, it may have collected them: the next ``wait`` tells; when every
    held job is done there is nothing to gather.  The cluster does the gathering within
    the same ``wait`` (it answers once every held job is done, or once the time is over),
    so the end of a burst is collected when its last job ends.  Waking at
    the first one made a burst of 1000 trivial jobs end in some twenty cycles of 25-60
    jobs each, every one paying a round trip and the head node's cycle (0.2-0.3 s of CPU
    on a 2-core machine, taken from the jobs), and a cycle followed each long one at once
    for what finished during it; cycles now take at most about half of the time.  A lone
    job's result comes that much later: the last cycle's time, a few tenths of a second."""

    def __init__(self, config: Config, wake: Wake):
        super().__init__(name="finish-waiter", daemon=True)
        self.config = config
        self.wake = wake
        self.transport = open_transport(config)
        # Its own kept-open ``on_hpc serve`` while jobs are held: each wait was a fresh
        # command, an interpreter's start on the head node (some 40 ms of CPU, one to three
        # a burst, half of what ``watch`` spent a job more than ``once``).  It ends when
        # nothing is held, and when the waiter stops.
        self.cluster = ClusterSide(config, self.transport, keep_open=True)
        self.lock = threading.Condition()
        self.held: list[str] = []
        self.nothing_held = True    # as the last cycle left it: the kept-open process may end
        self.ignore: list[str] = []
        self.gather = 0.0
        self.cycle_running = False
        self.cycle_ended = 0.0
        self.cycles = 0
        self.stopped = False

    def cycle_starts(self) -> None:
        with self.lock:
            self.cycle_running = True

    def update(self, report: CycleReport | None) -> None:
        """After each cycle: what it left held (None: it failed, nothing changes but the time)."""
        with self.lock:
            if report is not None:
                # A burst still being taken runs its next cycle at once, and that cycle
                # collects what is done: a wait then is a round trip (and was a command's
                # start, some 50 ms of the head node's CPU) for nothing, once a slice.
                self.held = [] if report.more_new else report.held_ids
                self.nothing_held = not report.held_ids
                self.ignore = report.collected_ids
                self.gather = min(report.seconds, MAX_GATHER_SECONDS)
            self.cycle_running = False
            self.cycle_ended = time.monotonic()
            self.cycles += 1
            self.lock.notify()

    def _gathered(self) -> bool:
        """Under the lock: wait out the running cycle and the gathering time after it;
        False when a cycle ran meanwhile (or the waiter stopped)."""
        seen = self.cycles
        while not self.stopped:
            if self.cycle_running:
                self.lock.wait()
                continue
            if self.cycles != seen:
                return False        # ask again at once: that cycle may have collected them
            left = self.cycle_ended + self.gather - time.monotonic()
            if left <= 0:
                return True
            self.lock.wait(left)
        return False

    def stop(self) -> None:
        with self.lock:
            self.stopped = True
            self.lock.notify()
        self.transport.close()

    def run(self) -> None:
        try:
            self._wait_for_ends()
        finally:
            self.cluster.close()

    def _wait_for_ends(self) -> None:
        backoff = 1.0
        kept_open = False
        while True:
            with self.lock:
                while not self.held and not self.stopped and not (kept_open and self.nothing_held):
                    self.lock.wait()
                if self.stopped:
                    return
                idle = not self.held
                ignore, held = list(self.ignore), set(self.held)
                # the cluster gathers: it answers when every held job is done, or when
                # one is and the gathering time after the last cycle is over
                gather = max(0.0, self.cycle_ended + self.gather - time.monotonic())
            if idle:
                self.cluster.close()        # nothing held: no process left waiting on the cluster
                kept_open = False
                continue
            try:
                kept_open = True
                done = self.cluster.wait(ignore, WAIT_SECONDS, every=sorted(held), gather=gather)
                backoff = 1.0
            except TransportError as error:
                if self.stopped:
                    return
                log.warning("waiting for results failed (retry in %.0fs): %s", backoff, error)
                time.sleep(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                continue
            if done:
                with self.lock:
                    if not held <= set(done) and not self._gathered():     # all done: nothing to gather
                        continue
                    self.held = []      # until the cycle that collects them says what is left
                self.wake.again()


class Daemon:
    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config = load_config(config_path)
        self.wake = Wake()
        self.stopping = False
        self.reload_requested = False
        self.closed: set[str] = set()   # shared by the event handler and the cycle's intake

    def run(self) -> int:
        with cycle_lock(Path(self.config.lockfile)) as locked:
            if not locked:
                log.error("another submitter holds %s; not starting", self.config.lockfile)
                return 1
            signal.signal(signal.SIGTERM, self._on_stop)
            signal.signal(signal.SIGINT, self._on_stop)
            signal.signal(signal.SIGHUP, self._on_reload)
            previous = self.wake.catch_signals()
            try:
                self._serve()
            finally:
                signal.set_wakeup_fd(previous)
        return 0

    def _serve(self) -> None:
        observer, waiter, submitter = self._start()
        backoff = 0.0
        next_tick = time.monotonic()
        try:
            while not self.stopping:
                self.wake.wait(max(0.0, next_tick - time.monotonic()))
                if self.stopping:
                    break
                self.wake.debounce()
                if self.reload_requested:
                    self._stop(observer, waiter, submitter)
                    self._reload_config()
                    observer, waiter, submitter = self._start()
                waiter.cycle_starts()
                try:
                    report = run_cycle(self.config, submitter)
                except TransportError as error:
                    waiter.update(None)
                    backoff = min(max(backoff * 2, 2.0), MAX_BACKOFF_SECONDS)
                    log.error("cluster unreachable, retrying in %.0fs: %s", backoff, error)
                    submitter.transport.close()
                    next_tick = time.monotonic() + backoff
                    continue
                except Exception:  # noqa: BLE001 - a broken cycle must not end the daemon
                    waiter.update(None)
                    log.exception("cycle failed; the next one runs on the next tick")
                    next_tick = time.monotonic() + self.config.tick
                    continue
                backoff = 0.0
                log_cycle(report)
                waiter.update(report)
                next_tick = time.monotonic() + self.config.tick
                if report.more_new:
                    self.wake.again()
        finally:
            self._stop(observer, waiter, submitter)
        log.info("stopped")

    def _start(self) -> tuple:
        config = self.config
        waiter = FinishWaiter(config, self.wake)
        with signals_kept_for_the_main_thread():    # watchdog starts threads from its constructors on
            observer = _observer(config, DropHandler(self.wake, self.closed))
            observer.start()
            waiter.start()
        submitter = Submitter(config, open_transport(config))
        submitter.intake.closed = self.closed
        submitter.slices = IntakeSlices()
        rendering.prepare()
        for warning in startup_warnings(config):
            log.warning("%s", warning)
        log.info("watching %s (%s), tick %ss", config.dropbox, type(observer).__name__, config.tick)
        return observer, waiter, submitter

    @staticmethod
    def _stop(observer, waiter, submitter) -> None:
        observer.stop()
        waiter.stop()
        submitter.close()
        submitter.transport.close()
        observer.join(timeout=5)

    def _reload_config(self) -> None:
        self.reload_requested = False
        try:
            config = load_config(self.config_path)
        except Exception as error:  # noqa: BLE001 - keep running on the old config
            log.error("config reload failed, keeping the old one: %s", error)
            return
        if Path(config.lockfile) != Path(self.config.lockfile):
            log.warning("the lockfile changed; it takes effect at the next start")
        self.config = config
        log.info("config reloaded from %s", self.config_path)

    def _on_stop(self, signum, frame) -> None:
        log.info("got %s: finishing the step in hand, then stopping", signal.Signals(signum).name)
        self.stopping = True
        self.wake.set()

    def _on_reload(self, signum, frame) -> None:
        self.reload_requested = True
        self.wake.set()


def _observer(config: Config, handler: DropHandler):
    """inotify read by the daemon's own thread (``inotify.DropboxInotify``) on a local
    filesystem; watchdog's polling observer on a network filesystem (or where inotify
    cannot watch the folder: too many watches or instances), its native observer on a
    platform without inotify."""
    if not _wants_polling(config):
        try:
            return DropboxInotify(str(config.dropbox), handler.heard, handler.wake.set)
        except InotifyUnavailable:
            observer = _native_observer()
        except OSError as error:
            log.warning("cannot watch %s with inotify (%s; see fs.inotify.max_user_watches and "
                        "max_user_instances): polling it every second instead", config.dropbox, error)
            observer = PollingObserver(timeout=1)
    else:
        observer = PollingObserver(timeout=1)
    observer.schedule(handler, str(config.dropbox), recursive=False, event_filter=WATCHED_EVENTS)
    return observer


def _native_observer():
    """inotify's observer reports a job renamed in from another folder (a tool writing
    elsewhere, then ``mv``) as a move only when asked for full events; otherwise it is a
    creation, and the job waited ``settle_seconds`` as one still being written would
    (issue 18).  Other platforms' observers take no such argument."""
    try:
        return Observer(generate_full_events=True)
    except TypeError:
        return Observer()


def _wants_polling(config: Config) -> bool:
    if config.observer != "auto":
        return config.observer == "polling"
    return filesystem_type(Path(config.dropbox)) in NETWORK_FILESYSTEMS


def filesystem_type(path: Path) -> str:
    """The type of the filesystem holding ``path``, from /proc/mounts (longest mount prefix)."""
    best, kind = "", ""
    resolved = str(path.resolve())
    try:
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                fields = line.split()
                if len(fields) >= 3:
                    mount = fields[1].replace("\\040", " ")
                    if (resolved == mount or resolved.startswith(mount.rstrip("/") + "/")) and len(mount) > len(best):
                        best, kind = mount, fields[2]
    except OSError:
        return ""
    return kind
