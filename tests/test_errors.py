"""Errors and warnings speak the library's words (parameter names) in Python, the CLI's (flags) on the command line."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest

from conftest import ROOT
from geoseg.errors import UsageError, flag, for_cli
from geoseg.train.config import TrainConfig

#: a parameter marked in a message (not ``literal`` docstring text, not :func:`roles`)
_MARK = re.compile(r"(?<![`:\w])`([a-z][a-z0-9_]*)(=True)?`(?!`)")

#: library parameters that no command sets, so their flag is named in no --help
_LIBRARY_ONLY = {"precision"}


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    from geoseg.cli import main

    code = 0
    try:
        main(args)
    except SystemExit as e:
        code = int(e.code or 0)
    return code, capsys.readouterr().err


def _cli_flags() -> set[str]:
    import typer

    from geoseg.cli import app

    found: set[str] = set()

    def walk(cmd: object) -> None:
        for p in getattr(cmd, "params", []):
            found.update(o for o in p.opts if o.startswith("--"))
        for sub in getattr(cmd, "commands", {}).values():
            walk(sub)

    walk(typer.main.get_command(app))
    return found


def test_for_cli_puts_flags_in_place_of_marked_parameters() -> None:
    assert for_cli("`tile_size` 60 must be a multiple of 16") == "--tile-size 60 must be a multiple of 16"
    assert for_cli("no input image; pass `images`") == "no input image; pass --image"  # the flag differs
    assert for_cli("x.tif: file exists; pass `overwrite=True` to replace it") == \
        "x.tif: file exists; pass --overwrite to replace it"
    assert for_cli(UsageError("`max_memory_mb` 10 MB is too small")) == "--max-memory 10 MB is too small"
    # unmarked text, code in backticks and text already in the CLI's words stay as they are
    for text in ("tile size 60 is too small", "a script without `if __name__ == '__main__':`", "--epochs 0"):
        assert for_cli(text) == text
    assert for_cli(for_cli("`epochs` 0")) == "--epochs 0"
    assert flag("ignore_values") == "--ignore-value" and flag("val_split") == "--val-split"


def test_the_same_error_reads_as_parameters_in_python_and_as_flags_on_the_command_line(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(UsageError) as e:
        TrainConfig(images=["a.tif"], labels="l.tif", cv=1).validate()
    assert str(e.value) == "`cv` 1 is out of range" and "--" not in str(e.value)
    with pytest.warns(UserWarning) as w:
        TrainConfig(images=["a.tif"], labels="l.tif", arch="tempcnn", depth=2, tile_size=16).validate()
    assert str(w[0].message) == "`depth` 2 applies to `arch` unet only, not `arch` tempcnn; ignored"

    pytest.importorskip("torch")  # geoseg train imports the training loop
    out = tmp_path / "m.pt"
    code, err = _cli(["train", "-i", "a.tif", "--labels", "l.tif", "-o", str(out), "--cv", "1"], capsys)
    assert code == 2 and err.strip() == "error: --cv 1 is out of range"
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        code, err = _cli(["train", "-i", str(tmp_path / "missing.tif"), "--labels", "l.tif", "-o", str(out),
                          "--arch", "tempcnn", "--depth", "2", "--tile-size", "16"], capsys)
    assert code != 0
    assert "warning: --depth 2 applies to --arch unet only, not --arch tempcnn; ignored" in err
    assert "`" not in err and not out.exists()


def test_every_marked_parameter_is_a_flag_of_the_cli() -> None:
    """A name marked in a library message renders to a flag some command has (a typo or a renamed
    option would otherwise show a flag that does not exist)."""
    marked: dict[str, str] = {}
    for p in sorted((ROOT / "geoseg").rglob("*.py")):
        if {"cli", "qgis_plugin"} & set(p.relative_to(ROOT / "geoseg").parts):
            continue
        for m in _MARK.finditer(p.read_text(encoding="utf-8")):
            marked.setdefault(m[1], str(p.relative_to(ROOT)))
    assert {"epochs", "images", "overwrite", "tile_size"} <= set(marked)  # the scan sees the messages
    flags = _cli_flags()
    unknown = {name: where for name, where in marked.items() if flag(name) not in flags and name not in _LIBRARY_ONLY}
    assert not unknown, unknown
