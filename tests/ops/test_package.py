"""The distributions carry the demo page: an sdist made from the Docker build context,
and the wheel pip builds from that sdist (as the image's ``pip install`` does), both
contain tusd_py/web/index.html and uppy.single.js, byte for byte."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from tests.plugins.daemon import ROOT
from tusd_py.web import BUNDLE, WEB_DIR

WEB_FILES = ("index.html", BUNDLE)


def build_context(dest: Path) -> None:
    """The files the Dockerfile's build stage copies from the context (its COPY lines)."""
    text = (ROOT / "Dockerfile").read_text()
    build_stage = text.split("\nFROM ", 2)[1]
    for line in re.findall(r"(?m)^COPY (?!--from)(.+)$", build_stage):
        *sources, _ = line.split()
        for source in sources:
            src, target = ROOT / source, dest / source
            target.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, target, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
            else:
                shutil.copy2(src, target)


@pytest.mark.slow
def test_sdist_and_wheel_contain_the_demo_files(tmp_path: Path) -> None:
    context, dist = tmp_path / "context", tmp_path / "dist"
    build_context(context)
    assert (context / "tusd_py/web" / BUNDLE).is_file()
    # sdist with the setuptools in the venv (offline, ~1 s) ...
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from setuptools import build_meta as b; "
         "print(b.build_sdist(sys.argv[1]))", str(dist)],
        cwd=context, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    sdist = dist / proc.stdout.split()[-1]
    with tarfile.open(sdist) as tar:
        root = tar.getnames()[0].split("/")[0]
        for name in WEB_FILES:
            member = tar.extractfile(f"{root}/tusd_py/web/{name}")
            assert member is not None and member.read() == (WEB_DIR / name).read_bytes(), name
    # ... and the wheel pip builds from it in an isolated environment (setuptools from
    # pyproject's build-system, as in the image build).
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist),
                           str(sdist)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    [wheel] = dist.glob("tusd_py-*.whl")
    with zipfile.ZipFile(wheel) as whl:
        for name in WEB_FILES:
            assert whl.read(f"tusd_py/web/{name}") == (WEB_DIR / name).read_bytes(), name
        assert "tusd_py/py.typed" in whl.namelist()
