"""The head node's queue step with a stand-in scheduler: when runners are submitted, what a
silent scheduler changes (nothing), and how lost work is requeued."""
import json
import os
import subprocess
import time

import pytest
from dropbox_runner.on_hpc import headnode
from dropbox_runner.on_hpc.files import read_json, write_json
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import FinishedRecord, JobState, Release, RunnerState
from dropbox_runner.on_hpc.sched_local import LocalConnector
from dropbox_runner.on_hpc.schedulers import Connector, RunnerInfo, SchedulerUnavailable, SubmitFailed


class FakeScheduler(Connector):
    """Counts calls; ``listing`` is what the scheduler shows, or an exception to raise.
    Like Slurm, it lists a runner from the moment it is submitted."""

    lists_at_submission = True

    def __init__(self, store):
        super().__init__(store)
        self.listing = {}
        self.last = {}
        self.submitted = []
        self.cancelled = []
        self.list_calls = 0
        self.fail_submit = None
        self.record_at_submit = None

    def submit(self, spec, spec_path, argv, env):
        self.record_at_submit = read_json(spec_path)
        if self.fail_submit:
            raise self.fail_submit
        self.submitted.append(spec)
        sched_id = str(100 + len(self.submitted))
        self.listing[spec["id"]] = RunnerInfo(spec["id"], sched_id, RunnerState.PENDING, spec["time_limit"])
        return sched_id

    def list_runners(self):
        self.list_calls += 1
        if isinstance(self.listing, Exception):
            raise self.listing
        self.last = dict(self.listing)
        return dict(self.listing)

    def last_known_runners(self):
        return dict(self.last)

    def cancel(self, sched_ids):
        self.cancelled += list(sched_ids)


