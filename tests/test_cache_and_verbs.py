"""Identical jobs from the cache, provenance in results, and the operator's verbs."""
import os
from pathlib import Path

import yaml
from dropbox_runner.on_hpc.jobstore import JobStore
from helpers import CountingTransport, drain, drop, run_cli, wait_until

from dropbox_runner.submitter import run_once
from dropbox_runner.transport.local import LocalTransport


def copy_job(config, text="same input", number=0, source_name="in.txt", **extra):
    source = Path(config.dropbox).parent / "inputs" / source_name
    if not source.exists() or source.read_text() != text:
        source.write_text(text)
    return {"script": "copy", "input_map": {"src": str(source)},
            "output_map": {"dst": str(Path(config.dropbox).parent / "outputs" / f"out{number}.txt")}, **extra}


def ledger_job(config, number, seconds=0, **extra):
    return {"script": "ledger", "args": {"seconds": seconds},
            "output_map": {"out": str(Path(config.dropbox).parent / "outputs" / "o.txt")}, **extra}


def ledger_lines(config):
    path = Path(config.dropbox).parent / "ledger"
    return path.read_text().split() if path.exists() else []


def test_an_identical_job_is_served_from_the_cache_without_cluster_work(config):
    drop(config, "first.job", copy_job(config, number=1))
    first = drain(config, ["first.job"])["first.job"]["job"]
    drain(config, [], timeout=5)   # one more cycle: the cluster forgets the collected job
    counting = CountingTransport()
    drop(config, "second.job", copy_job(config, number=2))
    second = drain(config, ["second.job"], cycle=lambda: run_once(config, counting))["second.job"]["job"]
    assert (counting.commands, counting.pushes) == (0, 0)
    assert second["cached"] is True and second["status"] == "ok"
    assert second["provenance"]["original_run"]["script_sha256"] == first["provenance"]["script_sha256"]
    assert second["id"] == first["id"]
    assert (Path(config.dropbox).parent / "outputs" / "out2.txt").read_text() == "same input"


def echo_job(config, first, number):
    return {"script": "echo_args", "args": {"first": first, "second": "x"},
            "output_map": {"out": str(Path(config.dropbox).parent / "outputs" / f"echo{number}.txt")}}


def test_a_changed_input_argument_or_template_misses_the_cache(config, tmp_path):
    drop(config, "a.job", copy_job(config, "abc", source_name="a.txt"))
    drop(config, "arg1.job", echo_job(config, "one", 1))
    drain(config, ["a.job", "arg1.job"])
    drop(config, "byte.job", copy_job(config, "abd", source_name="b.txt"))         # one byte differs
    drop(config, "same.job", copy_job(config, "abc", source_name="c.txt", number=3))  # same bytes, other names
    drop(config, "arg2.job", echo_job(config, "two", 2))                          # another argument
    drop(config, "arg3.job", echo_job(config, "one", 3))                          # the same argument
    results = drain(config, ["byte.job", "same.job", "arg2.job", "arg3.job"])
    assert "cached" not in results["byte.job"]["job"]
    assert "cached" not in results["arg2.job"]["job"]
    assert results["same.job"]["job"]["cached"] is True
    assert results["arg3.job"]["job"]["cached"] is True
    templates = tmp_path / "templates"
    templates.mkdir()
    for template in Path(config.templates).glob("*.template"):
        (templates / template.name).write_text(template.read_text() + "\n# changed\n")
    from helpers import make_config
    changed = make_config(tmp_path, templates=str(templates))
    drop(changed, "e.job", copy_job(changed, "abc", source_name="a.txt", number=5))
    assert "cached" not in drain(changed, ["e.job"])["e.job"]["job"]


def test_concurrent_identical_jobs_run_once(config):
    names = [f"twin{i}.job" for i in range(3)]
    for name in names:
        drop(config, name, ledger_job(config, 0, seconds=1))
    results = drain(config, names)
    assert all(results[name]["job"]["status"] == "ok" for name in names)
    assert sum(1 for name in names if results[name]["job"].get("cached")) == 2
    assert len(ledger_lines(config)) == 1


def test_cache_false_runs_every_time(config):
    for name in ("n1.job", "n2.job"):
        drop(config, name, ledger_job(config, 0, cache=False))
        drain(config, [name])
    assert len(ledger_lines(config)) == 2


