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
_CLUSTER_FIXTURES = {"slurm_cluster", "sshd_server", "sshd"}


def pytest_collection_modifyitems(items):
    """Mark every test that starts a real daemon, so `-m "not cluster"` is the fast tier."""
    for item in items:
        if _CLUSTER_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.cluster)
