"""``on_hpc serve``: one head-node process answers a submitter's burst (``cluster.py``)."""
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from helpers import CountingTransport, drain, drop, stop_local_runners, wait_until, write_config

from dropbox_runner import intake, on_hpc
from dropbox_runner.cluster import STAMP_FILE, ClusterSide
from dropbox_runner.config import load_config
from dropbox_runner.slices import FIRST_SLICE, IntakeSlices
from dropbox_runner.submitter import Submitter, run_burst, run_once
from dropbox_runner.transport import RemoteCommandFailed
from dropbox_runner.transport.local import LocalTransport


def ledger_job(config, number):
    return {"script": "ledger", "args": {"seconds": 0}, "cache": False,
            "output_map": {"out": str(Path(config.dropbox).parent / "outputs" / f"o{number}.txt")}}


@pytest.fixture
def deployed(config):
    ClusterSide(config, LocalTransport()).deploy()
    yield config
    stop_local_runners(config)


def test_a_burst_of_several_cycles_is_answered_by_one_head_node_process(deployed):
    config = deployed
    names = [drop(config, f"j{n:03d}.job", ledger_job(config, n)).name for n in range(FIRST_SLICE * 3)]
    transport = CountingTransport()
    reports = run_burst(config, transport)
    assert sum(1 for report in reports if report.sent) >= 2       # the burst took several slices
    assert transport.runs == 0
    assert len(transport.sessions) == 1
    assert transport.sessions[0].process.returncode == 0           # ended with the burst, cleanly
    assert all(block["job"]["status"] == "ok" for block in drain(config, names).values())


def test_a_cycle_starts_the_process_as_it_takes_its_first_job_not_after_staging_them_all(deployed):
    """The process's Python start overlaps the cycle's staging instead of following it
    (``EarlyStart``, ``ClusterSide.start_ahead``): the first job on the cluster sooner."""
    config = deployed
    names = [drop(config, f"j{n:03d}.job", ledger_job(config, n)).name for n in range(5)]

    class CountingHeldJobs(CountingTransport):
        def __init__(self):
            super().__init__()
            self.held_at_start: list[int] = []

        def open_session(self, command):
            self.held_at_start.append(len(list(Path(config.dropbox).glob("*.job.submitted"))))
            return super().open_session(command)

    transport = CountingHeldJobs()
    assert run_once(config, transport).sent == len(names)
    assert transport.held_at_start == [0]
    assert all(block["job"]["status"] == "ok" for block in drain(config, names).values())


def test_a_process_that_cannot_be_started_ahead_costs_the_burst_nothing(deployed):
    """A failed start ahead (here: no process to be had, once) is one debug line; the
    cycle's own call starts the process, and every job, a bystander's too, is sent and ends ok."""
    config = deployed

    class FailsOnce(CountingTransport):
        failed = False

        def open_session(self, command):
            if not self.failed:
                self.failed = True
                raise OSError("Resource temporarily unavailable")
            return super().open_session(command)

    names = [drop(config, f"j{n:03d}.job", ledger_job(config, n)).name for n in range(3)]
    names.append(drop(config, "bystander.job", ledger_job(config, "bystander")).name)
    transport = FailsOnce()
    report = run_once(config, transport)
    assert transport.failed and report.sent == len(names) and not report.environment_errors
    assert all(block["job"]["status"] == "ok" for block in drain(config, names).values())


def test_a_cycle_whose_new_jobs_are_all_refused_starts_nothing_on_the_cluster(config):
    """Started at the first job taken, never on the sight of a new file: a job's fault
    costs the cluster nothing (a job served from the cache neither, ``test_cache_and_verbs``)."""
    (Path(config.dropbox) / "broken.job").write_text("output_map: [unclosed\n")
    drop(config, "unknown.job", {"script": "no_such_template", "output_map": {}})
    transport = CountingTransport()
    report = run_once(config, transport)
    assert report.rejected == 2 and transport.commands == 0


def test_a_settling_job_is_not_read_ahead_once_the_early_start_has_nothing_left_to_start(config_factory,
                                                                                         monkeypatch):
    """A job file still being written is read before it settles only to start something
    early; on a local scheduler the first job taken already started all there is."""
    config = config_factory(settle_seconds=30)
    taken = drop(config, "taken.job", ledger_job(config, 1))
    os.utime(taken, (time.time() - 60, time.time() - 60))         # settled: unchanged for a minute
    drop(config, "settling.job", ledger_job(config, 2))            # written in place just now
    reads = []
    read_job = intake.read_job
    monkeypatch.setattr(intake, "read_job", lambda path: reads.append(Path(path).name) or read_job(path))
    submitter = Submitter(config, CountingTransport())
    submitter.slices = IntakeSlices()
    try:
        report = submitter.cycle()
    finally:
        submitter.close()
    assert (report.taken, report.more_new) == (1, True)
    assert reads == ["taken.job"]


