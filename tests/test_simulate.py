"""bench/simulate.py: the queue-wait model is deterministic, fair at zero wait, and batches bursts."""
import importlib.util
import sys
from pathlib import Path

import pytest

SIMULATE_PATH = Path(__file__).resolve().parent.parent / "bench" / "simulate.py"


def load_simulate():
    """bench/ is not a package; dataclasses need the module registered while it executes."""
    spec = importlib.util.spec_from_file_location("simulate", SIMULATE_PATH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["simulate"] = module
    spec.loader.exec_module(module)
    return module


sim = load_simulate()


def classes(slots=2, max_runners=2, idle_minutes=5):
    return {name: sim.RunnerClass(slots=slots, max_runners=max_runners, idle_timeout=idle_minutes / 60,
                                  walltime=8.0, gpu=name == sim.GPU)
            for name in sim.CLASSES}


def by_policy(outcomes):
    return {outcome.policy: outcome for outcome in outcomes}


def test_a_seed_gives_the_same_results(capsys):
    sim.main(["--days", "5", "--seed", "7", "--no-plot", "--json"])
    first = capsys.readouterr().out
    sim.main(["--days", "5", "--seed", "7", "--no-plot", "--json"])
    assert capsys.readouterr().out == first
    sim.main(["--days", "5", "--seed", "8", "--no-plot", "--json"])
    assert capsys.readouterr().out != first


def test_without_queue_wait_one_job_turns_around_alike_under_every_policy():
    job = sim.Job(0, sim.ONE_OFF, sim.GPU, drop=1.234, run=0.5)
    outcomes = sim.compare([job], classes(), sim.QueueWait(median_hours=0.0), tick=1 / 60, seed=1)
    assert len(outcomes) == 3
    turnarounds = {outcome.policy: outcome.turnaround for outcome in outcomes}
    assert len({tuple(hours) for hours in turnarounds.values()}) == 1, turnarounds
    # staged by the cycle at 1.25 h, runs half an hour, collected by the cycle at 1.75 h
    assert turnarounds["1:1"][0] == pytest.approx(1.75 - 1.234)


def test_a_burst_shares_queue_waits():
    jobs = [sim.Job(number, sim.BULK, sim.GPU, drop=number * 5 / 3600, run=10 / 60) for number in range(200)]
    queue = sim.QueueWait(median_hours=4.0, sigma=0.0)
    outcomes = by_policy(sim.compare(jobs, classes(), queue, tick=1 / 60, seed=3))
    ours, one_to_one, sequential = outcomes["dropbox-runner"], outcomes["1:1"], outcomes["hpc_batch"]
    assert one_to_one.submissions == 200
    assert ours.submissions <= 10
    assert sim.percentile(ours.turnaround, 50) < sim.percentile(sequential.turnaround, 50)
