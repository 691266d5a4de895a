"""Where jobs may read and write, from the operator's settings plus fixed no-go zones.

The roots are the operator's choice; the no-go zones are not: a job that could write into
the dropbox could forge another job's result or drop new jobs, one that could write into
the state folder or cache could rewrite the submitter's memory, and one that could read
the SSH key or the config could have them copied into its outputs.  So the submitter's own
files are out of bounds for every job, whatever the roots say.
"""
from __future__ import annotations

import os
import stat
from functools import lru_cache
from pathlib import Path

from .config import Config
from .safefs import SYSTEM_ZONES, Boundaries

PACKAGE = Path(__file__).resolve().parent     # the submitter's own code, and on_hpc's as deployed


def boundaries_for(config: Config) -> Boundaries:
    zones = [config.dropbox, config.state_dir, config.cache_dir, config.lockfile, config.source,
             config.metrics_file, config.templates, Path("~/.ssh").expanduser(), PACKAGE]
    if config.backend == "local":             # the "cluster" of the embedded backend: other jobs' folders
        zones += [config.cluster_root, config.hpc_env.get("workspace"), config.hpc_env.get("scripts")]
    if config.remote:
        zones += [config.remote.key_file, config.remote.known_hosts, config.remote.ssh_config]
    return _resolved(tuple(config.allowed_input_roots), tuple(config.allowed_output_roots),
                     tuple(str(zone) for zone in zones if zone))


@lru_cache(maxsize=16)
def _resolved(input_roots: tuple[Path, ...], output_roots: tuple[Path, ...], zones: tuple[str, ...]) -> Boundaries:
    """Resolved once per distinct setting: every job of a cycle is checked against them."""
    real = lambda paths: tuple(Path(os.path.realpath(path)) for path in paths)  # noqa: E731
    files = set()
    for zone in zones:
        try:
            info = os.stat(zone)
        except OSError:
            continue
        if stat.S_ISREG(info.st_mode):
            files.add((info.st_dev, info.st_ino))
    return Boundaries(real(input_roots), real(output_roots), SYSTEM_ZONES + real(zones), frozenset(files))


def startup_warnings(config: Config) -> list[str]:
    """What an operator should hear when the daemon could do more for a job author than
    intended: without roots, a job reads and writes wherever this account can."""
    unset = [name for name in ("allowed_input_roots", "allowed_output_roots") if not getattr(config, name)]
    if not unset:
        return []
    reasons = []
    if os.geteuid() == 0:
        reasons.append("runs as root")
    if config.backend == "ssh":
        reasons.append("holds the cluster's SSH key")
    if not reasons:
        return []
    return [f"{' and '.join(unset)} unset while this daemon {' and '.join(reasons)}: any job author can have "
            f"it read and write any file this account can; set them (see the README's Security model)"]
