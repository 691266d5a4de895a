"""The SSH backend's pure parts, with plain strings: argv builders, error messages, the
transfer choice, known_hosts handling and the config it reads."""
import socket
import subprocess
from pathlib import Path

import paramiko
import pytest

from dropbox_runner.cluster import ClusterSide
from dropbox_runner.config import ConfigError, build_config, load_config
from dropbox_runner.transport import TransportError
from dropbox_runner.transport.hostkeys import (
    UnknownHostKey,
    entry_matches,
    fingerprint,
    known_hosts_line,
    known_hosts_name,
    record_key,
    recorded_keys,
    without_host,
)
from dropbox_runner.transport.rsync import (
    SshEndpoint,
    host_spec,
    master_exit_argv,
    rsh_command,
    rsh_quote,
    rsync_failure,
    rsync_pull_argv,
    rsync_push_argv,
    ssh_config_value,
    ssh_options,
)
from dropbox_runner.transport.sftp import partial_name, unchanged
from dropbox_runner.transport.ssh import SshTransport, choose_transfer, describe_connect_failure

FULL = SshEndpoint(host="hpc", port=2222, user="alice", key_file="/keys/id_ed25519",
                   known_hosts="/etc/dbr/known_hosts", ssh_config="/etc/dbr/ssh_config", connect_timeout=15)
BARE = SshEndpoint(host="hpc-alias", port=None, user=None, key_file=None,
                   known_hosts="/root/.ssh/known_hosts", ssh_config=None, connect_timeout=5)
COMMON = ["-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=yes"]


def _key(tmp_path: Path, name: str) -> tuple[paramiko.PKey, Path]:
    path = tmp_path / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return paramiko.Ed25519Key(filename=str(path)), path.with_name(name + ".pub")


# -- OpenSSH and rsync argv ----------------------------------------------------------------
def test_ssh_options_carry_every_setting():
    assert ssh_options(FULL, "/tmp/dbr-ssh-x") == [
        "-F", "/etc/dbr/ssh_config", "-p", "2222", "-l", "alice",
        "-i", "/keys/id_ed25519", "-o", "IdentitiesOnly=yes", *COMMON,
        "-o", "UserKnownHostsFile=/etc/dbr/known_hosts", "-o", "GlobalKnownHostsFile=/dev/null",
        "-o", "ControlMaster=auto", "-o", "ControlPersist=60", "-o", "ControlPath=/tmp/dbr-ssh-x/%C",
        "-o", "ConnectTimeout=15", "-o", "ServerAliveInterval=15", "-o", "ServerAliveCountMax=4"]


def test_ssh_options_leave_an_alias_to_the_ssh_config():
    options = ssh_options(BARE, "/tmp/c")
    assert options[:4] == COMMON
    assert "-p" not in options and "-l" not in options and "-i" not in options and "-F" not in options


def test_values_with_spaces_are_quoted_for_ssh_and_for_rsync():
    assert ssh_config_value("/a b/known_hosts") == '"/a b/known_hosts"'
    with pytest.raises(TransportError):
        ssh_config_value('/a "b"/known_hosts')
    assert rsh_quote("/plain/path") == "/plain/path"
    assert rsh_quote("/my keys/id") == "'/my keys/id'"
    assert rsh_quote("it's") == "'it''s'"
    assert rsh_quote("") == "''"
    assert rsh_command(["-i", "/my keys/id", "-o", 'UserKnownHostsFile="/a b/kh"']) == \
        "ssh -i '/my keys/id' -o 'UserKnownHostsFile=\"/a b/kh\"'"


def test_push_argv_follows_links_makes_private_folders_and_resumes():
    argv = rsync_push_argv("ssh -p 2222", "hpc", Path("/state/outbox"), "/work/dbr ws/jobs")
    assert argv == [
        "rsync", "--recursive", "--times", "--perms", "--copy-links", "--hard-links", "--chmod=D700,Fgo=",
        "--partial-dir=.rsync-partial", "--timeout=300",
        "--rsync-path=umask 077 && mkdir -p -- '/work/dbr ws/jobs' && rsync",
        "-e", "ssh -p 2222", "/state/outbox/", "hpc:/work/dbr ws/jobs/"]
    assert "--delete" not in " ".join(argv)


def test_pull_argv_reads_names_from_stdin_and_recurses_explicitly():
    assert rsync_pull_argv("ssh", "::1", "/work/jobs", Path("/state/inbox")) == [
        "rsync", "--recursive", "--times", "--partial-dir=.rsync-partial", "--timeout=300",
        "--from0", "--files-from=-", "--ignore-missing-args", "-e", "ssh",
        "[::1]:/work/jobs/", "/state/inbox/"]


