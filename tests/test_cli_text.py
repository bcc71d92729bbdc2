"""User text reaches the terminal as it is: no markup parsing, no escape sequences (issue 21)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT


def _cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run([sys.executable, "-m", "geoseg", *args], cwd=cwd, capture_output=True)


def test_markup_and_escape_codes_in_class_names_are_shown_literally(tmp_path: Path) -> None:
    from geoseg.models.init import init_checkpoint
    from geoseg.models import read_meta

    names = ["[red]crop[/]", "\x1b[31mevil\x1b[0m", "[/] broken"]
    ckpt = init_checkpoint(tmp_path / "m.pt", bands=3, classes=3, base_channels=4, depth=1, class_names=names)
    assert [c.name for c in read_meta(ckpt).schema.classes] == names
    r = _cli("model", "info", str(ckpt))
    assert r.returncode == 0, r.stderr.decode()[-800:]
    text = r.stdout.decode()
    assert b"\x1b[31m" not in r.stdout
    assert "[red]crop[/]" in text and "[/] broken" in text and "\\x1b[31mevil" in text


def test_markup_in_a_file_name_gives_the_one_line_error(tmp_path: Path) -> None:
    bad = tmp_path / "x[/]\x1b[2J.tif"
    r = _cli("infer", str(bad), "-o", str(tmp_path / "o"))
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "Traceback" not in err and "unexpected" not in err
    assert "x[/]\\x1b[2J.tif: file not found" in err
    assert b"\x1b[2J" not in r.stderr


def test_output_directories_are_created_and_removed_again_when_a_command_fails(tmp_path: Path) -> None:
    """evaluate -o refused a missing DIR where infer -o creates it; a refused infer left an empty -o (issue 21)."""
    new = tmp_path / "a" / "b"
    r = _cli("infer", str(tmp_path / "missing.tif"), "-o", str(new))
    assert r.returncode != 0 and b"file not found" in r.stderr
    assert not (tmp_path / "a").exists()  # nothing was written: the directories it made are gone
    r = _cli("evaluate", str(tmp_path / "missing.tif"), str(tmp_path / "t.tif"), "-o", str(new))
    assert r.returncode != 0 and b"does not exist" not in r.stderr and b"file not found" in r.stderr
    assert not (tmp_path / "a").exists()


def test_evaluate_creates_its_output_directory(tmp_path: Path, make_raster) -> None:
    import numpy as np

    a = (np.arange(400).reshape(20, 20) % 3).astype(np.uint8)
    pred = make_raster(a, name="pred.tif", nodata=255)
    truth = make_raster(a, name="truth.tif")
    new = tmp_path / "x" / "y"
    r = _cli("evaluate", str(pred), str(truth), "-o", str(new), "--ignore-value", "255")
    assert r.returncode == 0, r.stderr.decode()[-500:]
    assert (new / "pred_metrics.csv").exists()


@pytest.mark.parametrize("command", [["infer"], ["vectorize"], ["train"], ["model", "import"]])
def test_help_at_80_columns_shows_no_type_placeholders_that_read_like_values(command):
    """Flags had a `<bool>` type (it reads like a value to type) and repeatable paths `<list[Path]>`."""
    import os
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-m", "geoseg", *command, "--help"], capture_output=True, text=True,
                       env={**os.environ, "COLUMNS": "80", "NO_COLOR": "1", "TERM": "dumb"})
    assert r.returncode == 0, r.stderr
    assert "<bool>" not in r.stdout and "list[" not in r.stdout and " range>" not in r.stdout
    assert max(len(line) for line in r.stdout.splitlines()) <= 80
