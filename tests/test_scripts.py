"""scripts/demo.sh on a machine whose python3 cannot make a virtual environment (a fresh
Debian or Ubuntu without python3-venv): it says what to install and leaves nothing behind."""
from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_demo_sh_says_what_to_install_when_venv_is_missing(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\nif [ "$1 $2" = "-m venv" ]; then mkdir -p "$3/bin"; '
                                  'echo "ensurepip is not available" >&2; exit 1; fi\nexec /usr/bin/python3 "$@"\n')
    (fake / "python3").chmod(0o755)
    venv = tmp_path / "venv"
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "DBR_VENV": str(venv)})
    assert done.returncode == 1
    assert "apt-get install python3-venv" in done.stderr and done.stderr.count("\n") == 1, done.stderr
    assert not venv.exists()                 # a half-made venv would be taken for a working one next time


def test_demo_sh_refuses_a_python_older_than_3_9(tmp_path):
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python3").write_text('#!/bin/sh\ncase "$*" in *version_info*) exit 1;; -V) echo "Python 3.8.10";; '
                                  'esac\nexit 0\n')
    (fake / "python3").chmod(0o755)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], capture_output=True, text=True, timeout=60,
                          env={"PATH": f"{fake}:/usr/bin:/bin", "HOME": str(tmp_path), "DBR_VENV": str(tmp_path / "v")})
    assert done.returncode == 1 and "needs Python 3.9 or newer; python3 is Python 3.8.10" in done.stderr