def test_every_result_carries_its_provenance(config):
    drop(config, "p.job", copy_job(config, "provenance"))
    block = drain(config, ["p.job"])["p.job"]["job"]
    provenance = block["provenance"]
    import hashlib
    assert provenance["inputs"]["src"]["sha256"] == hashlib.sha256(b"provenance").hexdigest()
    assert provenance["template"]["name"] == "copy" and len(provenance["template"]["sha256"]) == 64
    assert len(provenance["script_sha256"]) == 64 and provenance["version"]
    assert provenance["runner"] == block["runner"] and provenance["host"]
    assert provenance["scheduler_job_id"] == block["scheduler_job_id"]
    assert block["queue_wait"] >= 0 and block["duration"] >= 0


def test_cancel_before_staging(config, tmp_path):
    drop(config, "early.job", ledger_job(config, 0, cache=False))
    done = run_cli("cancel", "--config", str(tmp_path / "config.yaml"), "early")
    assert "early.job: cancel requested" in done.stdout
    block = drain(config, ["early.job"])["early.job"]["job"]
    assert block["status"] == "error" and block["message"] == "cancelled"
    assert not list(config.dropbox.glob("*.cancel"))


def test_cancel_while_running_ends_the_process_group(config, tmp_path):
    drop(config, "long.job", ledger_job(config, 0, seconds=30, cache=False))
    workspace = Path(config.workspace)
    store = JobStore(str(workspace))
    wait_until(lambda: run_once(config, LocalTransport()) and any(store.claim_of(job.name)
                                                                  for job in (workspace / "claimed").glob("*/*")),
               20, 0.1, "the job to start")
    run_cli("cancel", "--config", str(tmp_path / "config.yaml"), "long.job")
    block = drain(config, ["long.job"], timeout=30)["long.job"]["job"]
    assert block["status"] == "error" and block["message"] == "cancelled"
    leftovers = [pid for pid in os.listdir("/proc") if pid.isdigit() and _has_env(pid, block["id"])]
    assert leftovers == [] and ledger_lines(config) == []


def test_resubmit_keeps_the_earlier_attempts(config, tmp_path):
    out = Path(config.dropbox).parent / "outputs" / "f.txt"
    drop(config, "flaky.job", {"script": "fail", "output_map": {"out": str(out)}})
    assert drain(config, ["flaky.job"])["flaky.job"]["job"]["status"] == "error"
    done = run_cli("resubmit", "--config", str(tmp_path / "config.yaml"), "flaky.job")
    assert "flaky.job: resubmitted" in done.stdout
    again = drain(config, ["flaky.job"])["flaky.job"]
    assert "job" not in again["job"]["earlier_runs"][0]
    assert again["job"]["earlier_runs"][0]["rc"] == 3 and len(again["job"]["earlier_runs"]) == 1


def test_list_shows_jobs_by_state_and_rebuilds_from_the_dropbox(config, tmp_path):
    drop(config, "ok.job", copy_job(config, "listed"))
    drain(config, ["ok.job"])
    drop(config, "later.job", copy_job(config, "waiting", source_name="w.txt"))
    rows = yaml.safe_load(run_cli("list", "--config", str(tmp_path / "config.yaml"), "--json").stdout)
    states = {row["name"]: row["state"] for row in rows}
    assert states == {"ok.job": "finished", "later.job": "waiting"}
    (config.state_dir / "history.sqlite").unlink()
    rows = yaml.safe_load(run_cli("list", "--config", str(tmp_path / "config.yaml"), "--json").stdout)
    assert {row["name"]: row["state"] for row in rows} == states
    text = run_cli("list", "--config", str(tmp_path / "config.yaml"), "--state", "finished").stdout
    assert "ok.job" in text and "later.job" not in text


def test_cache_stats_and_clear(config, tmp_path):
    drop(config, "s.job", copy_job(config, "stats"))
    drain(config, ["s.job"])
    stats = yaml.safe_load(run_cli("cache", "stats", "--config", str(tmp_path / "config.yaml")).stdout)
    assert stats["entries"] == 1 and stats["bytes"] == len("stats")
    assert "removed 1" in run_cli("cache", "clear", "--config", str(tmp_path / "config.yaml")).stdout


def test_the_cache_evicts_the_least_recently_used(config_factory):
    config = config_factory(cache_max_bytes=10)
    for number, text in enumerate(("aaaaaa", "bbbbbb")):
        drop(config, f"e{number}.job", copy_job(config, text, number=number, source_name=f"e{number}.txt"))
        drain(config, [f"e{number}.job"])
    from dropbox_runner.cache import ResultCache
    from dropbox_runner.history import History
    stats = ResultCache(Path(config.cache_dir), 10, History(config.state_dir / "history.sqlite")).stats()
    assert stats["entries"] == 1 and stats["bytes"] == 6


def _has_env(pid, job_id):
    try:
        return f"DBR_JOB_ID={job_id}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
