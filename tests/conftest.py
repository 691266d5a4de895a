# ===================================================================== real cluster fixtures
# A real Slurm cluster and a real sshd on loopback (see tests/realcluster.py and
# /work/shared/notes/real-cluster.md). These fixtures never skip: if a daemon cannot start they
# raise with the tail of its log. Needs root (Debian 12); installs the system packages with
# scripts/install-system-deps.sh when missing. DBR_KEEP_TEST_CLUSTER=1 keeps the /tmp folders.
import os
import shutil

import pytest

try:  # tests/ as a package (if an __init__.py is ever added) or as a rootdir on sys.path
    from . import realcluster
except ImportError:
    import realcluster


def _keep_folders() -> bool:
    return os.environ.get("DBR_KEEP_TEST_CLUSTER", "") not in ("", "0")


@pytest.fixture(scope="session")
def slurm_cluster():
    """A single-node Slurm cluster (8 CPUs, 2 fake GPUs): realcluster.Slurm."""
    slurm = realcluster.start_slurm()
    try:
        yield slurm
    finally:
        slurm.stop()
        if not _keep_folders():
            shutil.rmtree(slurm.root, ignore_errors=True)


@pytest.fixture(scope="session")
def sshd_server(slurm_cluster):
    """sshd on 127.0.0.1 logging in the unprivileged account, SLURM_CONF set: realcluster.Sshd."""
    sshd = realcluster.start_sshd(slurm_cluster)
    try:
        yield sshd
    finally:
        sshd.close()
        if not _keep_folders():
            shutil.rmtree(sshd.root, ignore_errors=True)


@pytest.fixture(scope="session")
def sge_cluster():
    """A single-node Grid Engine cell (8 slots, queue all.q, PE smp, 2 GPUs as the consumable
    ``gpu``, bound by queue gpu.q's starter method): gridengine.GridEngine.  Never skips: a
    cell that cannot start raises with its daemons' logs."""
    import gridengine
    sge = gridengine.start_gridengine()
    try:
        yield sge
    finally:
        sge.stop()
        if not _keep_folders():
            shutil.rmtree(sge.root, ignore_errors=True)


@pytest.fixture(scope="session")
def sge_sshd(sge_cluster):
    """sshd on 127.0.0.1 logging in the unprivileged account, its sessions in the Grid Engine cell."""
    sshd = realcluster.start_sshd(env=sge_cluster.env_vars())
    try:
        probe = sshd.ssh("qstat -u $USER -xml >/dev/null && echo SGE_ROOT=$SGE_ROOT", timeout=30)
        if f"SGE_ROOT={sge_cluster.sge_root}" not in probe.stdout:
            raise realcluster.ClusterError(f"qstat over ssh fails in the cell (rc={probe.returncode}):\n"
                                           f"{probe.stdout}{probe.stderr}\n{realcluster.tail(sshd.log_path)}")
        yield sshd
    finally:
        sshd.close()
        if not _keep_folders():
            shutil.rmtree(sshd.root, ignore_errors=True)


# ================================================================= end real cluster fixtures


@pytest.fixture(scope="module")
def sshd():
    """A private sshd for one test module, with no Slurm: the SSH tests stop and start it."""
    import sshsetup
    server = sshsetup.start_private_sshd()
    yield server
    sshsetup.stop_private_sshd(server)


# ================================================================= local pipeline fixtures
@pytest.fixture
def config_factory(tmp_path):
    """Build local-backend configs under tmp_path; their runners are killed afterwards."""
    from helpers import make_config, stop_local_runners

    made = []

    def factory(**overrides):
        made.append(make_config(tmp_path, **overrides))
        return made[-1]

    yield factory
    for config in made:
        stop_local_runners(config)


@pytest.fixture
def config(config_factory):
    return config_factory()


# ================================================================= test tiers
_CLUSTER_FIXTURES = {"slurm_cluster", "sshd_server", "sshd", "sge_cluster", "sge_sshd"}


def pytest_collection_modifyitems(items):
    """Mark every test that starts a real daemon, so `-m "not cluster"` is the fast tier."""
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
