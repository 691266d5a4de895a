"""The real-cluster fixtures work: SSH with host-key checking, log counting, Slurm jobs as the
unprivileged account, fake GPUs, sshd restart."""

import shlex
import subprocess
import uuid
from pathlib import Path

from helpers import wait_until


def _wait_file(path: Path, timeout: float = 20) -> str:
    wait_until(lambda: path.exists() and path.stat().st_size > 0, timeout, 0.1, f"{path} to appear")
    return path.read_text()


def _workdir(sshd) -> tuple[str, Path]:
    """A fresh folder in the account's home, made by the account itself (relative, absolute)."""
    rel = f"dbr-fixture-tests/{uuid.uuid4().hex[:8]}"
    proc = sshd.ssh(f"mkdir -p {rel}")
    assert proc.returncode == 0, proc.stderr
    return rel, sshd.home / rel


def test_ssh_login_with_key_and_host_key_checking(sshd_server, tmp_path):
    proc = sshd_server.ssh("id -un; echo $SLURM_CONF; command -v python3 rsync sbatch")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[0] == sshd_server.user
    assert lines[1].endswith("slurm.conf")
    assert lines[2:] == ["/usr/bin/python3", "/usr/bin/rsync", "/usr/bin/sbatch"]

    # Host-key checking is on: an empty known_hosts is refused, not silently accepted.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = [
        a.replace(str(sshd_server.known_hosts), str(empty)) for a in sshd_server.ssh_argv()
    ]
    proc = subprocess.run([*argv, "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 255
    assert "Host key verification failed" in proc.stderr


def test_log_counts_logins_and_sessions(sshd_server):
    logins, sessions = sshd_server.logins(), len(sshd_server.sessions())
    for _ in range(2):
        assert sshd_server.ssh("true").returncode == 0
    assert sshd_server.logins() == logins + 2
    new = sshd_server.sessions()[sessions:]
    assert len(new) == 2 and all("Starting session: command" in s for s in new)

    # rsync over the same client: one more login, one more session.
    argv = sshd_server.ssh_argv()
    proc = subprocess.run(
        ["rsync", "-a", "-e", shlex.join(argv[:-1]), __file__, f"{argv[-1]}:rsync-probe.py"],
        capture_output=True, text=True, timeout=30,
    )
    assert proc.returncode == 0, proc.stderr
    assert sshd_server.logins() == logins + 3
    assert (sshd_server.home / "rsync-probe.py").read_text() == Path(__file__).read_text()
    sshd_server.ssh("rm -f rsync-probe.py")


def test_sbatch_over_ssh_runs_as_the_account(sshd_server, slurm_cluster):
    rel, absdir = _workdir(sshd_server)
    proc = sshd_server.ssh(
        f"cd {rel} && sbatch --parsable -o out-%j.txt --wrap 'id -un; hostname; pwd'"
    )
    assert proc.returncode == 0, proc.stderr
    job_id = proc.stdout.strip().split(";")[0]
    out = absdir / f"out-{job_id}.txt"
    _wait_file(out)
    slurm_cluster.wait_idle()  # the job has finished: the whole output is there
    user, _host, cwd = out.read_text().split()
    assert user == sshd_server.user
    assert cwd == str(absdir)
    assert out.stat().st_uid == absdir.stat().st_uid != 0
    sshd_server.ssh(f"rm -rf {rel}")


def test_two_gpu_jobs_run_at_once_on_different_gpus(sshd_server, slurm_cluster):
    rel, absdir = _workdir(sshd_server)
    script = (
        "echo start $(date +%s.%N) gpu=$CUDA_VISIBLE_DEVICES jobgpus=$SLURM_JOB_GPUS; "
        "sleep 2; echo end $(date +%s.%N)"
    )
    submit = f"sbatch --parsable --gres=gpu:1 -o gpu-%j.txt --wrap {shlex.quote(script)}"
    proc = sshd_server.ssh(f"cd {rel} && {submit} && {submit}")
    assert proc.returncode == 0, proc.stderr
    ids = proc.stdout.split()
    assert len(ids) == 2
    slurm_cluster.wait_idle(30)
    runs = []
    for job_id in ids:
        lines = _wait_file(absdir / f"gpu-{job_id}.txt").split("\n")
        start, gpu, jobgpus = lines[0].split()[1:4]
        end = lines[1].split()[1]
        assert gpu.split("=")[1] == jobgpus.split("=")[1] != ""
        runs.append((float(start), float(end), gpu))
    (s1, e1, g1), (s2, e2, g2) = runs
    assert g1 != g2
    assert s1 < e2 and s2 < e1, f"jobs did not overlap: {runs}"
    sshd_server.ssh(f"rm -rf {rel}")


def test_sshd_stop_kills_sessions_and_start_again(sshd_server):
    before = len(sshd_server.sessions())
    long = subprocess.Popen(
        [*sshd_server.ssh_argv(), "sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        wait_until(lambda: len(sshd_server.sessions()) > before, 10, 0.05, "the ssh session to start")
        sshd_server.stop()
        assert long.wait(timeout=10) == 255  # the open connection died with the server
        refused = sshd_server.ssh("true", timeout=30)
        assert refused.returncode == 255
        assert "Connection refused" in refused.stderr
    finally:
        if long.poll() is None:
            long.kill()
        long.wait()
        sshd_server.start()
    # Same port, same host key: the old known_hosts still works.
    proc = sshd_server.ssh("echo back")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "back"