def test_master_exit_uses_the_same_options():
    assert master_exit_argv(["-p", "22"], "hpc") == ["ssh", "-p", "22", "-O", "exit", "hpc"]
    assert host_spec("hpc.example.org") == "hpc.example.org"


@pytest.mark.parametrize("code, stderr, expected", [
    (255, b"Host key verification failed.\r\nrsync: connection unexpectedly closed", "see: trust-host --config c"),
    (255, b"alice@hpc: Permission denied (publickey).", "SSH login was refused"),
    (12, b"bash: line 1: rsync: command not found\nrsync: connection unexpectedly closed",
     "rsync is not installed on the cluster"),
    (255, b"ssh: connect to host hpc port 22: Connection refused", "network or the SSH connection"),
    (30, b"rsync error: timeout in data send/receive", "network or the SSH connection"),
    (23, b'rsync: [sender] link_stat "/x" failed: No such file', "rsync reported an error"),
])
def test_rsync_failures_say_whose_fault(code, stderr, expected):
    message = rsync_failure("push to /w", code, stderr, "trust-host --config c")
    assert message.startswith(f"rsync push to /w failed (exit {code}: ")
    assert expected in message
    assert "\n" not in message and "unexpectedly closed" not in message


# -- the transfer choice ---------------------------------------------------------------------
def _never() -> bool:
    raise AssertionError("the cluster should not have been asked")


@pytest.mark.parametrize("mode, local, passphrase, agent, remote, expected", [
    ("sftp", True, False, False, _never, "sftp"),
    ("rsync", True, False, False, _never, "rsync"),
    ("rsync", True, True, True, _never, "rsync"),
    ("auto", False, False, False, _never, "sftp"),
    ("auto", True, True, False, _never, "sftp"),
    ("auto", True, True, True, lambda: True, "rsync"),
    ("auto", True, False, False, lambda: False, "sftp"),
    ("auto", True, False, False, lambda: True, "rsync"),
])
def test_choose_transfer(mode, local, passphrase, agent, remote, expected):
    tool, why = choose_transfer(mode, local_rsync=local, passphrase=passphrase, agent=agent, remote_rsync=remote)
    assert tool == expected and why


def test_rsync_with_a_locked_key_and_no_agent_is_refused_with_the_reason():
    with pytest.raises(TransportError, match="ssh-agent"):
        choose_transfer("rsync", local_rsync=True, passphrase=True, agent=False, remote_rsync=_never)


# -- connection failures ---------------------------------------------------------------------
def test_connect_failures_are_one_clear_line(tmp_path):
    key, _ = _key(tmp_path, "a")
    other, _ = _key(tmp_path, "b")
    config = Path("/etc/dbr.yaml")

    def say(error):
        return describe_connect_failure(error, "alice@hpc:2222", config, 15)

    unknown = say(UnknownHostKey("[hpc]:2222", key))
    assert "host key for [hpc]:2222 is not known" in unknown and fingerprint(key) in unknown
    assert "dropbox-runner trust-host --config /etc/dbr.yaml" in unknown
    changed = say(paramiko.BadHostKeyException("[hpc]:2222", other, key))
    assert "CHANGED" in changed and "refusing" in changed and "--replace" in changed
    assert fingerprint(key) in changed and fingerprint(other) in changed
    assert "encrypted" in say(paramiko.PasswordRequiredException("Private key file is encrypted"))
    assert "login to alice@hpc:2222 refused" in say(paramiko.AuthenticationException("Authentication failed."))
    assert "cannot resolve" in say(socket.gaierror(-2, "Name or service not known"))
    assert "within 15s" in say(TimeoutError("timed out"))
    assert "Connection refused" in say(ConnectionRefusedError(111, "Connection refused"))
    banner = "Error reading SSH protocol banner"
    assert f"failed: {banner}" in say(paramiko.SSHException(banner))


# -- host keys -----------------------------------------------------------------------------------
def test_fingerprint_is_what_ssh_keygen_shows(tmp_path):
    key, public = _key(tmp_path, "host")
    shown = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public)],
                           capture_output=True, text=True, check=True).stdout.split()[1]
    assert fingerprint(key) == shown


def test_known_hosts_names():
    assert known_hosts_name("hpc.example.org", 22) == "hpc.example.org"
    assert known_hosts_name("127.0.0.1", 2222) == "[127.0.0.1]:2222"


