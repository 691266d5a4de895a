"""SshTransport against a real sshd on loopback: commands, rsync and SFTP transfers, host-key
checking, trust-host, deploy, passphrase-protected keys, and a server that goes away."""
import io
import logging
import os
import shutil
import signal
import subprocess
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import paramiko
import pytest
import realcluster
from helpers import wait_until
from sshsetup import modes_below, new_scratch, ssh_client_processes, ssh_config, write_config

from dropbox_runner import cli
from dropbox_runner.cluster import STAMP_FILE
from dropbox_runner.config import load_config
from dropbox_runner.transport import TransportError
from dropbox_runner.transport.hostkeys import fingerprint
from dropbox_runner.transport.ssh import SshTransport


@pytest.fixture
def scratch(sshd):
    folder = new_scratch(sshd)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def transports():
    """Transports made by a test, closed whatever happens."""
    made = []
    yield made
    for transport in made:
        transport.close()


def _transport(transports, tmp_path, sshd, **remote) -> SshTransport:
    transport = SshTransport(ssh_config(tmp_path, sshd, remote))
    transports.append(transport)
    return transport


def _local_tree(tmp_path: Path) -> Path:
    """A tree like the outbox: nested folders and a symlink to a file elsewhere."""
    source = tmp_path / "outbox"
    (source / "job1" / "input").mkdir(parents=True)
    (source / "job1" / "job.sh").write_text("#!/bin/bash\necho hi\n")
    (source / "job1" / "job.json").write_text("{}")
    elsewhere = tmp_path / "inputs" / "data.txt"
    elsewhere.parent.mkdir()
    elsewhere.write_bytes(os.urandom(200_000))
    (source / "job1" / "input" / "data.txt").symlink_to(elsewhere)
    return source


def _server_key_line(sshd) -> str:
    kind, blob = sshd.host_key_pub.read_text().split()[:2]
    return f"[{sshd.host}]:{sshd.port} {kind} {blob}\n"


def _other_key_line(tmp_path: Path, sshd) -> str:
    other = tmp_path / "other_host_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = other.with_name("other_host_key.pub").read_text().split()[:2]
    return f"[{sshd.host}]:{sshd.port} {kind} {blob}\n"


# -- commands ---------------------------------------------------------------------------------
def test_commands_share_one_login_and_return_bytes(tmp_path, sshd, transports):
    transport = _transport(transports, tmp_path, sshd)
    logins = sshd.logins()
    payload = os.urandom(300_000)        # more than a channel window, both ways
    result = transport.run("cat; printf 'to stderr' >&2; exit 3", payload)
    assert (result.returncode, result.stdout, result.stderr) == (3, payload, b"to stderr")
    assert transport.run("exit 7", os.urandom(5_000_000)).returncode == 7   # input left unread
    assert transport.run("id -un").stdout == f"{sshd.user}\n".encode()
    assert transport.run("test -n \"$HOME\" && pwd").stdout.decode().strip() == str(sshd.home)
    assert sshd.logins() == logins + 1


def test_a_session_answers_line_by_line_on_one_channel_and_tells_how_it_ended(tmp_path, sshd, transports):
    """What ``on_hpc serve`` is kept open on: one exec channel, a line in and a line out,
    each answer whole even when it is larger than a channel window."""
    transport = _transport(transports, tmp_path, sshd)
    transport.run("true")                                   # the login, before counting channels
    sessions = len(sshd.sessions())
    session = transport.open_session("printf 'ready' >&2; while read -r line; do echo \"$line$line\"; done; exit 4")
    big = b"x" * 300_000
    assert session.ask(b"one\n") == b"oneone\n"
    assert session.ask(big + b"\n") == big + big + b"\n"
    assert session.alive()
    ended = session.close()
    assert (ended.returncode, ended.stderr) == (4, b"ready")
    assert len(sshd.sessions()) == sessions + 1

    quits = transport.open_session("read -r line; echo 'gone' >&2; exit 3")
    assert quits.ask(b"anything\n") is None                # it ended without answering
    assert not quits.alive()
    ended = quits.close()
    assert (ended.returncode, ended.stderr) == (3, b"gone\n")