def test_a_process_killed_between_two_cycles_of_a_burst_costs_no_job_anything(deployed):
    """The fault of one process is the environment's: the burst's next cycle starts another,
    and every job of the burst, a bystander dropped beside them included, ends ok."""
    config = deployed

    class KilledAfterItsFirstAnswer(CountingTransport):
        def open_session(self, command):
            session = super().open_session(command)
            if len(self.sessions) == 1:
                ask = session.ask

                def answer_then_die(line):
                    answer = ask(line)
                    session.process.kill()
                    session.process.wait()
                    return answer
                session.ask = answer_then_die
            return session

    names = [drop(config, f"j{n:03d}.job", ledger_job(config, n)).name for n in range(FIRST_SLICE * 2)]
    names.append(drop(config, "bystander.job", ledger_job(config, "bystander")).name)
    transport = KilledAfterItsFirstAnswer()
    reports = run_burst(config, transport)
    assert len(transport.sessions) == 2
    assert sum(report.sent for report in reports) == len(names)
    assert not any(report.environment_errors for report in reports)
    assert all(block["job"]["status"] == "ok" for block in drain(config, names).values())


def test_a_kept_open_process_killed_while_idle_is_replaced(deployed):
    """A login node's reaper may end an idle process between two cycles: the next call
    starts another instead of failing."""
    transport = CountingTransport()
    cluster = ClusterSide(deployed, transport, keep_open=True)
    assert cluster.wait([], 0) == []
    transport.sessions[0].process.kill()
    transport.sessions[0].process.wait()
    assert cluster.wait([], 0) == []
    assert len(transport.sessions) == 2
    cluster.close()
    assert transport.sessions[1].process.returncode == 0


def test_a_failed_request_ends_the_process_says_why_and_the_next_call_starts_afresh(deployed):
    transport = CountingTransport()
    cluster = ClusterSide(deployed, transport, keep_open=True)
    with pytest.raises(RemoteCommandFailed, match=r"on_hpc no_such_verb failed on the cluster \(exit 1\):.*KeyError"):
        cluster.call("no_such_verb", {})
    assert transport.sessions[0].process.returncode == 1
    assert cluster.wait([], 0) == []
    assert len(transport.sessions) == 2
    cluster.close()


def test_a_process_whose_deploy_was_removed_meanwhile_exits_for_a_new_deploy(deployed):
    """Its runners would be started from a folder that is gone: it asks for the deploy, as
    a one-shot command's shell line does, instead of answering."""
    transport = CountingTransport()
    cluster = ClusterSide(deployed, transport, keep_open=True)
    assert cluster.wait([], 0) == []
    (Path(cluster.deploy_dir) / STAMP_FILE).unlink()
    assert cluster.wait([], 0) == []
    assert (Path(cluster.deploy_dir) / STAMP_FILE).exists()
    assert [session.process.returncode for session in transport.sessions] == [99, None]
    cluster.close()


def test_the_first_call_of_a_version_not_deployed_deploys_it_then_is_answered(config):
    transport = CountingTransport()
    cluster = ClusterSide(config, transport, keep_open=True)
    assert cluster.wait([], 0) == []
    assert (Path(cluster.deploy_dir) / "STAMP").exists()
    assert [session.process.returncode for session in transport.sessions] == [99, None]
    cluster.close()


SERVER = textwrap.dedent("""
    import os, sys
    sys.path.insert(0, sys.argv[1])
    from on_hpc.serve import serve

    def dispatch(verb, request):
        if verb == "start":         # a child that ends, left unreaped (no Popen object to reap it)
            pid = os.posix_spawnp("sh", ["sh", "-c", "echo child says hello"], os.environ)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
            print("a stray print")
            os.write(1, b"a stray write\\n")
            return {"pid": pid}
        return {"zombie": os.path.exists("/proc/%d" % request["pid"])}

    sys.exit(serve(dispatch))
""")


def test_only_answers_reach_stdout_and_ended_children_are_reaped_between_requests(tmp_path):
    """Whatever a verb or its children print goes to stderr: a line on stdout is an answer."""
    server = tmp_path / "server.py"
    server.write_text(SERVER)
    (tmp_path / STAMP_FILE).write_text("deployed\n")        # the folder it runs from is a complete deploy
    process = subprocess.Popen([sys.executable, str(server), str(Path(on_hpc.__file__).parent.parent)],
                               cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdin.write(json.dumps({"verb": "start", "request": {}}).encode() + b"\n")
    process.stdin.flush()
    started = json.loads(process.stdout.readline())
    process.stdin.write(json.dumps({"verb": "look", "request": started}).encode() + b"\n")
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0
    assert json.loads(out) == {"zombie": False}
    assert b"child says hello" in err and b"a stray print" in err and b"a stray write" in err


def test_the_watch_daemon_ends_its_head_node_process_when_its_burst_is_collected(tmp_path):
    config_path = write_config(tmp_path, tick="1h")
    config = load_config(config_path)
    with open(tmp_path / "watch.log", "w") as log:
        daemon = subprocess.Popen([sys.executable, "-m", "dropbox_runner.cli", "watch", "--config", str(config_path)],
                                  stdout=log, stderr=log)
    try:
        wait_until(lambda: "watching" in (tmp_path / "watch.log").read_text(), 15, what="the daemon")
        paths = [drop(config, f"w{n}.job", ledger_job(config, n)) for n in range(3)]
        wait_until(lambda: all(Path(f"{path}.finished").exists() for path in paths), 30, what="every result")
        wait_until(lambda: not _serving_children(daemon.pid), 10, what="the serve process to end")
        assert daemon.poll() is None
    finally:
        daemon.terminate()
        daemon.wait(timeout=30)
        stop_local_runners(config)


def _serving_children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as stat:
                parent = int(stat.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as cmdline:
                serving = b"on_hpc serve" in cmdline.read().replace(b"\0", b" ")
        except (OSError, ValueError, IndexError):
            continue
        if parent == pid and serving:
            found.append(int(entry))
    return found
