#!/usr/bin/env bash
# The README's first command: install dropbox-runner into a virtual environment (.venv in
# the repository, or $DBR_VENV) with the distribution's python3, then run the demo.
# Arguments go to `dropbox-runner demo` (--dir DIR, --jobs N).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/venv.sh
venv=${DBR_VENV:-.venv}
ensure_venv "$venv"
echo "installing dropbox-runner into $venv ..."
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check .
"$venv/bin/dropbox-runner" demo "$@"
echo
echo "dropbox-runner is installed in $venv: run $venv/bin/dropbox-runner --help (or: . $venv/bin/activate)"