def test_the_transport_says_whether_its_command_connection_is_up(tmp_path, sshd, transports):
    """What decides whether a submitter starts its kept-open process ahead of the call."""
    transport = _transport(transports, tmp_path, sshd)
    assert not transport.connected()
    transport.run("true")
    assert transport.connected()
    transport.close()
    assert not transport.connected()


# -- transfers -----------------------------------------------------------------------------------
@pytest.mark.parametrize("transfer, logins_expected", [("rsync", 2), ("sftp", 1)])
def test_push_and_pull_roundtrip(tmp_path, sshd, scratch, transports, transfer, logins_expected):
    transport = _transport(transports, tmp_path, sshd, transfer=transfer)
    source = _local_tree(tmp_path)
    jobs = f"{scratch}/workspace/jobs"
    logins = sshd.logins()

    transport.push(source, jobs)
    remote_job = Path(jobs, "job1")
    assert (remote_job / "input" / "data.txt").read_bytes() == (tmp_path / "inputs" / "data.txt").read_bytes()
    assert not (remote_job / "input" / "data.txt").is_symlink()
    modes = modes_below(sshd.home, scratch)
    folders = {path: mode for path, mode in modes.items() if (sshd.home / path).is_dir()}
    assert set(folders.values()) == {0o700}, folders                 # scratch itself included
    assert all(mode & 0o077 == 0 for mode in modes.values()), modes
    assert not [name for name in modes if "partial" in name]
    assert (remote_job / "job.sh").stat().st_uid == sshd.home.stat().st_uid

    inode = (remote_job / "input" / "data.txt").stat().st_ino
    transport.push(source, jobs)                                     # unchanged: not sent again
    assert (remote_job / "input" / "data.txt").stat().st_ino == inode

    made = transport.run(f"cd {jobs}/job1 && mkdir -p output/sub && echo out > output/result.txt && "
                         "echo deep > output/sub/deep.txt && echo log > stdout && "
                         "ln -s /etc/passwd output/sneaky")
    assert made.returncode == 0, made.stderr
    inbox = tmp_path / "inbox"
    transport.pull(jobs, ["job1/output", "job1/stdout", "job1/stderr", "nothing/here"], inbox)
    assert (inbox / "job1" / "output" / "result.txt").read_text() == "out\n"
    assert (inbox / "job1" / "output" / "sub" / "deep.txt").read_text() == "deep\n"
    assert (inbox / "job1" / "stdout").read_text() == "log\n"
    assert not (inbox / "job1" / "stderr").exists() and not (inbox / "nothing").exists()
    assert not os.path.lexists(inbox / "job1" / "output" / "sneaky")   # links are not followed back
    assert (inbox / "job1" / "output" / "result.txt").stat().st_uid == 0

    assert sshd.logins() == logins + logins_expected
    assert len(ssh_client_processes(sshd.port)) == (transfer == "rsync")   # the rsync master
    transport.close()
    wait_until(lambda: not ssh_client_processes(sshd.port))         # ...is gone


@pytest.mark.parametrize("transfer", ["rsync", "sftp"])
def test_names_of_one_local_file_arrive_as_one_file_on_the_cluster(tmp_path, sshd, scratch, transports, transfer):
    """Every job.json of an intake cycle is one file (on_hpc/batchfile.py): sending it once
    per job would make the cycle's bytes grow with the square of its jobs."""
    transport = _transport(transports, tmp_path, sshd, transfer=transfer)
    source = tmp_path / "outbox"
    for job in ("job1", "job2", "job3"):
        (source / job).mkdir(parents=True)
        (source / job / "job.sh").write_text("#!/bin/bash\necho hi\n")
    (source / "job1" / "job.json").write_text('{"key": "job1", "record": {}}\n' * 50)
    for job in ("job2", "job3"):
        os.link(source / "job1" / "job.json", source / job / "job.json")
    transport.push(source, f"{scratch}/jobs")
    arrived = [os.stat(Path(scratch, "jobs", job, "job.json")) for job in ("job1", "job2", "job3")]
    assert {(info.st_ino, info.st_nlink) for info in arrived} == {(arrived[0].st_ino, 3)}
    assert Path(scratch, "jobs", "job3", "job.json").read_text() == '{"key": "job1", "record": {}}\n' * 50
    assert not [name for name in os.listdir(Path(scratch, "jobs", "job2")) if "partial" in name]
    (source / "job2" / "job.json").unlink()
    (source / "job2" / "job.json").write_text("{}")        # changed since: sent, the others stay linked
    transport.push(source, f"{scratch}/jobs")
    assert Path(scratch, "jobs", "job2", "job.json").read_text() == "{}"


