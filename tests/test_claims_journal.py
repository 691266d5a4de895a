"""The runner's claims journal (``on_hpc/claims.py``) as a hostile job, a crash or a cleanup
script leaves it: torn and garbage lines, lines naming another runner, a symlink in its
place, the file removed under a running runner, two runners' journals, an old runner's
claim.json; and the head node reading a lost runner's claims before it forgets it."""
import json
import os
import signal
import subprocess
from types import SimpleNamespace

import pytest
from dropbox_runner.on_hpc import claims
from dropbox_runner.on_hpc.files import read_json, write_json
from dropbox_runner.on_hpc.headnode import node_use, requeue_lost_claims
from dropbox_runner.on_hpc.jobstore import JobStore
from dropbox_runner.on_hpc.protocol import RunnerState
from dropbox_runner.on_hpc.schedulers import RunnerInfo, connector
from helpers import wait_until
from test_ensure_runners import FakeScheduler, cycle
from test_ensure_runners import stage as stage_meta
from test_runner_limits import finish, stage, start_runner

R1, R2 = "default-20250101T000000-000001", "default-20250101T000000-000002"


@pytest.fixture
def store(tmp_path):
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    return store


def line(**claim):
    return json.dumps(claim) + "\n"


def write_journal(store, runner_id, text, mode="w"):
    with open(store.claims_path(runner_id), mode) as handle:
        handle.write(text)


class KillRecorder(FakeScheduler):
    def __init__(self, store):
        super().__init__(store)
        self.killed = []

    def kill_leftovers(self, job_id, claim):
        self.killed.append((job_id, claim.get("pgid")))


# -- reading ---------------------------------------------------------------------------------
def test_the_last_complete_line_wins_and_a_torn_last_line_is_skipped(store):
    write_journal(store, R1, line(job="a", runner=R1, attempt=1, pgid=100) + line(job="b", runner=R1, attempt=1)
                  + line(job="a", runner=R1, attempt=2, pgid=200) + line(job="a", runner=R1, attempt=3)[:-9])
    assert store.claim_of("a", R1) == {"job": "a", "runner": R1, "attempt": 2, "pgid": 200}
    write_journal(store, R1, '{"job": "c", "runner": "%s", "attempt": 1}' % R1, mode="a")   # no newline yet
    assert store.claim_of("c", R1) == {}                  # as a missing claim.json: nothing known
    assert sorted(store.runner_claims(R1)) == ["a", "b"]


@pytest.mark.parametrize("garbage", [
    "{not json", "[]", '"a string"', "null", "[" * 100000 + "]" * 100000, "\xff\xfe",
    json.dumps({"runner": R1}),                                  # no job
    json.dumps({"job": ["a"], "runner": R1}), json.dumps({"job": "", "runner": R1})])
def test_a_garbage_line_is_skipped_and_the_lines_around_it_are_read(store, garbage):
    write_journal(store, R1, line(job="a", runner=R1, attempt=1) + garbage + "\n" + line(job="b", runner=R1, attempt=4))
    assert store.claim_of("a", R1)["attempt"] == 1 and store.claim_of("b", R1)["attempt"] == 4


def test_fields_of_the_wrong_type_are_dropped_not_trusted(store):
    os.makedirs(os.path.join(store.root, "claimed", R1))
    os.close(os.open(os.path.join(store.claimed_dir(R1), "a"), os.O_CREAT))
    write_journal(store, R1, line(job="a", runner=R1, attempt=True, pgid=1, node="n1",
                                  request={"cpus": "4; rm -rf /", "memory_mb": -5, "gpus": 1}))
    claim = store.claim_of("a", R1)
    assert "attempt" not in claim and "pgid" not in claim    # True is no attempt; 1 (init) no job's group
    assert claim["request"] == {"gpus": 1}
    write_json(os.path.join(store.runners_dir(), R1 + ".alive.json"),
               {"nodes": [{"node": "n1", "jobs": 0, "cpus": [0, 4], "memory_mb": [0, 100], "gpus": [0, 2]}]})
    assert node_use(store, R1) == [{"node": "n1", "jobs": 1, "cpus": [0, 4], "memory_mb": [0, 100], "gpus": [1, 2]}]


def test_a_line_naming_another_runner_is_not_this_runners_claim(store):
    """A job (same account as its runner) appends a forged line naming another runner, or a
    line copied from another journal: the reader of R1's journal takes neither."""
    write_journal(store, R1, line(job="a", runner=R2, attempt=1, pgid=4242) + line(job="b", runner=R1, attempt=1))
    assert store.claim_of("a", R1) == {}
    assert store.claim_of("a", R2) == {}                      # R2's own journal does not say so
    assert list(store.runner_claims(R1)) == ["b"]


