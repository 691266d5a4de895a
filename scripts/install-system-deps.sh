#!/usr/bin/env bash
# Install the system programs the real-cluster tests run (Debian 12, as root):
# Slurm (slurmctld, slurmd, sbatch), munge, Grid Engine (sge_qmaster, sge_execd, qsub), OpenSSH
# server and rsync; systemd's systemd-analyze, which checks the shipped unit file.
# Idempotent: when every binary is already present it exits at once (apt is slow).
set -euo pipefail

needed=(sshd rsync slurmctld slurmd sbatch munged sge_qmaster sge_execd qsub systemd-analyze)
missing=()
for prog in "${needed[@]}"; do
    if ! command -v "$prog" >/dev/null 2>&1 \
        && [ ! -x "/usr/sbin/$prog" ] && [ ! -x "/usr/bin/$prog" ] && [ ! -x "/usr/lib/gridengine/$prog" ]; then
        missing+=("$prog")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-system-deps: all present (${needed[*]})"
    exit 0
fi

echo "install-system-deps: missing ${missing[*]}; installing packages"
if [ "$(id -u)" -ne 0 ]; then
    echo "install-system-deps: must run as root (apt-get install)" >&2
    exit 1
fi
export DEBIAN_FRONTEND=noninteractive
# Grid Engine's packages ask for a cell and a master host; the tests make their own cells
# (tests/gridengine.py), so the packages are told not to configure one.
debconf-set-selections <<'SELECTIONS'
gridengine-common shared/gridengineconfig boolean false
gridengine-common shared/gridenginecell string default
gridengine-common shared/gridenginesqmaster string localhost
SELECTIONS
apt-get update
apt-get install -y slurm-wlm munge openssh-server rsync gridengine-master gridengine-exec gridengine-client systemd
