"""The tests' count of SSH client processes sees only its own sshd's: another dropbox-runner
on the machine (with masters of its own) must not fail the suite."""
from __future__ import annotations

import socket
import subprocess

from helpers import wait_until
from sshsetup import ssh_client_processes


def _fake_master(name: str, port: int) -> subprocess.Popen:
    """A process titled as OpenSSH titles a multiplexing master, holding a TCP connection to ``port``."""
    script = f'exec 3<>/dev/tcp/127.0.0.1/{port}; sleep 60; :'   # ':' keeps bash from exec'ing sleep
    return subprocess.Popen(["bash", "-c", f'exec -a "ssh: /tmp/dbr-ssh-{name}/0123abcd [mux]" bash -c "{script}"'])


def test_only_masters_connected_to_this_sshd_are_counted():
    ours_server, foreign_server = socket.socket(), socket.socket()
    for server in (ours_server, foreign_server):
        server.bind(("127.0.0.1", 0))
        server.listen(1)
    port, other_port = ours_server.getsockname()[1], foreign_server.getsockname()[1]
    ours, foreign = _fake_master("ours", port), _fake_master("foreign", other_port)
    try:
        found = wait_until(lambda: ssh_client_processes(port), what="our master")
        assert found == [ours.pid]                                  # the other dropbox-runner's is not ours
        assert ssh_client_processes(other_port) == [foreign.pid]
    finally:
        for process in (ours, foreign):
            process.kill()
            process.wait()
        ours_server.close()
        foreign_server.close()