def test_two_runners_journals_each_answer_for_their_own_runs(store):
    write_journal(store, R1, line(job="a", runner=R1, attempt=1, pgid=101))
    write_journal(store, R2, line(job="a", runner=R2, attempt=2, pgid=202) + line(job="b", runner=R2, attempt=1))
    assert store.claim_of("a", R1)["pgid"] == 101 and store.claim_of("a", R2)["pgid"] == 202
    assert "b" not in store.runner_claims(R1)
    os.makedirs(store.claimed_dir(R2))
    os.close(os.open(os.path.join(store.claimed_dir(R2), "a"), os.O_CREAT))
    assert store.claim_of("a")["runner"] == R2                # by default: the runner holding it
    store.forget_runner(R1)
    assert not os.path.exists(store.claims_path(R1)) and store.claim_of("a", R2)["attempt"] == 2


def test_a_symlinked_journal_is_not_read(store, tmp_path):
    (tmp_path / "elsewhere").write_text(line(job="a", runner=R1, attempt=1))
    os.symlink(tmp_path / "elsewhere", store.claims_path(R1))
    assert store.claim_of("a", R1) == {}


def test_only_the_journals_last_bytes_are_read(store, monkeypatch):
    monkeypatch.setattr(claims, "MAX_READ_BYTES", 200)
    write_journal(store, R1, line(job="old", runner=R1, attempt=1) + "x" * 300 + "\n" + line(job="new", runner=R1))
    assert list(store.runner_claims(R1)) == ["new"]


def test_an_old_runners_claim_json_is_read_when_the_journal_has_no_line(store):
    stage_meta(store, "sub.a")
    write_json(os.path.join(store.job_dir("sub.a"), "claim.json"), {"runner": R1, "attempt": 2, "pgid": 77})
    assert store.claim_of("sub.a", R1) == {"job": "sub.a", "runner": R1, "attempt": 2, "pgid": 77}
    assert store.claim_of("sub.a", R2) == {}                  # another runner's claim.json
    write_journal(store, R1, line(job="sub.a", runner=R1, attempt=3))
    assert store.claim_of("sub.a", R1)["attempt"] == 3        # the journal wins


# -- writing ---------------------------------------------------------------------------------
def test_a_write_that_fails_part_way_costs_only_its_own_line(store, monkeypatch):
    journal = claims.Journal(store.claims_path(R1))
    journal.add({"job": "a", "runner": R1, "attempt": 1}, lambda: [])        # written afresh: first start
    journal.add({"job": "b", "runner": R1, "attempt": 1}, lambda: [])
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:10]))     # a disk that fills
    with pytest.raises(OSError):
        journal.add({"job": "c", "runner": R1, "attempt": 1}, lambda: [])
    monkeypatch.setattr(os, "write", real_write)
    journal.add({"job": "d", "runner": R1, "attempt": 1}, lambda: [])
    assert sorted(store.runner_claims(R1)) == ["a", "b", "d"]


