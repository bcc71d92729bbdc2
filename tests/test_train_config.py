"""TrainConfig: files, precedence, validation (torch-free)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from geoseg.errors import UsageError
from geoseg.train.config import TrainConfig, parse_class_map


def test_yaml_and_toml_give_the_same_config(tmp_path: Path) -> None:
    y = tmp_path / "c.yaml"
    y.write_text("image: [a.tif, b.tif]\nlabels: l.tif\noutput: m.pt\ntile-size: 32\ndepth: 2\n"
                 "class_map: {'3': grass, '4': grass}\ndice: true\nignore_values: [0, 9]\n")
    t = tmp_path / "c.toml"
    t.write_text('[train]\nimages = ["a.tif", "b.tif"]\nlabels = "l.tif"\noutput = "m.pt"\ntile_size = 32\n'
                 'depth = 2\ndice = true\nignore_values = [0, 9]\n[train.class_map]\n"3" = "grass"\n"4" = "grass"\n')
    a = TrainConfig.merge(TrainConfig.from_file(y), {})
    b = TrainConfig.merge(TrainConfig.from_file(t), {})
    assert a == b
    assert a.images == ["a.tif", "b.tif"] and a.tile_size == 32 and a.class_map == {"3": "grass", "4": "grass"}
    assert a.dice is True and a.ignore_values == [0, 9]


def test_command_line_overrides_file(tmp_path: Path) -> None:
    y = tmp_path / "c.yml"
    y.write_text("images: a.tif\nlabels: l.tif\nepochs: 5\nlr: 0.01\n")
    cfg = TrainConfig.merge(TrainConfig.from_file(y), {"epochs": 7, "lr": None, "output": "x.pt"})
    assert cfg.epochs == 7 and cfg.lr == 0.01 and cfg.output == "x.pt"
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg  # round trip through the checkpoint dict


@pytest.mark.parametrize("text,match", [
    ("images: a.tif\nlabels: l.tif\nepochz: 3\n", "unknown option 'epochz'"),
    ("images: a.tif\nlabels: l.tif\nepochs: many\n", "invalid value"),
    ("images: a.tif\n", "exactly one of `labels`"),
    ("images: a.tif\nvector_labels: p.gpkg\n", "needs `class_field`"),
    ("images: a.tif\nlabels: l.tif\narch: unet\ntile_size: 60\ndepth: 3\n", "multiple of 8"),
    ("images: a.tif\nlabels: l.tif\nval_split: 1.5\n", "`val_split`"),
    ("- a\n- b\n", "mapping"),
])
def test_bad_configs_are_one_clear_error(tmp_path: Path, text: str, match: str) -> None:
    p = tmp_path / "bad.yaml"
    p.write_text(text)
    with pytest.raises(UsageError, match=match):
        TrainConfig.merge(TrainConfig.from_file(p), {})


def test_unknown_suffix_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "c.ini"
    p.write_text("x=1")
    with pytest.raises(UsageError, match="yaml"):
        TrainConfig.from_file(p)
    with pytest.raises(UsageError, match="not found"):
        TrainConfig.from_file(tmp_path / "nope.yaml")


def test_parse_class_map() -> None:
    assert parse_class_map(["3=grass,4=grass", "0=ignore"]) == {"3": "grass", "4": "grass", "0": "ignore"}
    with pytest.raises(UsageError):
        parse_class_map(["grass"])


def test_config_module_is_torch_free() -> None:
    import subprocess

    code = "import sys, geoseg.train, geoseg.train.config, geoseg.evaluate, geoseg.metrics, geoseg.cli; " \
           "print('torch' in sys.modules, 'torchgeo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False False"


def test_a_class_called_ignore_is_a_class_and_one_class_is_refused():
    """A class literally named 'ignore' was dropped without a word; one class gave 'val macro IoU 1.000' (issue 21)."""
    import pytest

    from geoseg.errors import LabelError
    from geoseg.train.data import build_schema

    schema, lut = build_schema(["crop", "ignore", "water"], {}, numeric_ids=False)
    assert [c.name for c in schema.classes] == ["crop", "ignore", "water"]
    with pytest.warns(UserWarning, match="`class_map` drops the labels water"):
        schema, lut = build_schema(["crop", "ignore", "water"], {"water": "ignore"}, numeric_ids=False)
    assert [c.name for c in schema.classes] == ["crop", "ignore"] and "water" not in lut
    with pytest.raises(LabelError, match="one class only"):
        build_schema(["crop"], {}, numeric_ids=False)
    with pytest.raises(LabelError, match="one class only"), pytest.warns(UserWarning):
        build_schema(["3", "4"], {"4": ""}, numeric_ids=True)


def test_architecture_options_come_from_the_table_and_others_are_said_to_be_ignored() -> None:
    """Defaults are the table's; an option of another architecture in a config is ignored with a warning
    (configs are shared between architectures); --context with a U-Net stays an error."""
    from geoseg.architectures import ARCHITECTURES

    cfg = TrainConfig(images=["a.tif"], labels="l.tif", arch="smp-fpn")
    assert cfg.arch_args == ARCHITECTURES["smp-fpn"].defaults
    with pytest.warns(UserWarning, match="`depth` 2 applies to `arch` unet only, not `arch` tempcnn; ignored"):
        args = TrainConfig(images=["a.tif"], labels="l.tif", arch="tempcnn", depth=2, tile_size=16).validate().arch_args
    assert "depth" not in args
    with pytest.raises(UsageError, match="`context` 3 applies to `arch` tempcnn only"):
        TrainConfig(images=["a.tif"], labels="l.tif", arch="unet", context=3).validate()


def test_arch_auto_picks_from_the_labels_and_bands_and_says_so() -> None:
    """--arch auto (the default): polygons or points -> tempcnn on a table of labelled pixels (one date of all
    bands below 20 bands); a label raster on a time series -> the same with one band a date; a label raster
    on a few bands -> unet on chips; an explicit choice is kept; unet options are checked once unet is picked."""
    from geoseg.train.auto import resolve

    vec = TrainConfig(images=["a.tif"], vector_labels="p.gpkg", class_field="c").validate()
    assert vec.arch == "auto" and vec.batch_size is None and vec.jitter is None
    cfg, line = resolve(vec, 7)
    assert (cfg.arch, cfg.sampling, cfg.arch_args["bands_per_date"], cfg.batch_size, cfg.jitter, cfg.val_split,
            cfg.class_balance, cfg.arch_args["members"]) == ("tempcnn", "pixels", 7, 256, 0.05, 0.0, 0.5, 3)
    assert cfg.pixels and line.startswith("--arch auto: tempcnn (bands_per_date 7, members 3)")
    assert "polygons or points" in line
    series, line = resolve(TrainConfig(images=["a.tif"], labels="l.tif"), 68)
    assert (series.arch, series.sampling, series.arch_args["bands_per_date"], series.class_balance,
            series.arch_args["context"]) == ("tempcnn", "pixels", 1, 1.0, 7)
    assert series.block_size == 32 and "time series" in line and "7 x 7 neighbourhood" in line
    alone, line = resolve(TrainConfig(images=["a.tif"], labels="l.tif", context=1), 68)
    assert (alone.sampling, alone.arch_args["context"]) == ("pixels", 1) and "neighbourhood" not in line
    dense, line = resolve(TrainConfig(images=["a.tif"], labels="l.tif"), 4)
    assert (dense.arch, dense.sampling, dense.batch_size, dense.jitter, dense.val_split, dense.class_balance) == \
        ("unet", "chips", 8, 0.0, 0.2, None)
    assert dense.block_size == 128 and "U-Net" in line
    kept, line = resolve(TrainConfig(images=["a.tif"], vector_labels="p.gpkg", class_field="c", arch="unet"), 7)
    assert (kept.arch, kept.sampling, line) == ("unet", "chips", "")
    chips, _ = resolve(TrainConfig(images=["a.tif"], vector_labels="p.gpkg", class_field="c", arch="tempcnn",
                                   context=3, tile_size=16), 7)
    assert chips.sampling == "chips" and chips.arch_args["members"] == 1  # a neighbourhood needs chips
    one, _ = resolve(TrainConfig(images=["a.tif"], vector_labels="p.gpkg", class_field="c", members=1), 7)
    assert one.arch_args["members"] == 1  # as given
    with pytest.warns(UserWarning, match="`members` 2 applies to `arch` tempcnn only, not `arch` unet; ignored"):
        assert "members" not in resolve(TrainConfig(images=["a.tif"], labels="l.tif", members=2), 4)[0].arch_args
    with pytest.raises(UsageError, match="multiple of 8"):
        resolve(TrainConfig(images=["a.tif"], labels="l.tif", tile_size=60, depth=3), 4)
    with pytest.raises(UsageError, match="`sampling` pixels trains a per-pixel model"):
        TrainConfig(images=["a.tif"], labels="l.tif", arch="unet", sampling="pixels").validate()
