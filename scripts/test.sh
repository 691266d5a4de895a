#!/usr/bin/env bash
# The one command that installs what the tests need and runs them (.ci/run calls it too).
# Debian packages: sshd, rsync, Slurm, munge and Grid Engine for the real-cluster tests.
# Python: the project installed the ordinary way (not editable), with its test extras.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-system-deps.sh
python3 -m pip install --quiet --disable-pip-version-check '.[test]'
# Lint and the cluster side's Python 3.8 floor fail the test command like a failing test.
python3 -m ruff check .
python3 -c "import sys, vermin; sys.exit(vermin.main())" --quiet --no-tips --violations --eval-annotations -t=3.8- on_hpc
# Never import the source tree from the current folder: the tests use the installed package.
export PYTHONSAFEPATH=1
exec python3 -m pytest "$@"
