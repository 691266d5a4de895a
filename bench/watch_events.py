"""CPU the daemon's folder watch spends on a burst of N job files renamed into the dropbox.

Tools drop jobs by renaming finished files in, often thousands at once.  Another process
renames N empty ``.job`` files into a watched folder, as fast as it can; this reports the
watching process's own CPU from the first rename to the last name heard, for the daemon's
inotify reader (``dropbox_runner.inotify``) and for watchdog's inotify observer with the
filter the daemon used before, whose move pairing searches its backlog of events once per
rename (how large that backlog grows depends on how far the renames outrun the reader).

    python bench/watch_events.py --jobs 1000 10000
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from watchdog.events import FileSystemEventHandler
from watchdog.observers import Observer

from dropbox_runner.daemon import WATCHED_EVENTS
from dropbox_runner.inotify import DropboxInotify

TIMEOUT_SECONDS = 120
RENAMER = ("import os, sys\n"
           "source, dropbox, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3])\n"
           "for number in range(jobs):\n"
           "    os.rename(f'{source}/t{number}.job', f'{dropbox}/t{number}.job')\n")


def burst(jobs: int, watcher_kind: str) -> tuple[float, float]:
    """(wall, CPU) seconds from the first rename until every name was heard."""
    with tempfile.TemporaryDirectory(prefix="dbr-watch-events-") as tmp:
        source, dropbox = Path(tmp, "pending"), Path(tmp, "dropbox")
        source.mkdir()
        dropbox.mkdir()
        for number in range(jobs):
            (source / f"t{number}.job").touch()
        heard, done = [0], threading.Event()

        def hear(*_) -> None:
            heard[0] += 1
            if heard[0] == jobs:
                done.set()

        if watcher_kind == "inotify reader":
            watcher = DropboxInotify(str(dropbox), hear, lambda: None)
        else:
            class Handler(FileSystemEventHandler):
                on_moved = hear
            watcher = Observer(generate_full_events=True)
            watcher.schedule(Handler(), str(dropbox), recursive=False, event_filter=WATCHED_EVENTS)
        watcher.start()
        try:
            time.sleep(0.2)
            cpu, wall = time.process_time(), time.monotonic()
            subprocess.run([sys.executable, "-c", RENAMER, str(source), str(dropbox), str(jobs)], check=True)
            if not done.wait(TIMEOUT_SECONDS):
                raise SystemExit(f"{watcher_kind}: heard {heard[0]} of {jobs}")
            return time.monotonic() - wall, time.process_time() - cpu
        finally:
            watcher.stop()
            watcher.join(timeout=5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, nargs="+", default=[1000, 10000])
    args = parser.parse_args()
    print("| jobs | watcher | wall | CPU |\n| --- | --- | --- | --- |")
    for jobs in args.jobs:
        for kind in ("inotify reader", "watchdog observer"):
            wall, cpu = burst(jobs, kind)
            print(f"| {jobs} | {kind} | {wall:.2f} s | {cpu:.2f} s |")


if __name__ == "__main__":
    main()
