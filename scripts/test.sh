#!/usr/bin/env bash
# The one command that installs what the tests need and runs them (.ci/run calls it too).
# Debian packages: sshd, rsync, Slurm, munge and Grid Engine for the real-cluster tests, python3-venv.
# Python: a virtual environment (.venv-test in the repository, or $DBR_VENV; PEP 668 refuses a
# bare pip install), the project installed into it the ordinary way (not editable: the
# tests import the installed package), with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
. scripts/venv.sh
venv=${DBR_VENV:-.venv-test}
if ! ensure_venv "$venv" 2>/dev/null; then
    if [ "$(id -u)" -ne 0 ]; then
        ensure_venv "$venv"     # says what to install
        exit 1
    fi
    echo "test.sh: installing python3-venv"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >/dev/null
    apt-get install -y -q python3-venv >/dev/null
    ensure_venv "$venv"
fi
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check '.[test]'
# Lint and the cluster side's Python 3.8 floor fail the test command like a failing test.
"$venv/bin/python" -m ruff check .
"$venv/bin/vermin" --quiet --no-tips --violations --eval-annotations -t=3.8- on_hpc
# Never import the source tree from the current folder: the tests use the installed package.
export PYTHONSAFEPATH=1
exec "$venv/bin/python" -m pytest "$@"
