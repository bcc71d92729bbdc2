"""The QGIS plugin's parts that need no QGIS: its choices against geoseg's registries, the zip and
the profile install, and the runner (command resolution, version check, progress, cancel and resume)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import ROOT, SAMPLE
from geoseg.models.demo import DEMO_MODEL
from geoseg.qgis_plugin import options, runner

PLUGIN = ROOT / "geoseg" / "qgis_plugin"


def test_plugin_choices_match_geoseg() -> None:
    from geoseg.blend import BLEND_WINDOWS
    from geoseg.cli.infer import ProbDtype, Tta, VectorFormat
    from geoseg.export import EXTENSIONS
    from geoseg.architectures import ARCHITECTURES

    assert options.BLEND == list(BLEND_WINDOWS)
    assert options.TTA == [t.value for t in Tta]
    assert options.PROBABILITY_DTYPE == [p.value for p in ProbDtype]
    assert options.ARCH == list(ARCHITECTURES)
    assert options.VECTOR_EXTENSIONS == [v.value for v in VectorFormat] == [e.lstrip(".") for e in EXTENSIONS.values()]


def test_plugin_never_imports_geoseg() -> None:
    """QGIS's Python has no torch: the plugin talks to geoseg only through its command line."""
    for py in PLUGIN.glob("*.py"):
        for node in ast.walk(ast.parse(py.read_text())):
            if isinstance(node, ast.Import):
                assert not any(a.name.split(".")[0] == "geoseg" for a in node.names), py
            if isinstance(node, ast.ImportFrom) and node.level == 0:
                assert (node.module or "").split(".")[0] != "geoseg", py


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "geoseg", *args], capture_output=True, text=True, cwd=ROOT)


def test_build_zip(tmp_path) -> None:
    out = tmp_path / "p.zip"
    r = _cli("qgis", "build", "-o", str(out))
    assert r.returncode == 0, r.stderr
    names = zipfile.ZipFile(out).namelist()
    expected = {f"geoseg_qgis/{p.name}" for p in PLUGIN.iterdir() if p.is_file() and p.suffix != ".pyc"}
    assert expected | {"geoseg_qgis/LICENSE"} == set(names)
    meta = zipfile.ZipFile(out).read("geoseg_qgis/metadata.txt").decode()
    from geoseg import __version__

    assert "hasProcessingProvider=yes" in meta and "qgisMinimumVersion=3.22" in meta
    assert f"\nversion={__version__}\n" in meta
    r = _cli("qgis", "build", "-o", str(out))  # never replaced unasked
    assert r.returncode != 0 and r.stderr.count("\n") == 1 and "--overwrite" in r.stderr


def test_install_into_a_profile(tmp_path) -> None:
    from geoseg.qgis_package import install

    root = tmp_path / "profiles"
    root.mkdir()
    ini = root / "work" / "QGIS" / "QGIS3.ini"
    ini.parent.mkdir(parents=True)
    ini.write_text("[qgis]\nlocale=de\n\n[PythonPlugins]\nother=true\n")
    target = install(profile="work", profiles_path=root, command="/opt/env/bin/geoseg")
    assert target == root / "work" / "python" / "plugins" / "geoseg_qgis"
    assert (target / "provider.py").read_text() == (PLUGIN / "provider.py").read_text()
    install(profile="work", profiles_path=root, command='/opt/geo seg/a\\b"c/geoseg')  # again: replaced, not doubled
    text = ini.read_text()
    assert text.count("geoseg_qgis=true") == 1 and "other=true" in text and "locale=de" in text
    assert text.count("GEOSEG_COMMAND") == 1
    assert 'Configuration\\GEOSEG_COMMAND="/opt/geo seg/a\\\\b\\"c/geoseg"' in text  # Qt's quoted INI value
    r = _cli("qgis", "install", "--profiles-path", str(tmp_path / "missing"))
    assert r.returncode != 0 and "profiles folder does not exist" in r.stderr and r.stderr.count("\n") == 1


def test_install_refuses_a_foreign_zip(tmp_path) -> None:
    from geoseg.errors import UsageError
    from geoseg.qgis_package import install

    z = tmp_path / "x.zip"
    with zipfile.ZipFile(z, "w") as f:
        f.writestr("../evil.py", "")
    (tmp_path / "profiles").mkdir()
    with pytest.raises(UsageError, match="not a geoseg plugin zip"):
        install(profiles_path=tmp_path / "profiles", zip_path=z)
    assert not (tmp_path / "evil.py").exists()
    assert list((tmp_path / "profiles" / "default" / "python" / "plugins").iterdir()) == []  # nothing left behind


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body + "\n")
    path.chmod(0o755)
    return str(path)


