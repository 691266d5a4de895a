"""Trust boundaries, tried as a job author who can write the dropbox would try them.

Each test plays the attacker: plants links at temporary names, swaps inputs between
cycles, edits held files, points outputs at devices and at the submitter's own files.
The victim files live outside the allowed roots; every test checks they are untouched
and that nothing they hold reaches a result.
"""
import os
import signal
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import yaml
from helpers import drain, drop, result, run_cli, wait_until

import dropbox_runner
from dropbox_runner.config import ConfigError
from dropbox_runner.dropbox import Dropbox
from dropbox_runner.jobs import JobInvalid, parse_job
from dropbox_runner.submitter import Submitter, run_once
from dropbox_runner.transport.local import LocalTransport

SECRET = "s3cret-do-not-leak"


class NoSend(LocalTransport):
    """A cycle that takes jobs but never reaches the cluster: the attacker acts in between."""

    def run(self, command, stdin=b""):
        raise AssertionError("not reached in this cycle")


def take_only(config):
    """Intake alone, as the first half of a cycle: the jobs are held, nothing is sent."""
    submitter = Submitter(config, NoSend())
    try:
        submitter.intake.take_new_jobs(Dropbox(config.dropbox).scan(), set())
    finally:
        submitter.close()


@pytest.fixture
def roots(config_factory, tmp_path):
    """A config whose roots are set, and a victim file outside them."""
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "secret.txt").write_text(SECRET + "\n")
    config = config_factory(allowed_input_roots=[str(tmp_path / "inputs")],
                            allowed_output_roots=[str(tmp_path / "outputs")])
    return config, victim / "secret.txt"


def copy_job(root: Path, source: Path, name: str = "out.txt") -> dict:
    return {"script": "copy", "cache": False, "input_map": {"src": str(source)},
            "output_map": {"dst": str(root / "outputs" / name)}}


def all_results_text(config) -> str:
    return "".join(path.read_text(errors="replace") for path in Path(config.dropbox).glob("*.finished"))


# -- 1. safe writes of outputs and results ------------------------------------------------------
def test_a_link_planted_at_the_old_predictable_temporary_name_is_never_followed(roots, tmp_path):
    config, secret = roots
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("mine\n")
    drop(config, "planted.job", copy_job(tmp_path, source))
    take_only(config)
    job_id = Dropbox(config.dropbox).read_held("planted.job")["id"]     # readable by any tool
    for tag in (job_id[-12:], job_id, "partial"):
        link = tmp_path / "outputs" / f".out.txt.{tag}.partial"
        link.symlink_to(secret)
    block = drain(config, ["planted.job"])["planted.job"]["job"]
    assert block["status"] == "ok", block
    assert secret.read_text() == SECRET + "\n"
    assert (tmp_path / "outputs" / "out.txt").read_text() == "mine\n"
    assert not (tmp_path / "outputs" / "out.txt").is_symlink()


def test_racing_the_temporary_names_never_writes_through_a_link(roots, tmp_path):
    """A thread replaces every hidden file that appears in the output folder with a link to
    the victim, as fast as it can, while a burst of jobs places its outputs there."""
    config, secret = roots
    outputs = tmp_path / "outputs"
    stop = threading.Event()
    swaps = []

    def attacker():
        while not stop.is_set():
            for entry in os.scandir(outputs):
                if entry.name.startswith(".") and not entry.is_symlink():
                    try:
                        os.unlink(entry.path)
                        os.symlink(secret, entry.path)
                        swaps.append(entry.name)
                    except OSError:
                        pass

    names = []
    for number in range(12):
        source = tmp_path / "inputs" / f"in{number}.txt"
        source.write_text(f"job {number}\n" * 2000)
        names.append(f"race{number}.job")
        drop(config, names[-1], copy_job(tmp_path, source, f"out{number}.txt"))
    thread = threading.Thread(target=attacker, daemon=True)
    thread.start()
    try:
        results = drain(config, names, timeout=120)
    finally:
        stop.set()
        thread.join()
    assert secret.read_text() == SECRET + "\n"
    for number, name in enumerate(names):
        block = results[name]["job"]
        destination = outputs / f"out{number}.txt"
        if block["status"] == "ok":      # an ok result always means the right, regular file
            assert not destination.is_symlink() and destination.read_text() == f"job {number}\n" * 2000
        else:
            assert "by someone else" in block["message"] or "not a regular file" in block["message"], block