def test_a_killed_rsync_master_is_replaced_and_nothing_is_left_running(tmp_path, sshd, scratch, transports):
    transport = _transport(transports, tmp_path, sshd, transfer="rsync")
    source = _local_tree(tmp_path)
    transport.push(source, f"{scratch}/jobs")
    masters = ssh_client_processes(sshd.port)
    assert len(masters) == 1
    os.kill(masters[0], signal.SIGKILL)                  # leaves a stale socket behind
    wait_until(lambda: not ssh_client_processes(sshd.port))
    (source / "job1" / "job.json").write_text('{"changed": true}')
    transport.push(source, f"{scratch}/jobs")
    assert Path(scratch, "jobs", "job1", "job.json").read_text() == '{"changed": true}'
    transport.close()
    wait_until(lambda: not ssh_client_processes(sshd.port))


def test_auto_transfer_takes_rsync_when_both_sides_have_it(tmp_path, sshd, scratch, transports):
    transport = _transport(transports, tmp_path, sshd, transfer="auto")
    sessions = len(sshd.sessions())
    transport.push(_local_tree(tmp_path), f"{scratch}/jobs")
    new = sshd.sessions()[sessions:]
    assert len(new) == 2 and not [line for line in new if "sftp" in line]   # command -v rsync, then rsync


def test_an_ssh_config_alias_works_for_commands_and_rsync(tmp_path, sshd, scratch, transports):
    alias_config = tmp_path / "ssh_config"
    alias_config.write_text(f"Host dbr-test-cluster\n  HostName {sshd.host}\n  Port {sshd.port}\n"
                            f"  User {sshd.user}\n  IdentityFile {sshd.key_file}\n")
    config = load_config(write_config(tmp_path, sshd, scratch, remote={
        "host": "dbr-test-cluster", "port": None, "user": None, "key_file": None,
        "ssh_config": str(alias_config), "transfer": "rsync"}))
    transport = SshTransport(config)
    transports.append(transport)
    assert transport.run("id -un").stdout.decode().strip() == sshd.user
    transport.push(_local_tree(tmp_path), f"{scratch}/jobs")
    assert Path(scratch, "jobs", "job1", "job.json").exists()


# -- host keys ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("transfer", ["rsync", "sftp"])
def test_an_unknown_host_key_is_refused(tmp_path, sshd, scratch, transports, transfer):
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    transport = _transport(transports, tmp_path, sshd, known_hosts=str(empty), transfer=transfer)
    logins = sshd.logins()
    with pytest.raises(TransportError, match=r"host key for \[127.0.0.1\]:\d+ is not known.*trust-host --config"):
        transport.run("true")
    with pytest.raises(TransportError, match="trust-host"):
        transport.push(_local_tree(tmp_path), f"{scratch}/jobs")
    assert sshd.logins() == logins
    assert empty.read_text() == ""                                   # nothing was added on the way
    assert not scratch.exists()


def test_a_changed_host_key_is_refused(tmp_path, sshd, scratch, transports):
    known = tmp_path / "known_hosts"
    known.write_text(_other_key_line(tmp_path, sshd))
    transport = _transport(transports, tmp_path, sshd, known_hosts=str(known), transfer="rsync")
    with pytest.raises(TransportError, match="CHANGED.*refusing.*--replace"):
        transport.run("true")
    with pytest.raises(TransportError, match="host key is unknown or not the one in known_hosts"):
        transport.push(_local_tree(tmp_path), f"{scratch}/jobs")
    assert not scratch.exists()