def test_command_resolution_and_version_check(tmp_path, monkeypatch) -> None:
    with pytest.raises(runner.GeosegCommandError, match="does not exist or is not executable"):
        runner.resolve_command(str(tmp_path / "nope"))
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.delenv("GEOSEG_COMMAND", raising=False)
    with pytest.raises(runner.GeosegCommandError, match="geoseg command not found"):
        runner.resolve_command("")
    py = _script(tmp_path / "python3", f'exec {sys.executable} "$@"')
    assert runner.resolve_command(py) == [py, "-P", "-m", "geoseg"]
    # a folder named geoseg where QGIS runs (a project folder) does not shadow the installed package
    project = tmp_path / "project"
    (project / "geoseg").mkdir(parents=True)
    (project / "geoseg" / "__init__.py").write_text("raise SystemExit('shadowed')\n")
    r = subprocess.run([*runner.resolve_command(py), "--version"], capture_output=True, text=True, cwd=project,
                       env={**os.environ, "PYTHONPATH": str(ROOT)}, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("geoseg "), r.stderr
    old = _script(tmp_path / "geoseg", 'echo "geoseg 0.0.9"')
    with pytest.raises(runner.GeosegCommandError, match="too old"):
        runner.check_version([old])
    not_geoseg = _script(tmp_path / "other", "echo hello")
    with pytest.raises(runner.GeosegCommandError, match="is it geoseg's command"):
        runner.check_version([not_geoseg])


def _this_geoseg(tmp_path: Path) -> list[str]:
    return [_script(tmp_path / "geoseg", f'PYTHONPATH={ROOT} exec {sys.executable} -m geoseg "$@"')]


def test_runner_reports_progress_and_cancel_keeps_a_resumable_run(tmp_path) -> None:
    """Cancel (SIGTERM) during inference removes nothing a resumed run needs; --resume then finishes
    with the same result as a run never interrupted."""
    cmd = _this_geoseg(tmp_path)
    assert runner.check_version(cmd)
    # field.tif mirrored 4 x 4: long enough (~2 s) that the cancel, checked every POLL_SECONDS, lands
    # during inference even with a fast CPU path (field.tif alone took ~0.1 s and could finish first)
    src = tmp_path / "field.tif"
    with rasterio.open(SAMPLE / "field.tif") as ds:
        data, profile = ds.read(), ds.profile
    row = np.concatenate([data, data[:, :, ::-1]] * 2, axis=2)
    big = np.concatenate([row, row[:, ::-1]] * 2, axis=1)
    with rasterio.open(src, "w", **dict(profile, height=big.shape[1], width=big.shape[2])) as o:
        o.write(big)
    args = ["infer", str(src), "-o", str(tmp_path / "out"), "--no-vector", "--tile-size", "64",
            "--overlap", "16", "--checkpoint-seconds", "0"]
    seen: list[tuple[float | None, str]] = []
    messages: list[str] = []
    code, canceled = runner.run(cmd, args, on_progress=lambda f, s: seen.append((f, s)), on_message=messages.append,
                                is_canceled=lambda: len(seen) >= 1)
    assert canceled and code != 0
    assert seen[0][1] == "tiles" and 0 < seen[-1][0] < 1
    assert any("--resume" in m for m in messages)  # geoseg says how to continue
    assert not (tmp_path / "out" / "field_classes.tif").exists()
    code, canceled = runner.run(cmd, [*args, "--resume"], on_progress=lambda f, s: None, on_message=messages.append,
                                is_canceled=lambda: False)
    assert (code, canceled) == (0, False), messages[-5:]
    assert any(m.startswith("resumed:") for m in messages)
    import geoseg

    whole = geoseg.predict_raster(src, DEMO_MODEL, tmp_path / "whole.tif",
                                  tile_size=64, overlap=16)  # the CLI's defaults otherwise
    with rasterio.open(tmp_path / "out" / "field_classes.tif") as a, rasterio.open(whole.classes_path) as b:
        assert np.array_equal(a.read(), b.read())
