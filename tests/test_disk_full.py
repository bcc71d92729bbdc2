"""A full disk is one clear line and leaves nothing behind, whichever writer hit it (torch, onnx, GDAL).

The tests write into a 256 kB tmpfs; they need root to mount it and skip (saying so) elsewhere.
"""

from __future__ import annotations

from geoseg.models.demo import DEMO_MODEL

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SAMPLE

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small tmpfs needs root")


@pytest.fixture
def full_disk(tmp_path: Path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()[:100]}")
    try:
        (mnt / "ballast").write_bytes(b"\0" * 200_000)  # about 50 kB left
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


@pytest.fixture(scope="module")
def classes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("classes")
    r = _geoseg("infer", str(SAMPLE / "field.tif"), "-o", str(out), "-q")
    assert r.returncode == 0, r.stderr
    return out / "field_classes.tif"


def _geoseg(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "geoseg", *args], capture_output=True, text=True,
                          cwd=SAMPLE.parent)


@pytest.mark.parametrize("case", ["model_init", "model_export", "vectorize_gpkg", "vectorize_shp"])
def test_a_full_disk_is_one_line_and_leaves_nothing(full_disk: Path, classes: Path, case: str) -> None:
    out = {"model_init": "m.pt", "model_export": "m.onnx", "vectorize_gpkg": "v.gpkg", "vectorize_shp": "v.shp"}[case]
    dest = full_disk / out
    argv = {"model_init": ["model", "init", "-o", str(dest), "--base-channels", "64"],
            "model_export": ["model", "export", str(DEMO_MODEL), "-o", str(dest)],
            "vectorize_gpkg": ["vectorize", str(classes), "-o", str(dest), "-q"],
            "vectorize_shp": ["vectorize", str(classes), "-o", str(dest), "-q"]}[case]
    r = _geoseg(*argv)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip() and not ln.startswith("warning:")]
    assert r.returncode != 0
    assert len(lines) == 1 and lines[0].startswith("error:") and "the disk is full" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and "unexpected" not in r.stderr
    assert sorted(p.name for p in full_disk.iterdir()) == ["ballast"]