def test_trust_host_records_the_key_then_connections_work(tmp_path, sshd, scratch, capsys, monkeypatch):
    known = tmp_path / "ssh" / "known_hosts"                         # folder and file made on the way
    config_path = write_config(tmp_path, sshd, scratch, remote={"known_hosts": str(known)})
    expected = fingerprint(paramiko.Ed25519Key(filename=str(sshd.root / "ssh_host_ed25519_key")))

    monkeypatch.setattr("sys.stdin", io.StringIO("n\n"))
    assert cli.main(["trust-host", "--config", str(config_path)]) == cli.EXIT_HOST_KEY
    assert "not recorded" in capsys.readouterr().out and not known.exists()

    assert cli.main(["trust-host", "--config", str(config_path), "--yes"]) == cli.EXIT_OK
    out = capsys.readouterr().out
    assert f"[{sshd.host}]:{sshd.port} presents a ssh-ed25519 host key, fingerprint {expected}" in out
    assert known.read_text() == _server_key_line(sshd)
    transport = SshTransport(load_config(config_path))
    try:
        assert transport.run("true").returncode == 0
    finally:
        transport.close()

    assert cli.main(["trust-host", "--config", str(config_path), "--yes"]) == cli.EXIT_OK
    assert "already trusted" in capsys.readouterr().out


def test_trust_host_will_not_overwrite_a_different_key_without_replace(tmp_path, sshd, scratch, capsys):
    known = tmp_path / "known_hosts"
    known.write_text("# keep me\n" + _other_key_line(tmp_path, sshd))
    before = known.read_text()
    config_path = write_config(tmp_path, sshd, scratch, remote={"known_hosts": str(known)})

    assert cli.main(["trust-host", "--config", str(config_path), "--yes"]) == cli.EXIT_HOST_KEY
    assert "DIFFERENT key" in capsys.readouterr().err
    assert known.read_text() == before

    assert cli.main(["trust-host", "--config", str(config_path), "--yes", "--replace"]) == cli.EXIT_OK
    assert known.read_text() == "# keep me\n" + _server_key_line(sshd)


# -- deploy ---------------------------------------------------------------------------------------------
def test_deploy_installs_on_hpc_in_private_folders(tmp_path, sshd, scratch, capsys):
    config_path = write_config(tmp_path, sshd, scratch)
    assert cli.main(["deploy", "--config", str(config_path)]) == cli.EXIT_OK
    deployed = Path(capsys.readouterr().out.strip())
    assert deployed.parent == scratch / "scripts"
    assert (deployed / STAMP_FILE).exists() and (deployed / "on_hpc" / "runner.py").exists()
    compiled = {path.name.split(".")[0] for path in (deployed / "on_hpc" / "__pycache__").glob("*.pyc")}
    assert compiled == {path.stem for path in (deployed / "on_hpc").glob("*.py")}
    folders = [mode for path, mode in modes_below(sshd.home, scratch).items() if (sshd.home / path).is_dir()]
    assert set(folders) == {0o700}


# -- passphrase-protected keys -----------------------------------------------------------------------------
@pytest.fixture
def locked_key(tmp_path, sshd):
    """A passphrase-protected key the account accepts (added to this sshd's authorized_keys)."""
    key = tmp_path / "locked_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "open sesame", "-f", str(key)], check=True)
    original = sshd.authorized_keys.read_text()
    sshd.authorized_keys.write_text(original + key.with_name("locked_key.pub").read_text())
    yield key
    sshd.authorized_keys.write_text(original)


def test_a_passphrase_from_the_environment_unlocks_the_key_and_transfers_use_sftp(
        tmp_path, sshd, scratch, transports, locked_key, monkeypatch, caplog):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    monkeypatch.setenv("DBR_TEST_PASSPHRASE", "open sesame")
    transport = _transport(transports, tmp_path, sshd, key_file=str(locked_key), passphrase_env="DBR_TEST_PASSPHRASE")
    sessions = len(sshd.sessions())
    assert transport.run("true").returncode == 0
    transport.push(_local_tree(tmp_path), f"{scratch}/jobs")
    assert Path(scratch, "jobs", "job1", "job.sh").exists()
    assert "subsystem 'sftp'" in " ".join(sshd.sessions()[sessions:])

    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("DBR_TEST_PASSPHRASE", "wrong phrase 1234")
    wrong = _transport(transports, tmp_path, sshd, key_file=str(locked_key), passphrase_env="DBR_TEST_PASSPHRASE")
    with pytest.raises(TransportError) as refused:
        wrong.run("true")
    assert "wrong phrase 1234" not in str(refused.value)
    assert "wrong phrase 1234" not in caplog.text and "open sesame" not in caplog.text