@pytest.fixture
def store(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    return store


def stage(store, job_id, job_class="default", expected=None):
    folder = store.job_dir(job_id)
    os.makedirs(folder)
    with open(os.path.join(folder, "job.sh"), "w") as handle:
        handle.write("#!/bin/sh\ntrue\n")
    write_json(os.path.join(folder, "job.json"),
               {"id": job_id, "class": job_class, "expected_seconds": expected})
    return job_id


def request(store, in_flight=(), classes=None, **extra):
    answer = {"root": store.root, "scheduler": "fake", "submitter": "sub", "pythonpath": "/p",
              "python": "python3", "in_flight": list(in_flight), "max_attempts": 3,
              "classes": classes or {"default": {"slots": 4, "max_runners": 1}}}
    answer.update(extra)
    return answer


def cycle(store, sched, *args, **kwargs):
    return headnode.cycle(request(store, *args, **kwargs), sched=sched)


# -- ensure runners --------------------------------------------------------------------------
def test_no_ready_work_no_runner(store):
    sched = FakeScheduler(store)
    answer = cycle(store, sched)
    assert sched.submitted == [] and answer["submitted"] == []
    assert sched.list_calls == 1


def test_a_burst_gets_one_runner_and_one_listing_per_cycle(store):
    sched = FakeScheduler(store)
    jobs = [stage(store, "sub.j%02d" % n) for n in range(50)]
    answer = cycle(store, sched, jobs)
    assert answer["counts"] == {JobState.QUEUED: 50}
    assert [s["class"] for s in sched.submitted] == ["default"]
    assert sched.list_calls == 1
    for _ in range(3):                  # the runner is pending: no second one (max_runners 1)
        cycle(store, sched, jobs)
    assert len(sched.submitted) == 1
    assert sched.list_calls == 4


def test_a_backlog_gets_runners_in_proportion_several_per_cycle_up_to_max_runners(store):
    sched = FakeScheduler(store)
    classes = {"default": {"slots": 4, "max_runners": 3, "speculate": 2}}
    jobs = [stage(store, "sub.j%d" % n) for n in range(4)]
    cycle(store, sched, jobs, classes=classes)
    cycle(store, sched, jobs, classes=classes)
    assert len(sched.submitted) == 2     # 4 jobs fit one runner; a second pending races it (speculate: 2)
    jobs += [stage(store, "sub.k%d" % n) for n in range(20)]
    cycle(store, sched, jobs, classes=classes)
    assert len(sched.submitted) == 3     # 24 jobs want 6 runners: max_runners
    cycle(store, sched, jobs, classes=classes)
    assert len(sched.submitted) == 3


def test_runners_of_a_class_are_counted_by_claims(store):
    sched = FakeScheduler(store)
    classes = {"default": {"slots": 2, "max_runners": 2}}
    jobs = [stage(store, "sub.j%d" % n) for n in range(3)]
    cycle(store, sched, jobs, classes=classes)
    runner = sched.submitted[0]["id"]
    sched.listing[runner] = sched.listing[runner]._replace(state=RunnerState.RUNNING)
    for job_id in jobs[:2]:
        assert store.claim("default", job_id, runner)
    cycle(store, sched, jobs, classes=classes)
    assert len(sched.submitted) == 2     # 1 ready, 0 free slots


def test_each_class_gets_its_own_runner(store):
    sched = FakeScheduler(store)
    classes = {"default": {"slots": 4}, "gpu": {"slots": 2, "gres": "gpu:2"}}
    jobs = [stage(store, "sub.c%d" % n) for n in range(3)] + \
           [stage(store, "sub.g%d" % n, job_class="gpu") for n in range(3)]
    cycle(store, sched, jobs, classes=classes)
    assert sorted(s["class"] for s in sched.submitted) == ["default", "gpu"]
    gpu = [s for s in sched.submitted if s["class"] == "gpu"][0]
    assert gpu["resources"]["gres"] == "gpu:2" and gpu["slots"] == 2


def test_a_job_needing_more_time_than_live_runners_have_gets_a_fresh_one(store):
    sched = FakeScheduler(store)
    classes = {"default": {"slots": 4, "max_runners": 2, "time_limit": 3600, "warn_seconds": 60}}
    first = stage(store, "sub.a", expected=60)
    cycle(store, sched, [first], classes=classes)
    runner = sched.submitted[0]["id"]
    sched.listing[runner] = RunnerInfo(runner, "101", RunnerState.RUNNING, 600)   # 10 min left
    long_job = stage(store, "sub.b", expected=1800)
    cycle(store, sched, [first, long_job], classes=classes)
    assert len(sched.submitted) == 2


def test_the_intent_is_recorded_before_the_submission(store):
    sched = FakeScheduler(store)
    jobs = [stage(store, "sub.j")]
    # A submission that dies with the cycle (the record was written, sbatch may have run).
    sched.fail_submit = SubmitFailed("sbatch: timed out", uncertain=True)
    answer = cycle(store, sched, jobs)
    assert sched.record_at_submit["class"] == "default"
    assert sched.record_at_submit["submitted_at"] <= time.time()
    assert "sched_id" not in sched.record_at_submit
    assert answer["errors"] and "timed out" in answer["errors"][0]
    # Later cycles count the recorded runner as pending: no second submission...
    sched.fail_submit = None
    cycle(store, sched, jobs)
    assert sched.submitted == []
    # ...and when the scheduler shows it (its job name carries the runner id), it is that.
    runner_id = sched.record_at_submit["id"]
    sched.listing = {runner_id: RunnerInfo(runner_id, "55", RunnerState.PENDING, None)}
    answer = cycle(store, sched, jobs)
    assert sched.submitted == []
    assert [r["sched_id"] for r in answer["runners"]] == ["55"]


def test_a_refused_submission_leaves_no_record_and_is_retried(store):
    sched = FakeScheduler(store)
    jobs = [stage(store, "sub.j")]
    sched.fail_submit = SubmitFailed("invalid partition specified: nope")
    answer = cycle(store, sched, jobs)
    assert "invalid partition" in answer["errors"][0]
    assert answer["counts"] == {JobState.QUEUED: 1}        # the job waits, nothing failed
    assert [n for n in os.listdir(store.runners_dir()) if n.startswith("default")] == []
    sched.fail_submit = None
    cycle(store, sched, jobs)
    assert len(sched.submitted) == 1


def test_an_ended_runners_record_is_dropped(store):
    sched = FakeScheduler(store)
    jobs = [stage(store, "sub.j")]
    cycle(store, sched, jobs)
    runner = sched.submitted[0]["id"]
    sched.listing = {}                            # cancelled while pending: gone from squeue
    cycle(store, sched, jobs)
    assert len(sched.submitted) == 2              # a fresh one at once, no waiting out a grace
    assert not os.path.exists(os.path.join(store.runners_dir(), runner + ".json"))


# -- a silent scheduler ------------------------------------------------------------------------
def test_a_failing_listing_fails_nothing_and_submits_nothing(store):
    sched = FakeScheduler(store)
    claimed, waiting, done = stage(store, "sub.claimed"), stage(store, "sub.waiting"), stage(store, "sub.done")
    cycle(store, sched, [claimed, waiting, done])
    runner = sched.submitted[0]["id"]
    assert store.claim("default", claimed, runner) and store.claim("default", done, runner)
    store.finish(runner, done, FinishedRecord(rc=0))
    sched.listing = SchedulerUnavailable("squeue: Socket timed out on send/recv operation")
    before = list(sched.submitted)
    answer = cycle(store, sched, [claimed, waiting, done])
    assert answer["scheduler_ok"] is False
    assert "Socket timed out" in answer["errors"][0]
    assert answer["states"] == {claimed: JobState.RUNNING, waiting: JobState.QUEUED, done: JobState.DONE}
    assert [item["id"] for item in answer["finished"]] == [done]    # collection goes on
    assert answer["requeued"] == [] and answer["submitted"] == [] and sched.submitted == before
    assert [r["runner"] for r in answer["runners"]] == [runner]     # the last known listing
    assert sched.list_calls == 2


def test_status_lists_runners_with_ids_and_time_left(store):
    sched = FakeScheduler(store)
    cycle(store, sched, [stage(store, "sub.j")], classes={"default": {"time_limit": 600}})
    runner = sched.submitted[0]["id"]
    sched.listing[runner] = RunnerInfo(runner, "101", RunnerState.RUNNING, 599)
    answer = headnode.status(request(store), sched=sched)
    assert answer["runners"] == [{"runner": runner, "sched_id": "101", "state": RunnerState.RUNNING,
                                  "time_left": 599, "class": "default", "jobs": 0, "reason": ""}]
    sched.listing = SchedulerUnavailable("down")
    answer = headnode.status(request(store), sched=sched)
    assert answer["scheduler_ok"] is False and answer["runners"][0]["time_left"] == 599


# -- requeue ----------------------------------------------------------------------------------
def _claimed_by_vanished_runner(store, sched, job_id, attempt=1):
    runner = "default-20250101T000000-%06d" % attempt
    assert store.claim("default", job_id, runner)
    with open(store.claims_path(runner), "a") as journal:
        journal.write(json.dumps({"job": job_id, "runner": runner, "attempt": attempt}) + "\n")
    return runner


def test_a_requeue_says_what_was_left_of_the_runner_taken_for_gone(store):
    """A heartbeat file written a minute ago and no record: the runner died without a word
    (a fresh one would say it runs unlisted), and the reason says so to whoever reads it."""
    sched = FakeScheduler(store)
    job = stage(store, "sub.j")
    cycle(store, sched, [job])
    sched.listing = {}
    runner = _claimed_by_vanished_runner(store, sched, job)
    alive = os.path.join(store.runners_dir(), runner + ".alive.json")
    write_json(alive, {"pid": 1})
    os.utime(alive, (time.time() - 61, time.time() - 61))
    answer = cycle(store, sched, [job])
    assert answer["requeued"][0]["reason"] == "runner %s is gone (no record, heartbeat 61 s old)" % runner


class LocalRunnerStartingWhileListed(LocalConnector):
    """The embedded scheduler, with a runner that starts, writes its heartbeat file and
    claims a job just after the listing looked for heartbeat files: the race that took a
    live runner for gone."""

    def __init__(self, store, runner_id, job_id):
        super().__init__(store)
        self.runner_id, self.job_id, self.process = runner_id, job_id, None

    def list_runners(self):
        found = super().list_runners()
        if self.process is None:
            self.process = subprocess.Popen(["sh", "-c", "sleep 60", self.runner_id])   # its id in its cmdline
            write_json(os.path.join(self.store.runners_dir(), self.runner_id + ".alive.json"),
                       {"pid": self.process.pid})
            assert self.store.claim("default", self.job_id, self.runner_id)
        return found


def test_a_runner_that_claims_while_the_runners_are_listed_is_not_taken_for_gone(store):
    job = stage(store, "sub.j")
    runner = "default-20250101T000000-000001"
    sched = LocalRunnerStartingWhileListed(store, runner, job)
    no_new_runner = {"default": {"slots": 4, "max_runners": 0}}
    try:
        first = cycle(store, sched, [job], classes=no_new_runner)
        second = cycle(store, sched, [job], classes=no_new_runner)
    finally:
        sched.process.kill()
        sched.process.wait()
    assert first["requeued"] == [] and second["requeued"] == []
    assert store.claimed_jobs(runner) == [job]
    assert os.path.exists(os.path.join(store.runners_dir(), runner + ".alive.json"))


def test_work_of_a_vanished_runner_is_requeued_then_failed_after_max_attempts(store):
    sched = FakeScheduler(store)
    job = stage(store, "sub.j")
    cycle(store, sched, [job], max_attempts=2)
    sched.listing = {}
    runner = _claimed_by_vanished_runner(store, sched, job, attempt=1)
    answer = cycle(store, sched, [job], max_attempts=2)
    assert answer["requeued"] == [{"id": job, "outcome": "requeued",
                                   "reason": "runner %s is gone (no record, no heartbeat)" % runner}]
    assert answer["states"] == {job: JobState.QUEUED}
    assert len(read_json(os.path.join(store.job_dir(job), "interruptions.json"))) == 1
    assert not os.path.exists(store.claimed_dir(runner))
    sched.listing = {}
    _claimed_by_vanished_runner(store, sched, job, attempt=2)
    answer = cycle(store, sched, [job], max_attempts=2)
    assert answer["requeued"][0]["outcome"] == "failed"
    assert answer["states"] == {job: JobState.DONE}
    record = answer["finished"][0]["record"]
    assert record["error"].startswith("interrupted 2 times")


def test_a_silent_runner_is_cancelled_and_its_work_requeued(store):
    sched = FakeScheduler(store)
    job = stage(store, "sub.j")
    cycle(store, sched, [job])
    runner = sched.submitted[0]["id"]
    sched.listing[runner] = RunnerInfo(runner, "101", RunnerState.RUNNING, 3000)
    assert store.claim("default", job, runner)
    alive = os.path.join(store.runners_dir(), runner + ".alive.json")
    write_json(alive, {"pid": 1})
    answer = cycle(store, sched, [job], heartbeat_timeout=300)
    assert answer["requeued"] == [] and sched.cancelled == []
    os.utime(alive, (time.time() - 400, time.time() - 400))
    answer = cycle(store, sched, [job], heartbeat_timeout=300)
    assert sched.cancelled == ["101"]
    assert answer["requeued"][0]["outcome"] == "requeued"
    assert "stopped answering" in answer["requeued"][0]["reason"]


def test_a_job_that_ran_to_completion_is_never_requeued(store):
    sched = FakeScheduler(store)
    job = stage(store, "sub.j")
    cycle(store, sched, [job])
    sched.listing = {}
    _claimed_by_vanished_runner(store, sched, job)
    # The runner wrote finished.json and died before moving the marker.
    write_json(store.finished_path(job), {"rc": 0, "start": 1, "end": 2})
    answer = cycle(store, sched, [job])
    assert answer["requeued"][0]["outcome"] == Release.DONE
    assert answer["states"] == {job: JobState.DONE}
    assert not os.path.exists(os.path.join(store.job_dir(job), "interruptions.json"))


def test_one_interruption_handed_back_twice_counts_once(store):
    job = stage(store, "sub.j")
    store.make_ready(job, {})
    assert store.claim("default", job, "r1")
    assert store.release("r1", job, "runner r1 got SIGTERM", 3, attempt=1) == "requeued"
    assert store.release("r1", job, "runner r1 is gone", 3, attempt=1) == "gone"
    assert len(read_json(os.path.join(store.job_dir(job), "interruptions.json"))) == 1


def test_jobs_expecting_more_than_a_fresh_runner_has_end_with_an_error(store):
    sched = FakeScheduler(store)
    classes = {"default": {"time_limit": 60, "warn_seconds": 60}}
    short, too_long = stage(store, "sub.short", expected=20), stage(store, "sub.long", expected=120)
    answer = cycle(store, sched, [short, too_long], classes=classes)
    assert answer["states"] == {short: JobState.QUEUED, too_long: JobState.DONE}
    assert [item["id"] for item in answer["refused"]] == [too_long]
    error = answer["finished"][0]["record"]["error"]
    assert "expected_time 2m exceeds" in error and "class 'default'" in error
    assert len(sched.submitted) == 1            # for the short job only


# -- the runner policy's own failures ----------------------------------------------------------
def test_a_policy_state_that_cannot_be_written_costs_no_submission(store):
    """A failing disk under runners/policy: the cycle still answers and submits, bounded as ever."""
    with open(os.path.join(store.runners_dir(), "policy"), "w") as handle:
        handle.write("not a folder")
    sched = FakeScheduler(store)
    answer = cycle(store, sched, [stage(store, "sub.j")])
    assert len(sched.submitted) == 1 and len(answer["submitted"]) == 1


def test_an_expected_time_that_is_not_a_number_counts_as_not_stated(store):
    sched = FakeScheduler(store)
    jobs = [stage(store, "sub.a", expected="1h"), stage(store, "sub.b", expected=float("nan")),
            stage(store, "sub.c", expected=-5)]
    answer = cycle(store, sched, jobs, classes={"default": {"slots": 1, "max_runners": 5}})
    assert not answer["errors"] and len(sched.submitted) == 3


def test_a_cycle_that_submits_nothing_syncs_nothing(store, monkeypatch):
    """The policy's memory (its state and the linger it advises) is rewritten every cycle
    and is a help, not a need: whole or absent after a crash is enough, and an fsync of
    each cost every cycle two journal commits (a round trip to the server on NFS) while the
    submitter waited for the answer.  Only the record of a submission's intent is synced."""
    from dropbox_runner.on_hpc import files, policy_state

    sched = FakeScheduler(store)
    jobs = [stage(store, "sub.j%02d" % n) for n in range(5)]
    cycle(store, sched, jobs[:1])
    assert len(sched.submitted) == 1
    synced = []
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(fd))
    monkeypatch.setattr(files, "_SYNCFS", lambda fd: synced.append(fd) or 0)
    for count in range(2, 6):           # more jobs queued; the runner is pending: none submitted
        cycle(store, sched, jobs[:count])
    assert len(sched.submitted) == 1 and synced == []
    assert read_json(policy_state.state_path(store, "default"))["submitted"]     # still kept
    assert read_json(policy_state.linger_path(store, "default"))["seconds"] >= 0
