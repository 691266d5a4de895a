"""Collected jobs' folders leave the cycle in one rename each and are removed by a
detached sweep (``on_hpc/sweep.py``), so the submitter never waits for the removal."""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from dropbox_runner.on_hpc import sweep
from dropbox_runner.on_hpc.protocol import FinishedRecord
from helpers import wait_until
from test_on_hpc import FakeConnector, run_cycle, staged_store


def collected(tmp_path, job_ids):
    """Jobs of submitter ``s`` that are done and no longer held: the next cycle removes them."""
    store = staged_store(tmp_path, job_ids)
    for job_id in job_ids:
        store.claim("default", job_id, "r")
        Path(store.job_dir(job_id), "output").mkdir()
        Path(store.job_dir(job_id), "output", "o").write_text("x")
        store.finish("r", job_id, FinishedRecord(rc=0))
    return store


def test_a_collected_jobs_folder_leaves_at_once_and_the_sweep_removes_it(tmp_path, monkeypatch):
    store = collected(tmp_path, ["s.a", "s.b"])
    answer = run_cycle(tmp_path, FakeConnector(), {}, monkeypatch)
    assert answer["removed"] == ["s.a", "s.b"]
    assert not os.path.exists(store.job_dir("s.a")) and not os.path.exists(store.job_dir("s.b"))
    wait_until(lambda: sweep.trash_entries(store) == [], 30, what="the sweep to empty the trash")


def test_one_sweep_at_a_time_and_a_later_cycle_finishes_what_one_left(tmp_path, monkeypatch):
    """While a sweep holds the lock no second one starts; the trash it left (killed, say)
    is emptied by the sweep a later cycle starts."""
    store = collected(tmp_path, ["s.a"])
    os.makedirs(store.trash_dir())
    held = sweep._lock(store)          # a sweep at work
    try:
        run_cycle(tmp_path, FakeConnector(), {}, monkeypatch)
        assert not sweep.start(store)
        time.sleep(1)
        assert len(sweep.trash_entries(store)) == 1
    finally:
        os.close(held)
    run_cycle(tmp_path, FakeConnector(), {}, monkeypatch)
    wait_until(lambda: sweep.trash_entries(store) == [], 30, what="the next sweep to empty the trash")