def test_the_runner_replaces_a_symlink_planted_at_its_journal_and_never_writes_through_it(store, tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious\n")
    os.symlink(victim, store.claims_path(R1))
    journal = claims.Journal(store.claims_path(R1))
    journal.add({"job": "a", "runner": R1}, lambda: [{"job": "a", "runner": R1}])
    journal.add({"job": "b", "runner": R1}, lambda: [])
    assert victim.read_text() == "precious\n"
    assert not os.path.islink(store.claims_path(R1)) and sorted(store.runner_claims(R1)) == ["a", "b"]


def test_a_long_lived_runners_journal_is_rewritten_with_its_running_jobs_only(store, monkeypatch):
    monkeypatch.setattr(claims, "REWRITE_LINES", 50)
    journal = claims.Journal(store.claims_path(R1))
    running = {}
    for n in range(1000):
        running["j%d" % n] = {"job": "j%d" % n, "runner": R1, "attempt": 1}
        running.pop("j%d" % (n - 3), None)                   # three run at once
        journal.add(running["j%d" % n], lambda: list(running.values()))
    with open(store.claims_path(R1)) as handle:
        assert len(handle.readlines()) <= 50
    assert set(running) <= set(store.runner_claims(R1))
    assert [name for name in os.listdir(store.runners_dir()) if "tmp" in name] == []


# -- the head node ---------------------------------------------------------------------------
def test_a_lost_runners_claims_are_read_before_its_journal_goes(store):
    """The head node kills by the journal's pgid, counts the journal's attempt, and only then
    forgets the runner and its journal."""
    sched = KillRecorder(store)
    job = stage_meta(store, "sub.j")
    cycle(store, sched, [job])
    sched.listing = {}
    assert store.claim("default", job, R1)
    write_journal(store, R1, line(job=job, runner=R1, attempt=2, pgid=4321, host="h"))
    answer = cycle(store, sched, [job])
    assert answer["requeued"][0]["outcome"] == "requeued" and sched.killed == [(job, 4321)]
    assert [entry["attempt"] for entry in read_json(os.path.join(store.job_dir(job), "interruptions.json"))] == [2]
    assert not os.path.exists(store.claims_path(R1))


def test_a_lost_runner_with_no_claim_line_is_handled_as_a_missing_claim(store):
    sched = KillRecorder(store)
    job = stage_meta(store, "sub.j")
    cycle(store, sched, [job])
    sched.listing = {}
    assert store.claim("default", job, R1)
    write_journal(store, R1, line(job=job, runner=R2, attempt=5, pgid=4321))     # forged: not R1's
    answer = cycle(store, sched, [job])
    assert answer["requeued"][0]["outcome"] == "requeued" and sched.killed == [(job, None)]
    assert [entry["attempt"] for entry in read_json(os.path.join(store.job_dir(job), "interruptions.json"))] == [1]


def test_forgetting_a_runner_keeps_its_journal_while_it_still_holds_jobs(store):
    job = stage_meta(store, "sub.j")
    store.make_ready(job, {})
    assert store.claim("default", job, R1)
    write_journal(store, R1, line(job=job, runner=R1, attempt=1))
    store.forget_runner(R1)
    assert store.claim_of(job, R1)["attempt"] == 1
    store.release(R1, job, "gone", 3)
    store.forget_runner(R1)
    assert not os.path.exists(store.claims_path(R1))


def test_a_silent_runner_still_listed_is_requeued_from_its_journal(store):
    sched = KillRecorder(store)
    job = stage_meta(store, "sub.j")
    cycle(store, sched, [job])
    runner = sched.submitted[0]["id"]
    sched.listing[runner] = RunnerInfo(runner, "101", RunnerState.RUNNING, 3000)
    assert store.claim("default", job, runner)
    write_json(os.path.join(store.runners_dir(), runner + ".alive.json"), {"pid": 1})
    os.utime(os.path.join(store.runners_dir(), runner + ".alive.json"), (1, 1))
    write_journal(store, runner, line(job=job, runner=runner, attempt=1, pgid=999))
    answer = cycle(store, sched, [job], heartbeat_timeout=300)
    assert answer["requeued"][0]["outcome"] == "requeued" and sched.killed == [(job, 999)]


# -- a real runner ---------------------------------------------------------------------------
def test_a_runner_whose_journal_is_removed_writes_it_again_with_its_running_jobs(tmp_path):
    """The heartbeat finds the journal gone (a cleanup script) and writes the running jobs'
    claims afresh, so a runner lost afterwards still has its job's processes killed."""
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    job = stage(store, "sub.long", "sleep 60")
    runner = start_runner(store)
    try:
        claim = wait_until(lambda: store.claim_of(job, runner.runner_id), 20, what="the job to start")
        assert claim["attempt"] == 1 and claim["pgid"] > 1 and claim["host"]
        os.unlink(store.claims_path(runner.runner_id))
        assert store.claim_of(job, runner.runner_id) == {}
        again = wait_until(lambda: store.claim_of(job, runner.runner_id), 30, what="the journal written again")
        assert again == claim
        assert "claims journal" in open(runner.log).read()
        assert not os.path.exists(os.path.join(store.job_dir(job), "claim.json"))     # no file per job
    finally:
        runner.send_signal(signal.SIGTERM)
        try:
            log = finish(runner)
        except subprocess.TimeoutExpired:
            log = ""
    assert "released %s" % job in log
    assert not os.path.exists(store.claims_path(runner.runner_id))      # gone with the runner


def test_a_sigkilled_runners_job_is_killed_from_its_journal_before_the_journal_goes(tmp_path):
    """A real runner SIGKILLed mid-job: the head node reads its journal, kills the job's
    process group left running (by the pgid there, on this host), counts attempt 1, and
    only then forgets the runner with its journal."""
    store = JobStore(str(tmp_path / "ws"))
    store.ensure_layout()
    job = stage(store, "sub.orphan", "sleep 60 & echo $! > child; wait")
    runner = start_runner(store)
    claim = wait_until(lambda: store.claim_of(job, runner.runner_id), 20, what="the job to start")
    child = int(wait_until(lambda: open(os.path.join(store.job_dir(job), "child")).read().strip()
                           if os.path.exists(os.path.join(store.job_dir(job), "child")) else "", 10))
    runner.kill()
    runner.wait()
    sched = connector("local", store)
    try:
        claimants = store.runners_with_claims()
        requeued = requeue_lost_claims(store, sched, sched.list_runners(),
                                       SimpleNamespace(heartbeat_timeout=300, max_attempts=3), claimants)
        assert [entry["outcome"] for entry in requeued] == ["requeued"]
        wait_until(lambda: not _alive(claim["pgid"]) and not _alive(child), 10, what="the orphaned run to be killed")
        assert [entry["attempt"] for entry in read_json(os.path.join(store.job_dir(job), "interruptions.json"))] == [1]
        assert not os.path.exists(store.claims_path(runner.runner_id))
    finally:
        for pid in (claim["pgid"], child):
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def _alive(pid):
    """Running (a zombie left for its dead parent's reaper counts as ended)."""
    try:
        with open("/proc/%d/stat" % pid) as handle:
            return handle.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False
