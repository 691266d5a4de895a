"""on_hpc/policy.py, the one runner policy, with plain values; and the policy state it reads back
from the workspace, which a job could have written."""
import json
import os
import time

from dropbox_runner.on_hpc import policy, policy_state
from dropbox_runner.on_hpc.files import write_json
from dropbox_runner.on_hpc.jobstore import JobStore


def settings(**overrides):
    values = dict(slots=2, max_runners=10, user_limit=0, speculate=2, submit_cap=4, submit_per_hour=24,
                  idle_timeout=300.0, adaptive_linger=False)
    values.update(overrides)
    return policy.Settings(**values)


def pending(name):
    return policy.Runner(name, policy.PENDING, 0, 3600)


def running(name, claimed, usable=3600):
    return policy.Runner(name, "running", claimed, usable)


def test_one_ready_job_gets_speculate_runners_racing_for_it():
    assert policy.decide(settings(), [60], []) == policy.Decision(2, (), 2)
    assert policy.decide(settings(), [60], [pending("a"), pending("b")]).submit == 0


def test_a_burst_is_covered_in_proportion_but_never_above_the_cycle_and_hourly_caps():
    assert policy.decide(settings(), [60] * 1000, []).submit == 4                    # submit_cap
    assert policy.decide(settings(), [60] * 1000, [], submitted_last_hour=22).submit == 2
    assert policy.decide(settings(), [60] * 1000, [], submitted_last_hour=24).submit == 0
    assert policy.decide(settings(), [60] * 1000, [], submitted_last_hour=99).submit == 0
    assert policy.decide(settings(submit_cap=50), [60] * 1000, []).submit == 10     # max_runners
    assert policy.decide(settings(submit_cap=50), [60] * 7, []).submit == 4         # ceil(7 / 2 slots)


def test_the_site_limit_counts_every_class_and_pending_runners():
    decision = policy.decide(settings(user_limit=6, submit_cap=50), [60] * 100, [pending("a")], others_live=4)
    assert decision.submit == 1 and decision.cancel == ()
    # Over the limit (it was lowered): the newest pending runners go.
    decision = policy.decide(settings(user_limit=3), [60] * 100, [pending("a"), pending("b")], others_live=2)
    assert decision.submit == 0 and decision.cancel == ("b",)


def test_free_slots_of_started_runners_count_before_anything_is_submitted():
    assert policy.decide(settings(), [60, 60], [running("a", 0)]).submit == 0
    assert policy.decide(settings(), [60] * 3, [running("a", 0)]).submit == 2      # 1 uncovered: speculate
    # A job that needs more time than the started runner has left needs a fresh one.
    assert policy.decide(settings(), [7200], [running("a", 0, usable=600)]).submit == 2


def test_work_started_runners_get_through_within_half_a_queue_wait_needs_no_new_runner():
    started = [running("a", 2), running("b", 2)]
    # 2 runners x 2 slots x half of 2 h: 24 jobs of 10 minutes.
    assert policy.decide(settings(), [600] * 24, started, queue_wait=7200).submit == 0
    assert policy.decide(settings(), [600] * 30, started, queue_wait=7200).submit == 3   # 6 left: 3 runners
    assert policy.decide(settings(), [0] * 10, started, queue_wait=7200).submit == 4     # times unknown
    # A runner about to reach its limit gets through only what its time left allows.
    ending_soon = [running("a", 2, usable=600), running("b", 2, usable=600)]
    assert policy.decide(settings(), [600] * 24, ending_soon, queue_wait=7200).submit == 4


def test_when_the_backlog_is_gone_pending_runners_are_cancelled_never_started_ones():
    runners = [running("a", 1), pending("b"), pending("c"), policy.Runner("d", policy.PENDING, 1, 3600),
               policy.Runner("e", "ending", 0, 0)]
    decision = policy.decide(settings(), [], runners)
    assert decision.submit == 0 and decision.cancel == ("b", "c")


def test_a_smaller_backlog_keeps_the_oldest_pending_runners():
    runners = [pending(name) for name in "abcdef"]
    assert policy.decide(settings(), [60] * 5, runners).cancel == ("d", "e", "f")


def test_adaptive_linger_only_while_arrivals_within_a_queue_wait_fill_the_slots():
    fixed = settings(idle_timeout=120.0)
    assert policy.linger_seconds(fixed, 0.0, 3600) == 120.0
    adaptive = settings(idle_timeout=120.0, adaptive_linger=True)
    assert policy.linger_seconds(adaptive, 2 / 3600, 3600) == 120.0      # 2 expected in a wait, 2 slots
    # Not paying for itself: one submitter cycle, for the rest of a collection it brings.
    assert policy.linger_seconds(adaptive, 1 / 3600, 3600) == policy.CYCLE_LINGER == 60.0
    assert policy.linger_seconds(adaptive, 0.0, 1e9) == 60.0
    assert policy.linger_seconds(adaptive, 0.0, 5.0) == 5.0      # a new runner starts sooner than that
    assert policy.linger_seconds(settings(idle_timeout=20.0, adaptive_linger=True), 0.0, 1e9) == 20.0
    assert policy.arrival_rate([0, 100, 500, 650], now=700, window=600) == 2 / 600


