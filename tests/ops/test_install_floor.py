"""The install floor: ``pip install -c requirements/constraints.txt '.[all]'`` (what the image
does) works on the oldest Python ``requires-python`` admits that we have, Debian 12's own
python3 (3.11.2: below gcloud-aio-auth 5.6.0's 3.11.3, so the constraints pin 5.5.1 there),
and every storage driver then imports and builds."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet
from packaging.version import Version

from tests.plugins.daemon import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

SYSTEM_PYTHON = Path("/usr/bin/python3")
#: Builds each driver's store from a minimal config (no network: stores connect on start).
SMOKE = """
import sys
import gcloud.aio.auth
from importlib.metadata import version
from tusd_py.config import load_config
from tusd_py.storage.registry import build_store
import tusd_py
assert tusd_py.__file__.startswith(sys.prefix), tusd_py.__file__
drivers = {
    "local": {"TUSD_STORAGE__DATA_DIR": "./data"},
    "memory": {},
    "s3": {"TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__REGION": "us-east-1"},
    "gcs": {"TUSD_STORAGE__BUCKET": "b", "TUSD_STORAGE__ENDPOINT_URL": "http://127.0.0.1:9"},
    "azure": {"TUSD_STORAGE__CONTAINER": "c", "TUSD_STORAGE__CONNECTION_STRING":
              "DefaultEndpointsProtocol=http;AccountName=a;AccountKey=a2V5;"
              "BlobEndpoint=http://127.0.0.1:9/a;"},
}
for driver, env in drivers.items():
    store = build_store(load_config(None, env={"TUSD_STORAGE__DRIVER": driver, **env}).storage)
    print(driver, type(store).__name__)
print("gcloud-aio-auth", version("gcloud-aio-auth"))
print("python", sys.version.split()[0])
"""


def test_all_extras_install_on_debian_python(tmp_path: Path) -> None:
    """A fresh venv of /usr/bin/python3, ``.[all]`` from a copy of the sources (as the
    Dockerfile copies them) with the constraints; then each driver is built. About 30 s
    with pip's cache warm (the wheels are those of the test venv)."""
    if not SYSTEM_PYTHON.exists():
        pytest.skip("no /usr/bin/python3 (Debian's python3) on this machine")
    floor = SpecifierSet(tomllib.loads((ROOT / "pyproject.toml").read_text())
                         ["project"]["requires-python"])
    found = subprocess.run([str(SYSTEM_PYTHON), "-c", "import platform; print(platform.python_version())"],
                           capture_output=True, text=True, check=True).stdout.strip()
    assert Version(found) in floor, (found, floor)
    assert Version(found) <= Version(f"{sys.version_info.major}.{sys.version_info.minor}."
                                     f"{sys.version_info.micro}")

    source = tmp_path / "src"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    shutil.copytree(ROOT / "tusd_py", source / "tusd_py",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    venv = tmp_path / "venv"
    made = subprocess.run([str(SYSTEM_PYTHON), "-m", "venv", str(venv)], capture_output=True,
                          text=True, timeout=120)
    assert made.returncode == 0, made.stderr  # Debian: needs python3-venv (scripts/test.sh)
    install = subprocess.run(
        [str(venv / "bin/python"), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "-c", str(ROOT / "requirements/constraints.txt"), f"{source}[all]"],
        capture_output=True, text=True, timeout=480, cwd=tmp_path)
    assert install.returncode == 0, install.stdout[-3000:] + install.stderr[-3000:]

    smoke = subprocess.run([str(venv / "bin/python"), "-c", SMOKE], capture_output=True,
                           text=True, timeout=60, cwd=tmp_path)
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in smoke.stdout.splitlines())
    assert lines == {"local": "LocalStore", "memory": "MemoryStore", "s3": "S3Store",
                     "gcs": "GCSStore", "azure": "AzureStore", "python": found,
                     "gcloud-aio-auth": "5.5.1" if Version(found) < Version("3.11.3") else "5.6.0"}
