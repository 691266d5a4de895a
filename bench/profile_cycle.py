"""Where a cycle's time goes: one `once` call taking N new jobs, then one collecting them.

Both calls run in this process under cProfile (the first runs several cycles, as ``once``
takes a burst in slices, and collects what ended meanwhile), on the local backend with the trivial
jobs of ``bench/overhead.py`` (renamed into the dropbox at once, as there); between them
the local runners run the jobs.  Prints each cycle's wall time and its top entries
(cumulative, then own time).  On a loaded disk the top entries are the calls that make
files and folders (``posix.open``, ``posix.mkdir``, ``io.open``): count what a change saves
in those first.  ``--save DIR`` keeps the profiles (``intake.prof``, ``collect.prof``) for
``python -m pstats`` or snakeviz.

    python bench/profile_cycle.py --jobs 1000
"""
from __future__ import annotations

import argparse
import cProfile
import pstats
import shutil
import sys
import tempfile
import time
from pathlib import Path

from overhead import count_finished, drop, prepare_jobs, write_config

RUN_TIMEOUT_SECONDS = 600


def profiled_cycle(config: Path, save: Path, tag: str) -> float:
    from dropbox_runner.cli import main

    profile = cProfile.Profile()
    started = time.monotonic()
    profile.runcall(main, ["once", "--config", str(config)])
    wall = time.monotonic() - started
    profile.dump_stats(save / f"{tag}.prof")
    return wall


def report(save: Path, tag: str, wall: float, top: int) -> None:
    print(f"===== {tag}: {wall:.2f} s wall (cProfile's own cost included)")
    for order in ("cumulative", "tottime"):
        pstats.Stats(str(save / f"{tag}.prof")).sort_stats(order).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--slots", type=int, default=4)
    parser.add_argument("--top", type=int, default=30, help="entries per listing")
    parser.add_argument("--save", type=Path, help="keep the profiles here")
    options = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="dbr-profile-"))
    save = options.save or root
    save.mkdir(parents=True, exist_ok=True)
    try:
        config = write_config(root, "local", options.slots)
        drop(prepare_jobs(root, options.jobs), root / "dropbox")
        intake = profiled_cycle(config, save, "intake")
        deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
        done = root / "cluster" / "workspace" / "done"       # a marker per job a runner has ended
        # ``once`` takes a burst in slices and collects what ended meanwhile: the jobs left
        # are those neither collected nor done yet.
        while (len(list(done.iterdir())) if done.is_dir() else 0) + count_finished(root / "dropbox") < options.jobs:
            if time.monotonic() > deadline:
                raise SystemExit(f"the jobs did not run in {RUN_TIMEOUT_SECONDS} s")
            time.sleep(0.2)
        collect = profiled_cycle(config, save, "collect")
        if count_finished(root / "dropbox") < options.jobs:
            print(f"note: only {count_finished(root / 'dropbox')} of {options.jobs} collected in one cycle",
                  file=sys.stderr)
        report(save, "intake", intake, options.top)
        report(save, "collect", collect, options.top)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
