"""bench/overhead.py: contestants take turns over rounds, and each row is their medians."""
import json
import os
import subprocess
import sys
import time

import pytest
from helpers import load_bench

overhead = load_bench("overhead")


def test_contestants_take_turns_and_each_row_is_the_median_of_its_rounds(monkeypatch, tmp_path, capsys):
    """One run each moved with the machine's drift and Slurm's scheduling tick more than
    the contestants differed; taking turns spreads the drift over all of them."""
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    order, phases, walls = [], [], iter([1.0, 3.0, 4.0, 2.0, 9.0, 5.0, 3.0, 1.0, 4.5])

    def floor(root, jobs, slots):
        order.append("floor")
        return overhead.Run("floor (xargs -P)", jobs, next(walls), ok=jobs)

    def dropbox_runner(root, scheduler, mode, jobs, slots, period, strace_out=None, launch="step", phase=None):
        order.append(mode)
        phases.append(phase)
        return overhead.Run(f"dropbox-runner {mode}, {scheduler} runners", jobs, next(walls), 1.0 * jobs / 1000,
                            0.5, 100.0, jobs - (mode == "watch"), 2 if mode == "once" else None)

    monkeypatch.setattr(overhead, "floor", floor)
    monkeypatch.setattr(overhead, "dropbox_runner", dropbox_runner)
    monkeypatch.setattr(overhead, "file_create_us", lambda: 1.0)
    assert overhead.main(["--jobs", "10", "--backends", "local", "--rounds", "3", "--fsync-jobs", "0", "--json"]) == 0
    assert order == ["floor", "once", "watch"] * 3
    result = json.loads(capsys.readouterr().out)
    rows = {run["contestant"].split(",")[0]: run for run in result["runs"]}
    assert rows["floor (xargs -P)"]["wall_s"] == 2.0 and rows["floor (xargs -P)"]["notes"]["walls"] == [1.0, 2.0, 3.0]
    assert rows["dropbox-runner once"]["wall_s"] == 3.0 and rows["dropbox-runner once"]["cycles"] == 2
    assert rows["dropbox-runner watch"]["wall_s"] == 4.5 and rows["dropbox-runner watch"]["ok"] == 9
    assert phases[0::2] == phases[1::2] == result["start_phases"]      # once and watch: the same in a round
    assert sorted(round((phase - phases[0]) % 1, 3) for phase in phases[0::2]) == [0, 0.333, 0.667]
    table = overhead.table([overhead.median_of([overhead.Run("floor (xargs -P)", 10, w) for w in (1.0, 3.0, 2.0)])])
    assert "| 2.00 s (1.00-3.00) | 1.0x |" in table


def test_the_wall_ends_at_the_last_result_renamed_in_not_when_a_watcher_noticed(tmp_path):
    """The issue's measure is drop to the last ``.job.finished``: its rename's ctime, not
    the exit of the ``once`` that wrote it nor the next poll of the loop that waits."""
    dropbox = tmp_path / "dropbox"
    dropbox.mkdir()
    dropped_at = time.time()
    for name in ("a.job.finished", "b.job.finished"):
        (tmp_path / name).write_text("result")
        os.rename(tmp_path / name, dropbox / name)
        time.sleep(0.05)
    last = (dropbox / "b.job.finished").stat().st_ctime
    (dropbox / "c.job.submitted").write_text("held")     # later, and no result
    time.sleep(0.05)
    assert overhead.last_result_after(dropbox, dropped_at) == pytest.approx(last - dropped_at)
    assert 0.04 <= overhead.last_result_after(dropbox, dropped_at) < time.time() - dropped_at - 0.04


def test_a_clock_starts_at_the_fraction_of_a_second_its_round_chose():
    """A Slurm job starts at the controller's pass, at one fraction of every second: the
    contestants of a round must ask at the same fraction, or that alone decides between them."""
    for phase in (0.1, 0.45, 0.8):      # by chance, all three within 0.1 s: one time in a thousand
        overhead.at_phase(phase)
        assert (time.time() - phase) % 1 < 0.1


def test_the_watch_daemons_cpu_is_counted_from_the_drop_as_wait4_would_count_it():
    """The daemon started before the jobs came: what it spent by then is taken off its
    total, and the two must be the same measure, or the difference is off by the start."""
    child = subprocess.Popen([sys.executable, "-c", "import time\nt = time.process_time()\n"
                              "while time.process_time() - t < 0.3: pass\nprint(flush=True)\ntime.sleep(60)"],
                             stdout=subprocess.PIPE)
    child.stdout.readline()
    so_far = overhead.cpu_until_now(child.pid)
    child.kill()
    _, _, rusage = os.wait4(child.pid, 0)
    total = overhead.cpu_of(rusage)
    assert 0.25 <= so_far[0] <= total[0] + 0.02 and so_far[1] <= so_far[0]
    assert total[0] - so_far[0] < 0.05