def test_an_output_that_is_a_device_node_is_refused_and_left_alone(config, tmp_path):
    """As root (the suite runs as root), as a daemon run as root would meet it."""
    device = tmp_path / "outputs" / "null"
    os.mknod(device, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    fifo = tmp_path / "outputs" / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "outputs" / "link.txt"
    link.symlink_to(tmp_path / "elsewhere.txt")
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("x\n")
    for name, target in (("dev", device), ("fifo", fifo), ("link", link), ("devnull", Path("/dev/null"))):
        drop(config, f"{name}.job", {"script": "copy", "cache": False, "input_map": {"src": str(source)},
                                     "output_map": {"dst": str(target)}})
    results = drain(config, ["dev.job", "fifo.job", "link.job", "devnull.job"])
    for name, block in ((name, r["job"]) for name, r in results.items()):
        assert block["status"] == "error", (name, block)
    assert "only a regular file may be replaced" in results["dev.job"]["job"]["message"]
    assert "inside /dev" in results["devnull.job"]["job"]["message"]
    assert stat.S_ISCHR(os.lstat(device).st_mode) and stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert link.is_symlink() and not (tmp_path / "elsewhere.txt").exists()
    assert stat.S_ISCHR(os.lstat("/dev/null").st_mode)


def test_a_destination_swapped_for_a_device_after_intake_is_refused_at_placing(config, tmp_path):
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("x\n")
    destination = tmp_path / "outputs" / "late.txt"
    drop(config, "late.job", copy_job(tmp_path, source, "late.txt"))
    take_only(config)                        # checked while nothing was there
    os.mkfifo(destination)                   # then a FIFO appears at the destination
    block = drain(config, ["late.job"])["late.job"]["job"]
    assert block["status"] == "error" and "a FIFO" in block["message"], block
    assert stat.S_ISFIFO(os.lstat(destination).st_mode)


def test_an_output_folder_swapped_for_a_link_out_of_the_roots_is_refused_at_placing(roots, tmp_path):
    config, secret = roots
    folder = tmp_path / "outputs" / "sub"
    folder.mkdir()
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("x\n")
    drop(config, "moved.job", {"script": "copy", "cache": False, "input_map": {"src": str(source)},
                               "output_map": {"dst": str(folder / "secret.txt")}})
    take_only(config)
    folder.rmdir()
    folder.symlink_to(secret.parent)         # sub/secret.txt is now the victim
    block = drain(config, ["moved.job"])["moved.job"]["job"]
    assert block["status"] == "error" and "outside the allowed output folders" in block["message"], block
    assert secret.read_text() == SECRET + "\n"


def test_a_link_left_in_the_job_output_is_never_followed_back(roots, tmp_path):
    config, secret = roots
    drop(config, "unpack.job", {"script": "link_output", "cache": False, "args": {"target": str(secret)},
                                "output_map": {"out": str(tmp_path / "outputs" / "out.txt")}})
    block = drain(config, ["unpack.job"])["unpack.job"]["job"]
    assert block["status"] == "error" and "did not write out" in block["message"], block
    assert not (tmp_path / "outputs" / "out.txt").exists()
    assert SECRET not in all_results_text(config)


def test_results_follow_the_umask_so_the_dropbox_group_can_read_them(config, tmp_path):
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("x\n")
    drop(config, "mode.job", copy_job(tmp_path, source))
    drop(config, "bad.job", {"script": "no_such_tool"})
    old = os.umask(0o027)
    try:
        drain(config, ["mode.job", "bad.job"])
    finally:
        os.umask(old)
    for path in (config.dropbox / "mode.job.finished", config.dropbox / "bad.job.finished",
                 tmp_path / "outputs" / "out.txt"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path


def test_a_link_at_the_result_name_is_replaced_not_followed(config, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text(SECRET)
    (config.dropbox / "bad.job.finished").symlink_to(victim)
    drop(config, "bad.job", {"script": "no_such_tool"})
    block = drain(config, ["bad.job"])["bad.job"]["job"]
    assert block["status"] == "error"
    assert victim.read_text() == SECRET and not (config.dropbox / "bad.job.finished").is_symlink()


# -- 2. inputs are taken once ------------------------------------------------------------------
def test_an_input_swapped_for_a_link_after_intake_sends_what_was_checked(roots, tmp_path):
    config, secret = roots
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("checked\n")
    drop(config, "swap.job", copy_job(tmp_path, source))
    take_only(config)
    source.unlink()
    source.symlink_to(secret)                # between intake and sending
    block = drain(config, ["swap.job"])["swap.job"]["job"]
    assert block["status"] == "ok"
    assert (tmp_path / "outputs" / "out.txt").read_text() == "checked\n"
    assert SECRET not in all_results_text(config)


def test_an_input_edited_after_intake_does_not_poison_the_cache(config, tmp_path):
    """The cache key names the bytes that ran: a tool that rewrites its input in place after
    intake (keeping size and time) cannot file other content under the checked key."""
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("good\n")
    drop(config, "first.job", {"script": "copy", "input_map": {"src": str(source)},
                               "output_map": {"dst": str(tmp_path / "outputs" / "first.txt")}})
    take_only(config)
    before = os.stat(source)
    source.write_text("evil\n")
    os.utime(source, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert drain(config, ["first.job"])["first.job"]["job"]["status"] == "ok"
    assert (tmp_path / "outputs" / "first.txt").read_text() == "good\n"
    source.write_text("good\n")
    drop(config, "second.job", {"script": "copy", "input_map": {"src": str(source)},
                                "output_map": {"dst": str(tmp_path / "outputs" / "second.txt")}})
    drain(config, ["second.job"])
    assert (tmp_path / "outputs" / "second.txt").read_text() == "good\n"


def test_a_full_state_folder_makes_a_job_wait_not_fail(config_factory, tmp_path):
    """Copying inputs needs room in the outbox: when there is none, that is the disk's
    fault, not the job's: the job waits (no result), the others go on."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(state)], check=True)
    try:
        config = config_factory(state_dir=str(state), cache_max_bytes=0)
        big = tmp_path / "inputs" / "big.bin"
        big.write_bytes(os.urandom(512 << 10))
        small = tmp_path / "inputs" / "small.txt"
        small.write_text("small\n")
        drop(config, "big.job", copy_job(tmp_path, big, "big.bin"))
        drop(config, "small.job", copy_job(tmp_path, small, "small.txt"))
        assert drain(config, ["small.job"])["small.job"]["job"]["status"] == "ok"
        assert (config.dropbox / "big.job").exists() and result(config, "big.job") is None
        assert os.listdir(state / "outbox") == []
    finally:
        subprocess.run(["umount", "-l", str(state)], check=False)


@pytest.mark.parametrize("zone", ["proc", "config", "ssh_key", "state", "dev"])
def test_the_submitters_own_files_and_kernel_files_are_never_inputs(config, tmp_path, monkeypatch, zone):
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True)
    (home / ".ssh" / "id_ed25519").write_text("PRIVATE KEY " + SECRET)
    monkeypatch.setenv("HOME", str(home))
    run_once(config, LocalTransport())       # makes the state folder
    path = {"proc": "/proc/self/environ", "config": str(config.source), "dev": "/dev/zero",
            "ssh_key": str(home / ".ssh" / "id_ed25519"), "state": str(config.state_dir / "hold.key")}[zone]
    drop(config, "leak.job", {"script": "copy", "cache": False, "input_map": {"src": path},
                              "output_map": {"dst": str(tmp_path / "outputs" / "leak.txt")}})
    block = drain(config, ["leak.job"])["leak.job"]["job"]
    assert block["status"] == "error" and "which jobs may never use" in block["message"], block
    assert not (tmp_path / "outputs" / "leak.txt").exists()


def test_a_hard_link_to_the_config_inside_the_roots_is_refused(roots, tmp_path):
    config, _ = roots
    link = tmp_path / "inputs" / "innocent.txt"
    os.link(config.source, link)                 # the same file, under a path inside the roots
    drop(config, "hardlink.job", copy_job(tmp_path, link))
    block = drain(config, ["hardlink.job"])["hardlink.job"]["job"]
    assert block["status"] == "error" and "hard link" in block["message"], block
    assert not (tmp_path / "outputs" / "out.txt").exists()


# -- 3. fixed no-go zones for outputs ----------------------------------------------------------
def test_outputs_into_the_dropbox_state_or_cache_are_refused_whatever_the_roots(config_factory, tmp_path):
    config = config_factory(allowed_output_roots=[str(tmp_path)])      # the roots would allow it all
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("script: copy\n")
    run_once(config, LocalTransport())
    targets = {"forge": config.dropbox / "victim.job.finished", "inject": config.dropbox / "injected.job",
               "state": config.state_dir / "history.sqlite", "cache": Path(config.cache_dir) / "x",
               "config": config.source, "code": Path(dropbox_runner.__file__).parent / "evil.py"}
    (config.dropbox / "victim.job.finished").write_text("job: {status: error}\n")
    for name, target in targets.items():
        drop(config, f"{name}.job", {"script": "copy", "cache": False, "input_map": {"src": str(source)},
                                     "output_map": {"dst": str(target)}})
    results = drain(config, [f"{name}.job" for name in targets])
    for name, item in results.items():
        assert item["job"]["status"] == "error" and "which jobs may never use" in item["job"]["message"], name
    assert result(config, "victim.job")["job"]["status"] == "error"
    assert not (config.dropbox / "injected.job").exists() and not (config.dropbox / "injected.job.finished").exists()
    assert not targets["code"].exists()


# -- 4. what the tool can edit is not trusted --------------------------------------------------
@pytest.mark.parametrize("edit", ["cache_key", "class", "input_digest", "job_digest", "no_seal"])
def test_an_edited_hold_is_a_clear_error(config, tmp_path, edit):
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("x\n")
    drop(config, "held.job", {"script": "copy", "input_map": {"src": str(source)},
                              "output_map": {"dst": str(tmp_path / "outputs" / "o.txt")}})
    take_only(config)
    path = config.dropbox / "held.job.submitted"
    document = yaml.safe_load(path.read_text())
    forged = "f" * 64
    if edit == "cache_key":
        document["provenance"]["cache_key"] = forged
    elif edit == "class":
        document["class"] = "gpu"
    elif edit == "input_digest":
        document["provenance"]["inputs"]["src"]["sha256"] = forged
    elif edit == "job_digest":
        document["job_digest"] = forged
    else:
        document.pop("seal", None)
        document["provenance"]["cache_key"] = forged
    path.write_text(yaml.safe_dump(document))
    block = drain(config, ["held.job"])["held.job"]["job"]
    assert block["status"] == "error" and "edited" in block["message"], block
    assert not (Path(config.cache_dir) / forged[:2] / forged).exists()
    assert not (tmp_path / "outputs" / "o.txt").exists()


def test_a_hold_replaced_by_a_link_is_refused_unread(config, tmp_path):
    secret = tmp_path / "private.yaml"
    secret.write_text(yaml.safe_dump({"description": {"script": SECRET, "args": {"token": SECRET}}}))
    source = tmp_path / "inputs" / "in.txt"
    source.write_text("x\n")
    drop(config, "held.job", copy_job(tmp_path, source))
    take_only(config)
    held = config.dropbox / "held.job.submitted"
    held.unlink()
    held.symlink_to(secret)
    block = drain(config, ["held.job"])["held.job"]["job"]
    assert block["status"] == "error"
    assert SECRET not in all_results_text(config)


def test_the_seal_key_must_be_private(config):
    run_once(config, LocalTransport())
    key = config.state_dir / "hold.key"
    key.chmod(0o644)
    with pytest.raises(ConfigError, match="hold.key"):
        Submitter(config, LocalTransport())
    key.chmod(0o600)
    config.state_dir.chmod(0o777)
    with pytest.raises(ConfigError, match="writable by others"):
        Submitter(config, LocalTransport())


def test_once_refuses_to_run_on_a_state_folder_others_can_write(config):
    run_once(config, LocalTransport())
    config.state_dir.chmod(0o777)
    done = run_cli("once", "--config", str(config.source))
    assert done.returncode == 2 and "writable by others" in done.stderr, done.stderr


# -- 5. results never echo what was not a valid job --------------------------------------------
def test_a_job_file_that_is_a_link_is_refused_without_being_read(config, tmp_path):
    secret = tmp_path / "service.yaml"        # parses as a mapping, as /etc/shadow does
    secret.write_text(f"db_password: {SECRET}\nscript: {SECRET}\nargs: {{token: {SECRET}}}\n")
    (config.dropbox / "evil.job").symlink_to(secret)
    block = drain(config, ["evil.job"])["evil.job"]["job"]
    assert block["status"] == "error" and "symbolic link" in block["message"], block
    assert SECRET not in all_results_text(config)
    assert block.get("job_digest") is None       # not even a hash of the file


def test_a_job_file_that_is_a_fifo_is_refused_without_waiting_on_it(config):
    os.mkfifo(config.dropbox / "fifo.job")        # reading it would block the cycle forever
    done = run_cli("once", "--config", str(config.source), timeout=60)
    assert done.returncode == 0, done.stderr
    assert result(config, "fifo.job") is None     # never opened: listed as an unusable entry instead
    assert "it is a FIFO" in run_cli("status", "--config", str(config.source)).stdout


def test_a_rejected_result_repeats_validated_keys_only_and_is_bounded(config, tmp_path):
    (config.dropbox / "shadow.job").write_text(f"root: '$6${SECRET}'\ndaemon: '*'\nscript: [x]\n")
    big = {"script": "copy", "args": {"blob": "A" * 600_000}, "bogus": {"nested": SECRET},
           "input_map": {"src": "relative/path"}}
    drop(config, "big.job", big)
    results = drain(config, ["shadow.job", "big.job"])
    assert SECRET not in all_results_text(config)
    assert set(results["shadow.job"]) == {"job"}
    assert (config.dropbox / "big.job.finished").stat().st_size < 64 << 10


# -- 6. operator settings win; text is text --------------------------------------------------
def test_a_job_arg_cannot_override_an_hpc_env_setting(config, tmp_path):
    elsewhere = tmp_path / "elsewhere-ledger"
    drop(config, "override.job", {"script": "ledger", "cache": False,
                                  "args": {"seconds": 0, "ledger": str(elsewhere)},
                                  "output_map": {"out": str(tmp_path / "outputs" / "o.txt")}})
    block = drain(config, ["override.job"])["override.job"]["job"]
    assert block["status"] == "error" and "hpc_env.ledger" in block["message"], block
    assert not elsewhere.exists()


def test_a_job_file_that_is_not_utf8_is_an_error(config, tmp_path):
    (config.dropbox / "latin1.job").write_bytes(
        b"script: echo_args\nargs: {first: caf\xe9, second: x}\noutput_map: {out: "
        + str(tmp_path / "outputs" / "l.txt").encode() + b"}\n")
    block = drain(config, ["latin1.job"])["latin1.job"]["job"]
    assert block["status"] == "error" and "not UTF-8" in block["message"], block
    assert not (tmp_path / "outputs" / "l.txt").exists()


@pytest.mark.parametrize("value", ["a\\0b", "\\x00"])
def test_nul_bytes_in_any_value_are_errors(config, tmp_path, value):
    out = tmp_path / "outputs" / "n.txt"
    (config.dropbox / "nul.job").write_text(
        f'script: echo_args\nargs: {{first: "{value}", second: x}}\noutput_map: {{out: "{out}"}}\n')
    block = drain(config, ["nul.job"])["nul.job"]["job"]
    assert block["status"] == "error" and "args.first" in block["message"], block
    assert not out.exists()


def test_a_lone_surrogate_is_not_text():
    """libyaml refuses the escape; the pure-Python loader would let it through to here."""
    with pytest.raises(JobInvalid, match="args.first: contains an unpaired surrogate"):
        parse_job({"script": "echo_args", "args": {"first": "\ud800", "second": "x"}})


def test_a_nul_byte_in_a_path_is_an_error_naming_it(config, tmp_path):
    (config.dropbox / "nulpath.job").write_text(
        f'script: echo_args\nargs: {{first: a, second: b}}\noutput_map: {{out: "{tmp_path}/outputs/a\\0b"}}\n')
    block = drain(config, ["nulpath.job"])["nulpath.job"]["job"]
    assert block["status"] == "error" and "output_map.out: contains a NUL byte" in block["message"], block


# -- the operator is told ----------------------------------------------------------------------
@pytest.mark.parametrize("roots_set", [False, True])
def test_the_watch_daemon_warns_at_start_when_roots_are_unset(config_factory, tmp_path, roots_set):
    """The suite runs as root, which is one of the two reasons to warn."""
    roots = {"allowed_input_roots": [str(tmp_path / "inputs")],
             "allowed_output_roots": [str(tmp_path / "outputs")]} if roots_set else {}
    config = config_factory(**roots)
    log_path = tmp_path / "watch.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen([sys.executable, "-m", "dropbox_runner.cli", "watch", "--config",
                                    str(config.source)], stdout=log, stderr=log)
        try:
            wait_until(lambda: "watching" in log_path.read_text(), 30, what="the daemon's start")
        finally:
            process.send_signal(signal.SIGTERM)
            process.wait(timeout=60)
    warned = "unset while this daemon runs as root" in log_path.read_text()
    assert warned == (not roots_set and os.geteuid() == 0), log_path.read_text()


def test_holding_an_ssh_key_is_the_other_reason_to_warn(config):
    from dropbox_runner.boundaries import startup_warnings  # here, so the module runs on code without it

    config.backend = "ssh"
    assert "holds the cluster's SSH key" in " ".join(startup_warnings(config))
    config.allowed_input_roots = config.allowed_output_roots = [Path("/data")]
    assert startup_warnings(config) == []