def test_rsync_with_a_locked_key_needs_an_agent(tmp_path, sshd, scratch, transports, locked_key, monkeypatch):
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)
    transport = _transport(transports, tmp_path, sshd, key_file=str(locked_key), passphrase="open sesame",
                           transfer="rsync")
    source = _local_tree(tmp_path)
    with pytest.raises(TransportError, match="ssh-agent"):
        transport.push(source, f"{scratch}/jobs")

    with _agent_holding(tmp_path, locked_key, "open sesame") as socket_path:
        monkeypatch.setenv("SSH_AUTH_SOCK", socket_path)
        transport = _transport(transports, tmp_path, sshd, key_file=str(locked_key), passphrase="open sesame",
                               transfer="auto")
        sessions = len(sshd.sessions())
        transport.push(source, f"{scratch}/jobs")
        assert Path(scratch, "jobs", "job1", "job.sh").exists()
        assert "sftp" not in " ".join(sshd.sessions()[sessions:])
        transport.close()


@contextmanager
def _agent_holding(tmp_path: Path, key: Path, passphrase: str) -> Iterator[str]:
    """An ssh-agent of this test's own holding the key (its passphrase given through
    SSH_ASKPASS); yields its socket, and is stopped by its pid afterwards."""
    socket_path = str(tmp_path / "agent.sock")
    askpass = tmp_path / "askpass.sh"
    askpass.write_text(f"#!/bin/sh\necho '{passphrase}'\n")
    askpass.chmod(0o700)
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", socket_path], stdout=subprocess.DEVNULL)
    try:
        wait_until(lambda: os.path.exists(socket_path))
        env = dict(os.environ, SSH_AUTH_SOCK=socket_path, SSH_ASKPASS=str(askpass),
                   SSH_ASKPASS_REQUIRE="force", DISPLAY=":0")
        subprocess.run(["ssh-add", str(key)], env=env, stdin=subprocess.DEVNULL, check=True,
                       capture_output=True, timeout=30)
        yield socket_path
    finally:
        agent.terminate()
        agent.wait(timeout=10)


# -- the cluster goes away ----------------------------------------------------------------------------------
def test_a_wrong_port_is_a_transport_error(tmp_path, sshd, scratch, transports):
    closed_port = realcluster._free_port()
    source = _local_tree(tmp_path)
    for transfer in ("rsync", "sftp"):
        transport = _transport(transports, tmp_path, sshd, port=closed_port, transfer=transfer)
        with pytest.raises(TransportError, match="cannot connect|Connection refused"):
            transport.run("true")
        with pytest.raises(TransportError, match="network or the SSH connection|cannot connect"):
            transport.push(source, f"{scratch}/jobs")


def test_a_stopped_server_fails_cleanly_and_the_same_transport_reconnects(tmp_path, sshd, scratch, transports):
    transport = _transport(transports, tmp_path, sshd, transfer="rsync")
    source = _local_tree(tmp_path)
    transport.push(source, f"{scratch}/jobs")
    assert transport.run("true").returncode == 0
    sshd.stop()
    try:
        with pytest.raises(TransportError):
            transport.run("true")
        with pytest.raises(TransportError, match="network or the SSH connection"):
            transport.push(source, f"{scratch}/jobs")
        wait_until(lambda: not ssh_client_processes(sshd.port))       # the master died with it
    finally:
        sshd.start()
    assert transport.run("true").returncode == 0
    transport.push(source, f"{scratch}/jobs")
    transport.close()
    wait_until(lambda: not ssh_client_processes(sshd.port))