def test_settings_from_a_request_are_bounded():
    rules = policy.settings_from({"slots": 0, "max_runners": -3, "submit_cap": -2, "user_limit": -1})
    assert (rules.slots, rules.max_runners, rules.submit_cap, rules.user_limit) == (1, 1, 1, 0)
    assert rules.speculate == policy.SPECULATE and rules.adaptive_linger is False


def test_policy_state_written_by_a_job_counts_as_nothing_remembered(tmp_path):
    store = JobStore(str(tmp_path))
    store.ensure_layout()
    os.makedirs(policy_state.folder(store))
    for junk in ('[1, 2]', '{"submitted": "x", "arrivals": [true, "1", null], "queue_wait": "NaN", '
                           '"seen": [1, "r"], "cancelled": []}', 'not json'):
        with open(policy_state.state_path(store, "gpu"), "w") as handle:
            handle.write(junk)
        state = policy_state.load(store, "gpu", now=1000.0)
        assert state["submitted"] == [] and state["arrivals"] == [] and state["queue_wait"] is None
        assert state["cancelled"] == 0 and state["seen"] in ([], ["r"])
    write_json(policy_state.state_path(store, "gpu"), {"submitted": [10.0, 990.0], "arrivals": [100.0, 950.0]})
    state = policy_state.load(store, "gpu", now=1000.0 + 3000)
    assert state["submitted"] == [990.0] and state["arrivals"] == []


def test_an_idle_runner_lingers_as_the_last_cycle_said_never_longer_than_idle_timeout(tmp_path):
    store = JobStore(str(tmp_path))
    store.ensure_layout()
    assert policy_state.read_linger(store, "gpu", 60.0, now=1000.0) == 60.0        # no cycle yet
    policy_state.write_linger(store, "gpu", 0.0, 1000.0)
    assert policy_state.read_linger(store, "gpu", 60.0, now=1010.0) == 0.0
    assert policy_state.read_linger(store, "gpu", 60.0, now=1000.0 + 3600) == 60.0  # stale: the fixed value
    with open(policy_state.linger_path(store, "gpu"), "w") as handle:
        json.dump({"seconds": 1e9, "at": 1000.0}, handle)                          # a job wrote this
    assert policy_state.read_linger(store, "gpu", 60.0, now=1010.0) == 60.0


def test_cancelled_pending_runners_are_counted_in_the_metrics_file(tmp_path):
    from types import SimpleNamespace

    from dropbox_runner import metrics
    from dropbox_runner.report import CycleReport
    config = SimpleNamespace(metrics_file=tmp_path / "dbr.prom", state_dir=tmp_path / "state", classes={})
    metrics.record_cycle(config, CycleReport(runners_submitted=3, runners_cancelled=2))
    metrics.record_cycle(config, CycleReport(runners_cancelled=1))
    text = (tmp_path / "dbr.prom").read_text()
    assert "dropbox_runner_runner_cancels_total 3" in text
    assert "dropbox_runner_runner_submissions_total 3" in text


def test_slurm_is_asked_to_cancel_only_what_is_still_pending():
    from dropbox_runner.on_hpc.sched_slurm import scancel_pending_argv
    assert scancel_pending_argv(["17", 18]) == ["scancel", "--state=PENDING", "17", "18"]


def test_an_adaptive_runner_leaves_at_once_when_a_new_runner_would_start_sooner_than_work_comes(config_factory):
    """The local scheduler starts a runner in moments: lingering idle never pays for itself there."""
    from helpers import drain, drop, wait_until
    config = config_factory(classes={"default": {"slots": 1, "idle_timeout": 600, "adaptive_linger": True}})
    drop(config, "a.job", {"script": "ledger", "args": {"seconds": 0}, "cache": False,
                           "output_map": {"out": str(config.dropbox.parent / "outputs" / "a.txt")}})
    drain(config, ["a.job"])
    runners = os.path.join(config.workspace, "runners")
    # idle_timeout is 10 minutes: only the adaptive linger lets it go this soon.
    wait_until(lambda: not [name for name in os.listdir(runners) if name.endswith(".alive.json")], 30, 0.2,
               "the idle runner to leave")
    store = JobStore(config.workspace)
    assert policy_state.read_linger(store, "default", 600.0) < 60   # at most the (near nil) queue wait
    assert policy_state.load(store, "default", now=time.time())["queue_wait"] < 60


def test_a_runner_of_several_nodes_counts_slots_on_each():
    assert policy.settings_from({"slots": 4, "nodes": 3}).slots == 12
    assert policy.settings_from({"slots": 4}).slots == 4
    # A backlog of 24 default-sized jobs: two 3-node runners, not six.
    assert policy.decide(policy.settings_from({"slots": 4, "nodes": 3, "max_runners": 10}), [60] * 24, []).submit == 2
