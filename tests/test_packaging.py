"""The package installed the ordinary way carries on_hpc/ and templates/ (it deploys them)."""
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_wheel_ships_on_hpc_and_templates(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                    "--wheel-dir", str(tmp_path), str(ROOT)], check=True, capture_output=True)
    wheel, = tmp_path.glob("dropbox_runner-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for on_hpc in (ROOT / "on_hpc").glob("*.py"):
        assert f"dropbox_runner/on_hpc/{on_hpc.name}" in names
    for template in (ROOT / "templates").glob("*.template"):
        assert f"dropbox_runner/templates/{template.name}" in names
    assert not any(name.startswith(("tests/", "on_hpc/")) for name in names)