def test_record_find_and_replace_keys(tmp_path):
    key, _ = _key(tmp_path, "new")
    old, _ = _key(tmp_path, "old")
    hashed = paramiko.HostKeys.hash_host("[hpc]:2222")
    path = tmp_path / "ssh" / "known_hosts"
    path.parent.mkdir()
    path.write_text(f"# a comment\nother {old.get_name()} {old.get_base64()}\n"
                    f"{hashed} {old.get_name()} {old.get_base64()}")   # no final newline
    entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{hashed} {old.get_name()} {old.get_base64()}")
    assert entry_matches(entry, "[hpc]:2222") and not entry_matches(entry, "hpc")
    assert [k.asbytes() for k in recorded_keys(path, "[hpc]:2222")] == [old.asbytes()]

    record_key(path, "[hpc]:2222", key, replace=False)
    assert len(recorded_keys(path, "[hpc]:2222")) == 2
    record_key(path, "[hpc]:2222", key, replace=True)
    assert [k.asbytes() for k in recorded_keys(path, "[hpc]:2222")] == [key.asbytes()]
    text = path.read_text()
    assert text.startswith("# a comment\nother ") and text.endswith(known_hosts_line("[hpc]:2222", key))
    assert recorded_keys(tmp_path / "missing", "hpc") == []


def test_without_host_keeps_everything_else():
    text = "# c\nhpc ssh-ed25519 AAAA\n\n@cert-authority * ssh-ed25519 AAAA\n"
    assert without_host(text, "hpc") == text   # 'AAAA' is no valid key: kept untouched


# -- sftp helpers --------------------------------------------------------------------------------
def test_sftp_partial_names_and_change_check():
    assert partial_name("/w/jobs/x/job.sh") == "/w/jobs/x/.job.sh.dbr-partial"
    assert unchanged(10, 100.7, 10, 100.2)
    assert not unchanged(10, 100.0, 11, 100.0)
    assert not unchanged(10, 100.0, 10, None)


# -- config ----------------------------------------------------------------------------------------
def _ssh_config(tmp_path: Path, **remote) -> dict:
    return {"dropbox": str(tmp_path), "backend": "ssh",
            "remote": {"host": "hpc", **remote},
            "hpc_env": {"workspace": "/w/workspace", "scripts": "/w/scripts"}}


def test_the_passphrase_never_shows_in_a_repr(tmp_path):
    config = build_config(_ssh_config(tmp_path, passphrase="s3cret-phrase"), tmp_path / "c.yaml")
    assert config.remote.passphrase == "s3cret-phrase"
    assert "s3cret-phrase" not in repr(config) and "s3cret-phrase" not in repr(config.remote)


def test_remote_paths_are_resolved_against_the_config_folder(tmp_path):
    config = build_config(_ssh_config(tmp_path, key_file="keys/id", known_hosts="~/kh"), tmp_path / "c.yaml")
    assert config.remote.key_file == tmp_path / "keys" / "id"
    assert config.remote.known_hosts == Path("~/kh").expanduser()


def test_cluster_folders_must_be_absolute(tmp_path):
    data = _ssh_config(tmp_path)
    data["hpc_env"]["workspace"] = "dbr/workspace"
    with pytest.raises(ConfigError, match="hpc_env.workspace: must be an absolute path"):
        build_config(data, tmp_path / "c.yaml")


def test_the_ini_passphrase_is_read(tmp_path):
    ini = tmp_path / "hpc_batch.ini"
    ini.write_text("[remote]\nhost = hpc\nuser = alice\nkey_file = id_hpc\npassphrase = from-ini\n"
                   "[cronjob]\ndropbox = box\n[hpc_env]\nworkspace = /w/ws\nscripts = /w/scripts\n")
    config = load_config(ini, check_folders=False)
    assert config.remote.passphrase == "from-ini" and config.remote.key_file == tmp_path / "id_hpc"
    assert "from-ini" not in repr(config)


def test_a_transport_does_nothing_until_used(tmp_path):
    config = build_config(_ssh_config(tmp_path, port=1, connect_timeout=1), tmp_path / "c.yaml")
    transport = SshTransport(config)
    transport.close()
    assert transport.target == "hpc:1"


def test_the_kept_open_process_is_started_ahead_only_over_a_connection_already_up(tmp_path, monkeypatch):
    """A cluster that cannot be reached must not hold up the intake by its connect
    timeout: the cycle's call connects, and reports the failure, as it did before."""
    config = build_config(_ssh_config(tmp_path, port=1, connect_timeout=1), tmp_path / "c.yaml")
    transport = SshTransport(config)
    monkeypatch.setattr(transport, "open_session", lambda command: pytest.fail("started before connecting"))
    assert not transport.connected()
    ClusterSide(config, transport, keep_open=True).start_ahead()


def test_passphrase_env_must_be_set(tmp_path, monkeypatch):
    monkeypatch.delenv("DBR_TEST_PASSPHRASE", raising=False)
    config = build_config(_ssh_config(tmp_path, passphrase_env="DBR_TEST_PASSPHRASE"), tmp_path / "c.yaml")
    with pytest.raises(TransportError, match="DBR_TEST_PASSPHRASE, which is not set"):
        SshTransport(config).run("true")