def test_the_sweep_removes_a_jobs_links_never_what_they_point_to(tmp_path, monkeypatch):
    """A job may leave symbolic links in its folder, to a folder or a file outside it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    store = collected(tmp_path / "ws", ["s.a"])
    os.symlink(outside, Path(store.job_dir("s.a"), "output", "to-folder"))
    os.symlink(outside / "keep.txt", Path(store.job_dir("s.a"), "to-file"))
    run_cycle(tmp_path / "ws", FakeConnector(), {}, monkeypatch)
    wait_until(lambda: sweep.trash_entries(store) == [], 30, what="the sweep")
    assert (outside / "keep.txt").read_text() == "mine"


def test_a_sweep_run_by_hand_empties_the_trash_and_a_second_finds_nothing(tmp_path, monkeypatch):
    store = collected(tmp_path, ["s.a", "s.b", "s.c"])
    monkeypatch.setattr(sweep, "start", lambda store: False)       # no detached sweep: this test runs it
    run_cycle(tmp_path, FakeConnector(), {}, monkeypatch)
    assert len(sweep.trash_entries(store)) == 3
    package = sweep.__name__.rpartition(".")[0]
    argv = [sys.executable, "-m", package, "sweep"]
    first = subprocess.run(argv, input=('{"root": "%s"}' % tmp_path).encode(), capture_output=True, timeout=60)
    assert first.returncode == 0 and b'"swept": 3' in first.stdout
    again = subprocess.run(argv, input=('{"root": "%s"}' % tmp_path).encode(), capture_output=True, timeout=60)
    assert again.returncode == 0 and b'"swept": 0' in again.stdout
    assert sweep.trash_entries(store) == []


def test_a_sweep_killed_half_way_leaves_nothing_a_job_could_trip_on(tmp_path, monkeypatch):
    """The trash is apart from jobs/, ready/, claimed/ and done/: a job id that comes
    again while its old folder is still in the trash is staged and run afresh."""
    store = collected(tmp_path, ["s.a"])
    monkeypatch.setattr(sweep, "start", lambda store: False)
    run_cycle(tmp_path, FakeConnector(), {}, monkeypatch)
    staged_store(tmp_path, ["s.a"])         # the same id staged again
    assert store.states() == {"s.a": "queued"}
    assert len(sweep.trash_entries(store)) == 1


def test_the_room_a_sweep_is_freeing_counts_as_free_in_the_answer(tmp_path, monkeypatch):
    """The submitter fails a job whose inputs exceed the free space the last cycle
    reported: room still held by the trash must not make a job that fits look too big."""
    from dropbox_runner.on_hpc.files import free_bytes

    store = collected(tmp_path, ["s.a"])
    with open(Path(store.job_dir("s.a"), "output", "big"), "wb") as handle:
        handle.write(b"x" * (4 << 20))
    monkeypatch.setattr(sweep, "start", lambda store: False)        # the sweep has not run yet
    answer = run_cycle(tmp_path, FakeConnector(), {}, monkeypatch)
    assert sweep.trash_bytes(store) >= 4 << 20
    assert answer["workspace_free_bytes"] >= free_bytes(str(tmp_path)) + (4 << 20) - (1 << 20)


def test_a_sweep_a_cycle_starts_yields_the_cpu_and_one_run_by_hand_does_not(tmp_path, monkeypatch):
    """Removing collected folders is the least urgent work on the machine: the jobs and
    the cycles beside it go first."""
    store = staged_store(tmp_path, [])
    os.makedirs(os.path.join(store.trash_dir(), "s.gone"))
    requests, niced = [], []

    class FakePopen:
        def __init__(self, argv, stdin, **kwargs):
            self.argv = argv
            self.stdin = self

        def write(self, data):
            requests.append(json.loads(data))

        def close(self):
            pass

    monkeypatch.setattr(subprocess, "Popen", FakePopen)
    assert sweep.start(store)
    assert requests == [{"root": store.root, "niceness": sweep.SWEEP_NICENESS}]
    monkeypatch.setattr(os, "nice", niced.append)
    assert sweep.sweep(requests[0]) == {"swept": 1}
    assert niced == [sweep.SWEEP_NICENESS]
    os.makedirs(os.path.join(store.trash_dir(), "s.gone"))
    assert sweep.sweep({"root": store.root}) == {"swept": 1}
    assert niced == [sweep.SWEEP_NICENESS]


def test_the_trash_is_measured_once_an_entry_by_a_process_and_what_is_gone_is_forgotten(tmp_path, monkeypatch):
    """The serve process answers every cycle of a burst: it walked the whole trash in each
    (a third of its CPU), where a collected folder never changes once moved there."""
    from dropbox_runner.on_hpc.files import tree_bytes

    store = staged_store(tmp_path, [])
    trash = store.trash_dir()
    for name, size in (("s.a", 1000), ("s.b", 3000)):
        os.makedirs(os.path.join(trash, name, "output"))
        with open(os.path.join(trash, name, "output", "out"), "wb") as handle:
            handle.write(b"x" * size)
    with open(os.path.join(trash, "loose"), "wb") as handle:
        handle.write(b"y" * 500)
    walked = []
    monkeypatch.setattr(sweep, "tree_bytes", lambda path, **options: walked.append(os.path.basename(path))
                        or tree_bytes(path, **options))
    assert sweep.trash_bytes(store) == tree_bytes(trash, shared=True) == 4500
    assert sorted(walked) == ["s.a", "s.b"]
    os.makedirs(os.path.join(trash, "s.c"))
    with open(os.path.join(trash, "s.c", "stdout"), "wb") as handle:
        handle.write(b"z" * 200)
    subprocess.run(["rm", "-rf", os.path.join(trash, "s.a")], check=True)
    assert sweep.trash_bytes(store) == tree_bytes(trash, shared=True) == 3700
    assert sorted(walked) == ["s.a", "s.b", "s.c"]          # only the new entry was walked
    assert sorted(os.path.basename(path) for path, _ in sweep._measured) == ["loose", "s.b", "s.c"]


def test_a_tree_is_measured_from_its_listing_links_to_folders_neither_counted_nor_entered(tmp_path, monkeypatch):
    """``tree_bytes`` measures the trash and every outbox entry sent: it went through
    os.walk, which looked at each folder again (``islink``) and joined each name."""
    from dropbox_runner.on_hpc.files import tree_bytes

    tree = tmp_path / "tree"
    (tree / "output" / "deeper").mkdir(parents=True)
    (tree / "job.sh").write_bytes(b"s" * 100)
    (tree / "output" / "deeper" / "out").write_bytes(b"o" * 1000)
    (tree / "batch").write_bytes(b"b" * 300)
    os.link(tree / "batch", tree / "output" / "batch-again")     # two names: a share each when shared
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "big").write_bytes(b"x" * 50000)
    (tree / "to-a-folder").symlink_to(outside)
    (tree / "to-a-file").symlink_to(outside / "big")
    (tree / "dangling").symlink_to(tmp_path / "nowhere")
    looked = []
    for name in ("lstat", "stat"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda *args, real=real, name=name, **kwargs: looked.append(name)
                            or real(*args, **kwargs))
    link_size = len(str(outside / "big"))
    dangling_size = len(str(tmp_path / "nowhere"))
    assert tree_bytes(str(tree)) == 100 + 1000 + 300 + 300 + link_size + dangling_size
    assert tree_bytes(str(tree), shared=True) == 100 + 1000 + 150 + 150 + link_size + dangling_size
    assert tree_bytes(str(tree), follow_links=True) == 100 + 1000 + 300 + 300 + 50000    # a dangling link: 0
    assert tree_bytes(str(tmp_path / "absent")) == 0
    assert looked == []          # every entry known from its listing: no second look at a path


def serve_cycles(store, count, monkeypatch, tmp_path, seen=None):
    """``count`` cycle requests answered by a serve loop; each answer as read, with whether
    the collected job ``s.a``'s folder was still in place when it was written (into
    ``seen`` as they come, when given)."""
    from dropbox_runner.on_hpc import headnode
    from dropbox_runner.on_hpc.__main__ import dispatch
    from dropbox_runner.on_hpc.protocol import STAMP_FILE
    from dropbox_runner.on_hpc.serve import serve

    monkeypatch.setattr(headnode, "connector", lambda name, store: FakeConnector())
    deploy = tmp_path / "deploy"
    deploy.mkdir()
    (deploy / STAMP_FILE).write_text("stamp\n")
    monkeypatch.chdir(deploy)
    line = json.dumps({"verb": "cycle", "request": {"root": store.root, "scheduler": "fake", "submitter": "s",
                                                    "in_flight": [], "classes": {}, "pythonpath": "/x"}}) + "\n"
    seen = [] if seen is None else seen

    class Answers:
        def write(self, text):
            if text.strip():
                seen.append((json.loads(text), os.path.lexists(store.job_dir("s.a"))))

        def flush(self):
            pass

    assert serve(dispatch, requests=[line] * count, answers=Answers()) == 0
    return seen


def test_a_serve_loop_answers_before_it_moves_the_collected_folders_and_counts_their_room(tmp_path, monkeypatch):
    """The submitter waits for a cycle's answer, not for the folders it collected to move
    to the trash (up to 15 ms a cycle here): the serve process moves them once the answer
    is written, before it reads the next request.  The answer already counts their room as
    free, and the trash does not walk them again."""
    from dropbox_runner.on_hpc.files import free_bytes, tree_bytes

    store = collected(tmp_path / "ws", ["s.a"])
    with open(Path(store.job_dir("s.a"), "output", "big"), "wb") as handle:
        handle.write(b"x" * (4 << 20))
    monkeypatch.setattr(sweep, "start", lambda store: False)        # the trash stays to be counted
    walked = []
    monkeypatch.setattr(sweep, "tree_bytes", lambda path, **options: walked.append(path)
                        or tree_bytes(path, **options))
    (first, in_place), (second, still) = serve_cycles(store, 2, monkeypatch, tmp_path)
    assert first["removed"] == ["s.a"] and in_place          # answered before the move
    assert not still and second["removed"] == []              # moved before the next request
    assert len(sweep.trash_entries(store)) == 1
    for answer in (first, second):
        assert answer["workspace_free_bytes"] >= free_bytes(store.root) + (4 << 20) - (1 << 20)
    assert walked == [store.job_dir("s.a")]                     # measured once, as it left


def test_a_move_that_fails_after_the_answer_is_told_in_the_next_and_done_again(tmp_path, monkeypatch):
    from dropbox_runner.on_hpc.jobstore import JobStore

    store = collected(tmp_path / "ws", ["s.a"])
    real_remove, failures = JobStore.remove, ["Input/output error"]

    def remove(self, job_id):
        if failures:
            raise OSError(5, failures.pop())
        return real_remove(self, job_id)

    monkeypatch.setattr(JobStore, "remove", remove)
    monkeypatch.setattr(sweep, "start", lambda store: False)
    (first, _), (second, in_place), (third, still) = serve_cycles(store, 3, monkeypatch, tmp_path)
    assert first["removed"] == ["s.a"] and not first["errors"]
    assert in_place and second["removed"] == ["s.a"]          # still done: removed again
    assert any("after the last answer" in error and "Input/output error" in error for error in second["errors"])
    assert not still and third["removed"] == [] and not third["errors"]


def test_a_serve_loop_puts_the_sweep_off_while_jobs_run_and_starts_it_when_its_input_ends(tmp_path, monkeypatch):
    """A sweep during a burst (a Python start, and unlinks that every ``syncfs`` of the
    submitter and the runner then waits for) cost a 1000-job burst on the local scheduler
    0.1 s of its 2.4 s on ext4: while a job of the workspace is queued or running, the
    serve process starts none, and it starts one when its input ends."""
    store = collected(tmp_path / "ws", ["s.a"])
    staged_store(tmp_path / "ws", ["s.b"])          # queued: the workspace is busy
    seen, started = [], []
    monkeypatch.setattr(sweep, "start", lambda store: started.append((len(seen), len(sweep.trash_entries(store)))))
    serve_cycles(store, 3, monkeypatch, tmp_path, seen)
    assert [answer["removed"] for answer, _ in seen] == [["s.a"], [], []]
    assert started == [(3, 1)]                        # once, after the last answer: at the end


def test_a_serve_loop_starts_the_sweep_once_no_job_is_queued_or_running(tmp_path, monkeypatch):
    store = collected(tmp_path / "ws", ["s.a"])
    seen, started = [], []
    monkeypatch.setattr(sweep, "start", lambda store: started.append(len(seen)))
    serve_cycles(store, 2, monkeypatch, tmp_path, seen)
    assert started[0] == 1                            # after the first answer


def test_a_serve_loop_sweeps_at_once_when_the_trash_holds_more_than_is_free(tmp_path, monkeypatch):
    """The answer counts the trash as free: where it holds more than the disk has left
    beside it, a push counting on that room must not wait for the burst's end."""
    from dropbox_runner.on_hpc import headnode

    store = collected(tmp_path / "ws", ["s.a"])
    staged_store(tmp_path / "ws", ["s.b"])
    seen, started = [], []
    monkeypatch.setattr(sweep, "start", lambda store: started.append(len(seen)))
    monkeypatch.setattr(headnode, "free_bytes", lambda path: 0)
    serve_cycles(store, 2, monkeypatch, tmp_path, seen)
    assert started[0] == 1


def test_a_sweep_put_off_starts_at_the_latest_after_a_while_though_jobs_still_run(tmp_path, monkeypatch):
    """A watch daemon's serve process may answer for days with jobs always running."""
    from dropbox_runner.on_hpc import afterwards
    from dropbox_runner.on_hpc.jobstore import JobStore

    early, late = JobStore(str(tmp_path / "early")), JobStore(str(tmp_path / "late"))
    started = []
    monkeypatch.setattr(sweep, "start", lambda store: started.append(store.root))
    monkeypatch.setitem(sweep._put_off_since, late.root, time.monotonic() - sweep.SWEEP_AT_LATEST_SECONDS)
    with afterwards.until_answered():
        sweep.start_when_quiet(early, jobs_active=True, room_short=False)
        sweep.start_when_quiet(late, jobs_active=True, room_short=False)
        assert started == [late.root]
        sweep.start_when_quiet(late, jobs_active=True, room_short=False)
        assert started == [late.root]                 # put off anew
    assert started == [late.root, early.root, late.root]
    sweep.start_when_quiet(early, jobs_active=True, room_short=False)      # no serve loop: at once
    assert started[-1] == early.root
