"""Spatial cross-validation (``train --cv``), ``geoseg tune`` and point labels, on real shared rasters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.features import rasterize

from tests.conftest import shared_file
from tests.test_train_cli import run as _cli

pytest.importorskip("torch")
pytest.importorskip("optuna")

BR_IMG = "rstoolbox_brazil/lsat_tm_1988.tif"
BR_POLY = "rstoolbox_brazil/trainingPolygons_lsat.gpkg"
SLO_IMG = "eolearn_slovenia/NDVI_timeseries_68dates.tif"
SLO_LAB = "eolearn_slovenia/LULC_label.tif"
TINY: dict[str, Any] = dict(arch="unet", tile_size=32, depth=2, base_channels=4, batch_size=4, samples_per_epoch=8,
                            epochs=1)


def _labelled_pixels_of_polygons() -> int:
    import geopandas as gpd

    with rasterio.open(shared_file(BR_IMG)) as ds:
        g = gpd.read_file(shared_file(BR_POLY)).to_crs(ds.crs)
        m = rasterize(((geom, 1) for geom in g.geometry), out_shape=(ds.height, ds.width), transform=ds.transform,
                      fill=0, dtype="uint8")
    return int(m.sum())


def test_polygon_cv_scores_every_labelled_pixel_exactly_once(tmp_path: Path) -> None:
    from geoseg.train import TrainConfig
    from geoseg.train.crossval import spatial_cross_validation

    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(shared_file(BR_POLY)),
                      class_field="class", output=str(tmp_path / "m.pt"), val_split=0.0, **TINY)
    seen: list[int] = []
    cv = spatial_cross_validation(cfg, 3, on_fold=lambda f, so_far: seen.append(int(so_far.confusion.sum())))
    # the polygons do not overlap: each labelled pixel is in one unit, scored once, by the fold that held it out
    assert int(cv.confusion.sum()) == _labelled_pixels_of_polygons()
    assert seen == sorted(seen) and seen[-1] == int(cv.confusion.sum()) and len(seen) == 3
    assert cv.names == ["cleared", "fallen_dry", "forest", "water"]
    d = cv.to_dict()
    lo, hi = d["overall_accuracy_ci95"]
    assert lo <= d["overall_accuracy"] <= hi
    assert d["units"] == cv.units >= 3
    assert sum(d["support"].values()) == int(cv.confusion.sum())


def test_polygon_folds_keep_whole_groups_apart() -> None:
    from geoseg.io.labels import read_polygons
    from geoseg.train import TrainConfig
    from geoseg.train.crossval import _vector_units, assign_folds
    from geoseg.train.data import image_grid, plan_labels

    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(shared_file(BR_POLY)),
                      class_field="class", output="unused.pt", val_split=0.0, **TINY)
    grid = image_grid(cfg.images)
    plan = plan_labels(cfg, grid)
    try:
        units = _vector_units(cfg, read_polygons(cfg.vector_labels, "class"), grid, plan.split["codes"])
    finally:
        plan.close()
    rows = [r for u in units for r in u.rows]
    assert sorted(rows) == list(range(36))  # every polygon in exactly one unit
    fold = assign_folds(units, 3, seed=0)
    assert set(fold.tolist()) == {0, 1, 2}
    # units are spatial groups: a unit's polygons are closer to each other than to the other units' on average
    centre = {r: np.array(u.geoms[i][0].centroid.coords[0]) for u in units for i, r in enumerate(u.rows)}
    within = [np.linalg.norm(centre[a] - centre[b]) for u in units for a in u.rows for b in u.rows if a < b]
    between = [np.linalg.norm(centre[a] - centre[b]) for u in units for v in units if u is not v
               for a in u.rows for b in v.rows]
    assert np.mean(within) < 0.5 * np.mean(between)


def test_raster_cv_blanks_held_out_blocks_and_scores_each_labelled_pixel_once(tmp_path: Path) -> None:
    from geoseg.train import TrainConfig
    from geoseg.train.crossval import spatial_cross_validation

    cfg = TrainConfig(images=[str(shared_file(SLO_IMG))], labels=str(shared_file(SLO_LAB)),
                      output=str(tmp_path / "m.pt"), val_block=48, val_split=0.0, **TINY)
    cv = spatial_cross_validation(cfg, 2)
    with rasterio.open(shared_file(SLO_LAB)) as ds:
        y = ds.read(1)
    assert int(cv.confusion.sum()) == int((y != 0).sum())
    assert cv.units == 4 and cv.folds == 2


def test_train_cv_is_stored_and_shown_by_model_info(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    args = ["train", "-i", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)), "--class-field",
            "class", "-o", str(out), "--cv", "2", "-q", "--epochs", "1", "--samples-per-epoch", "512"]  # the defaults
    code, text, err = _cli(args, capsys)
    assert code == 0, err
    assert "estimated accuracy: spatial 2-fold CV" in text
    meta = json.loads(_cli(["model", "info", str(out), "--json"], capsys)[1])
    cv = meta["training"]["spatial_cv"]
    assert cv["folds"] == 2 and 0 <= cv["overall_accuracy"] <= 1
    assert sum(cv["support"].values()) == _labelled_pixels_of_polygons()
    text = _cli(["model", "info", str(out)], capsys)[1]
    assert "estimated accuracy (spatial 2-fold" in text and "fallen_dry" in text


def test_cv_needs_two_folds(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "m.pt"
    code, _, err = _cli(["train", "-i", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)),
                         "--class-field", "class", "-o", str(out), "--cv", "1", "-q"], capsys)
    assert code != 0
    assert "--cv 1 is out of range" in err
    assert not out.exists()


def test_tune_runs_trials_resumes_and_trains_the_best(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import csv

    base = tmp_path / "base.yaml"
    base.write_text("epochs: 1\nsamples_per_epoch: 8\nbatch_size: 4\nval_split: 0\n", encoding="utf-8")
    out = tmp_path / "best.pt"
    args = ["tune", "-i", str(shared_file(BR_IMG)), "--vector-labels", str(shared_file(BR_POLY)), "--class-field",
            "class", "-o", str(out), "-c", str(base), "--folds", "2", "--sampler", "random", "-q"]
    code, text, err = _cli([*args, "--trials", "2"], capsys)
    assert code == 0, err
    assert "best: macro F1" in text
    rows = list(csv.DictReader((tmp_path / "best.tune.csv").open()))
    assert len(rows) == 2
    png = tmp_path / "best.tune.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    meta = json.loads(_cli(["model", "info", str(out), "--json"], capsys)[1])
    assert meta["training"]["tune"]["trials"] == 2
    assert meta["arch"] == meta["training"]["tune"]["best_params"]["arch"]
    # the study file is resumed: asking for 3 trials runs one more
    code, _, err = _cli([*args, "--trials", "3", "--overwrite"], capsys)
    assert code == 0, err
    assert len(list(csv.DictReader((tmp_path / "best.tune.csv").open()))) == 3


def _three_points(tmp_path: Path) -> Path:
    """Three labelled points on the Brazil image (classes a, b, a), far apart: one spatial group."""
    import geopandas as gpd
    from shapely.geometry import Point

    with rasterio.open(shared_file(BR_IMG)) as ds:
        t, crs = ds.transform, ds.crs
    pts = gpd.GeoDataFrame({"class": ["a", "b", "a"]}, crs=crs,
                           geometry=[Point(t @ (10.5, 20.5)), Point(t @ (100.2, 200.7)), Point(t @ (250.9, 30.1))])
    path = tmp_path / "pts.gpkg"
    pts.to_file(path)
    return path


def test_points_label_the_pixel_they_fall_in(tmp_path: Path) -> None:
    from geoseg.train import TrainConfig
    from geoseg.train.data import image_grid, plan_labels

    path = _three_points(tmp_path)
    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(path), class_field="class",
                      output=str(tmp_path / "m.pt"), val_split=0.0, **TINY)
    plan = plan_labels(cfg, image_grid(cfg.images))
    try:
        assert plan.train_counts.tolist() == [2, 1]  # one pixel a point
    finally:
        plan.close()
    from geoseg.train import train

    report = train(cfg)
    assert report.output.exists()


def test_tune_prunes_a_trial_the_data_cannot_take_and_goes_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from geoseg.errors import UsageError
    from geoseg.train import TrainConfig, crossval
    from geoseg.train.tune import tune

    calls: list[str] = []

    def refuse(cfg: Any, folds: int, **kw: Any) -> Any:
        calls.append(cfg.arch)
        raise UsageError("the labels lie in a single 128-pixel block")

    monkeypatch.setattr(crossval, "spatial_cross_validation", refuse)
    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(shared_file(BR_POLY)),
                      class_field="class", output=str(tmp_path / "best.pt"), **TINY)
    lines: list[str] = []
    with pytest.raises(UsageError, match="no trial finished: every trial was pruned or failed; e.g. the labels lie "
                                         "in a single 128-pixel block"):
        tune(cfg, trials=3, folds=2, sampler="random", log=lines.append)
    assert len(calls) == 3  # every trial ran and was pruned; the first refusal did not end the search
    assert sum("not possible here" in ln for ln in lines) == 3
    assert not (tmp_path / "best.pt").exists()


def test_tune_resumes_only_a_study_of_the_same_data_and_options(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A study was resumed whatever had changed: after fixing a config whose trials all failed, the rerun resumed
    the failed study ("no trial finished; see the messages above", with no message above)."""
    import dataclasses

    from geoseg.errors import UsageError
    from geoseg.train import TrainConfig, crossval
    from geoseg.train.tune import tune

    class Scored:
        macro_f1, overall_accuracy = 0.5, 0.6

        def to_dict(self) -> dict[str, Any]:
            return {}

    monkeypatch.setattr(crossval, "spatial_cross_validation", lambda cfg, folds, **kw: Scored())
    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(shared_file(BR_POLY)),
                      class_field="class", output=str(tmp_path / "best.pt"), **TINY)
    assert tune(cfg, trials=2, folds=2, sampler="random", train_best=False).trials == 2
    assert tune(cfg, trials=3, folds=2, sampler="random", train_best=False).trials == 3  # resumed: one more
    changed = dataclasses.replace(cfg, epochs=2)
    with pytest.raises(UsageError, match=r"holds a study of other options \(epochs changed\)"):
        tune(changed, trials=3, folds=2, sampler="random", train_best=False)
    with pytest.raises(UsageError, match=r"\(folds changed\)"):
        tune(cfg, trials=3, folds=3, sampler="random", train_best=False)
    lines: list[str] = []
    report = tune(dataclasses.replace(changed, overwrite=True), trials=1, folds=2, sampler="random",
                  train_best=False, log=lines.append)
    assert report.trials == 1 and any("replaced by a new one" in ln for ln in lines)


def test_the_default_cv_that_cannot_run_keeps_the_model_and_says_why(tmp_path: Path) -> None:
    """Points with the defaults end in a 3-fold spatial CV; three points make one spatial group, so the
    default CV cannot run: the model is kept, a line says why, nothing is recorded. Asked for, it is an error."""
    from geoseg.errors import UsageError
    from geoseg.models import read_meta
    from geoseg.train import TrainConfig, train

    path = _three_points(tmp_path)
    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(path), class_field="class",
                      output=str(tmp_path / "m.pt"), epochs=1, samples_per_epoch=512, members=1)
    said: list[str] = []
    report = train(cfg, on_message=said.append)
    assert report.output.exists() and report.cross_validation is None
    assert said[-1].startswith("no accuracy estimate: the default 3-fold spatial cross-validation cannot run: "
                               "cross-validation needs at least 3 spatially separate label groups; found 1")
    assert "spatial_cv" not in read_meta(report.output).training
    with pytest.raises(UsageError, match="needs at least 3 spatially separate label groups"):
        train(TrainConfig(**{**cfg.to_dict(), "output": str(tmp_path / "a.pt"), "cv": 3}))
