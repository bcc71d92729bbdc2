"""Accuracy benchmark (not a test): geoseg's U-Net against a scikit-learn random forest.

Both classifiers see exactly the same training pixels in every fold and are scored on
the same held-out pixels; scores are computed from the confusion matrix pooled over
all folds (``geoseg.metrics``).

* **rstoolbox_brazil** (Landsat-5 TM, 7 bands, 36 polygons, 4 classes): polygon-wise
  spatial cross-validation. Folds: ``StratifiedKFold(n_splits=3, shuffle=True,
  random_state=0)`` over the polygons with their class as the stratum, so every
  class has polygons in every training and every test fold and no polygon is split
  between train and test. geoseg trains on the training polygons (vector labels,
  ``--val-split 0``) and predicts the whole scene with ``predict_raster``; the RF is
  fitted on the pixels of the rasterized training polygons.
* **eolearn_slovenia** (68-date NDVI stack, dense LULC labels, 100x101 px): leave-one-
  block-out over 2x2 spatial blocks (rows 0-47/48-100, columns 0-47/48-99). geoseg
  trains on a label raster in which the test block is blanked (0 = unlabelled).

Run: ``python benchmarks/bench_accuracy.py [--quick]`` (about 20 minutes on 2 CPU cores);
``--only slovenia --slovenia-models tempcnn [--repeats 3]`` for the temporal CNN alone (about 6
minutes a repeat).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from geoseg.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402


def _rf(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=300, n_jobs=2, random_state=seed)
    rf.fit(x_train, y_train)
    return rf.predict(x_test)


#: geoseg infer's --tta for the predictions (``--tta``; default none)
TTA = "none"
#: geoseg train's --ema for every geoseg model (``--ema``; default 0, off)
EMA = 0.0


#: models per geoseg prediction (``--ensemble``): seeds ``seed + 1000 * i``, probabilities averaged
ENSEMBLE = 1


def _predict(image: Path, models: list[str], out: Path) -> np.ndarray:
    from geoseg.pipeline import predict_raster

    predict_raster(image, models if len(models) > 1 else models[0], out, overwrite=True, batch_size=4, tta=TTA)
    with rasterio.open(out) as ds:
        return ds.read(1)


def _geoseg(cfg_kwargs: dict, image: Path, tmp: Path, name: str) -> list[np.ndarray]:
    """geoseg's class raster: ``[prediction]``, or with ``ENSEMBLE`` > 1 ``[the first
    member alone, the ensemble]`` (``geoseg infer -m a.pt -m b.pt ...``)."""
    from geoseg.train import TrainConfig, train

    models = []
    for i in range(ENSEMBLE):
        kw = dict(cfg_kwargs, seed=cfg_kwargs.get("seed", 0) + 1000 * i)
        cfg = TrainConfig(images=[str(image)], output=str(tmp / f"{name}_{i}.pt"), overwrite=True, **kw)
        if EMA:
            cfg.ema = EMA
        train(cfg)
        models.append(cfg.output)
    preds = [_predict(image, models[:1], tmp / f"{name}_classes.tif")]
    if ENSEMBLE > 1:
        preds.append(_predict(image, models, tmp / f"{name}_ensemble_classes.tif"))
    return preds


def _spread(data: str, runs: dict[str, list[tuple[float, float]]]) -> list[str]:
    """Mean ± sd of (OA, macro F1) per classifier over the repeats (none for a single run)."""
    out = []
    for m, v in runs.items():
        if len(v) > 1:
            a = np.array(v)
            out.append(f"{data} {m:<8} over {len(v)} repeats: OA {a[:, 0].mean():.4f} ± {a[:, 0].std(ddof=1):.4f}, "
                       f"macro F1 {a[:, 1].mean():.4f} ± {a[:, 1].std(ddof=1):.4f} (mean ± sd)")
    return out


def _line(name: str, m_geo, m_rf, secs: tuple[float, float]) -> str:
    def oa(m) -> str:  # with the pixel counts, so that a tie at 3 decimals can be read
        ok, n = int(np.trace(m.matrix)), int(m.matrix.sum())
        return f"OA {m.overall_accuracy:.3f} ({ok}/{n})"

    def f1(m) -> str:
        return " ".join(f"{c}:{v:.2f}" for c, v in zip(m.names, m.f1))

    return (f"{name:<24} geoseg {oa(m_geo)} macroF1 {m_geo.macro_f1:.3f} mIoU {m_geo.miou:.3f}"
            f" ({secs[0]:.0f} s) | RF {oa(m_rf)} macroF1 {m_rf.macro_f1:.3f} "
            f"mIoU {m_rf.miou:.3f} ({secs[1]:.0f} s)\n{'':<24} per-class F1 geoseg {f1(m_geo)} | RF {f1(m_rf)}")


def brazil(quick: bool, repeats: int = 1) -> list[str]:
    """Polygon-wise 3-fold CV; with ``repeats`` > 1 it is repeated with other training seeds
    (``fold + 100 * repeat``, for geoseg and the RF alike; the folds stay) and the mean and
    spread printed."""
    import geopandas as gpd
    from sklearn.model_selection import StratifiedKFold

    img = DATA / "rstoolbox_brazil" / "lsat_tm_1988.tif"
    polys = gpd.read_file(DATA / "rstoolbox_brazil" / "trainingPolygons_lsat.gpkg")
    names = sorted(polys["class"].unique())
    cls = np.array([names.index(c) for c in polys["class"]])
    with rasterio.open(img) as ds:
        x = ds.read().astype(np.float32)
        tr, shape = ds.transform, (ds.height, ds.width)
        valid = (x != ds.nodata).all(axis=0)
    # polygon id per pixel (1-based), the same rasterization rule as training (pixel centres)
    pid = rasterize(((g, i + 1) for i, g in enumerate(polys.geometry)), out_shape=shape, transform=tr,
                    fill=0, dtype="int32")
    feats = x.reshape(x.shape[0], -1).T
    n = len(names)
    lines: list[str] = []
    runs: dict[str, list[tuple[float, float]]] = {"geoseg": [], "RF": []}
    for rep in range(repeats):
        cm_geo = np.zeros((n, n), dtype=np.int64)
        cm_rf = np.zeros((n, n), dtype=np.int64)
        cm_one = np.zeros((n, n), dtype=np.int64)  # the ensemble's first member alone
        t_geo = t_rf = 0.0
        skf = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            for k, (tr_idx, te_idx) in enumerate(skf.split(np.zeros(len(cls)), cls)):
                seed = k + 100 * rep
                train_px = np.isin(pid, tr_idx + 1) & valid
                test_px = np.isin(pid, te_idx + 1) & valid
                y_px = np.where(pid > 0, cls[np.maximum(pid - 1, 0)], -1)
                t0 = time.perf_counter()
                pred_rf = _rf(feats[train_px.ravel()], y_px[train_px], feats[test_px.ravel()], seed=seed)
                t_rf += time.perf_counter() - t0
                cm_rf += confusion_matrix(y_px[test_px], pred_rf, n)
                sub = tmp / f"train_{k}.gpkg"
                polys.iloc[tr_idx].to_file(sub)
                t0 = time.perf_counter()
                preds = _geoseg(dict(vector_labels=str(sub), class_field="class", val_split=0.0, tile_size=32,
                                     depth=3, base_channels=16, epochs=6 if quick else 20, samples_per_epoch=256,
                                     batch_size=16, lr=3e-3, class_weights="auto", seed=seed), img, tmp, f"br{k}")
                t_geo += time.perf_counter() - t0
                # the model's class ids are 0..3 in name order, the same as ``names``
                cm_geo += confusion_matrix(y_px[test_px], preds[-1][test_px], n)
                cm_one += confusion_matrix(y_px[test_px], preds[0][test_px], n)
                print(f"  brazil repeat {rep} fold {k}: geoseg OA {np.trace(cm_geo) / cm_geo.sum():.3f} "
                      f"RF OA {np.trace(cm_rf) / cm_rf.sum():.3f} (pooled so far)", flush=True)
        m_geo, m_rf = metrics_from_confusion(cm_geo, names), metrics_from_confusion(cm_rf, names)
        runs["geoseg"].append((m_geo.overall_accuracy, m_geo.macro_f1))
        runs["RF"].append((m_rf.overall_accuracy, m_rf.macro_f1))
        if ENSEMBLE > 1:
            m_one = metrics_from_confusion(cm_one, names)
            runs.setdefault("geoseg-1", []).append((m_one.overall_accuracy, m_one.macro_f1))
            print(f"  brazil repeat {rep}: the first member alone OA {m_one.overall_accuracy:.4f} "
                  f"macro F1 {m_one.macro_f1:.4f}; the ensemble of {ENSEMBLE} below", flush=True)
        line = _line("rstoolbox_brazil" + (f" repeat {rep}" if repeats > 1 else ""), m_geo, m_rf, (t_geo, t_rf))
        print(line, flush=True)
        lines.append(line)
    return lines + _spread("rstoolbox_brazil", runs)


#: geoseg settings compared on Slovenia: the U-Net, and the temporal CNN (TempCNN defaults of
#: Pelletier et al. 2019: Adam-type optimiser, lr 1e-3, dropout 0.2, normalisation pooled over the
#: dates) reading each pixel's NDVI profile beside the mean profile of its 7x7 neighbourhood
#: (``--context 7``). 16 px chips, 8 per step: labels within 3 px of a chip's inner edges are
#: left out (their neighbourhood is cut), so each step trains on about 800 pixels from 8 places.
SLOVENIA_MODELS = {
    "unet": dict(tile_size=64, depth=1, base_channels=16, epochs=10, samples_per_epoch=64, batch_size=8, lr=1e-2),
    "tempcnn": dict(arch="tempcnn", context=7, tile_size=16, batch_size=8, epochs=6, samples_per_epoch=400,
                    lr=1e-3),
}


def slovenia(quick: bool, models: list[str], repeats: int = 1) -> list[str]:
    """Leave-one-block-out; with ``repeats`` > 1 the whole cross-validation is repeated with other
    seeds (``fold + 100 * repeat``, for geoseg and the RF alike) and the mean and spread printed."""
    img = DATA / "eolearn_slovenia" / "NDVI_timeseries_68dates.tif"
    lab = DATA / "eolearn_slovenia" / "LULC_label.tif"
    with rasterio.open(img) as ds:
        x = ds.read().astype(np.float32)
    with rasterio.open(lab) as ds:
        y = ds.read(1)
        prof = ds.profile
    ids = [1, 2, 3, 4, 8]
    names = ["cultivated", "forest", "grassland", "shrubland", "artificial"]
    lut = np.full(256, -1)
    lut[ids] = range(len(ids))
    yi = lut[y]
    H, W = y.shape
    blocks = [(r, c) for r in ((0, 48), (48, H)) for c in ((0, 48), (48, W))]
    feats = x.reshape(x.shape[0], -1).T
    n = len(ids)
    lines: list[str] = []
    runs: dict[str, list[tuple[float, float]]] = {m: [] for m in [*models, "RF"]}
    for rep in range(repeats):
        cm_geo = {m: np.zeros((n, n), dtype=np.int64) for m in models}
        t_geo = {m: 0.0 for m in models}
        cm_rf = np.zeros((n, n), dtype=np.int64)
        t_rf = 0.0
        with tempfile.TemporaryDirectory() as td:
            tmp = Path(td)
            for k, ((r0, r1), (c0, c1)) in enumerate(blocks):
                seed = k + 100 * rep
                test = np.zeros_like(y, dtype=bool)
                test[r0:r1, c0:c1] = True
                test &= yi >= 0
                train_m = (~test) & (yi >= 0)
                train_m[r0:r1, c0:c1] = False
                t0 = time.perf_counter()
                pred_rf = _rf(feats[train_m.ravel()], yi[train_m], feats[test.ravel()], seed=seed)
                t_rf += time.perf_counter() - t0
                cm_rf += confusion_matrix(yi[test], pred_rf, n)
                blanked = y.copy()
                blanked[r0:r1, c0:c1] = 0
                lp = tmp / f"labels_{k}.tif"
                with rasterio.open(lp, "w", **prof) as ds:
                    ds.write(blanked, 1)
                for m in models:
                    cfg = dict(SLOVENIA_MODELS[m], labels=str(lp), val_split=0.0, seed=seed)
                    if quick:
                        cfg["epochs"] = max(1, cfg["epochs"] // 2)
                    t0 = time.perf_counter()
                    pred = _geoseg(cfg, img, tmp, f"slo_{m}_{k}")[-1]
                    t_geo[m] += time.perf_counter() - t0
                    cm_geo[m] += confusion_matrix(yi[test], lut[pred][test], n)
                print(f"  slovenia repeat {rep} fold {k}: " + " ".join(
                    f"geoseg-{m} OA {np.trace(c) / c.sum():.3f}" for m, c in cm_geo.items())
                    + f" RF OA {np.trace(cm_rf) / cm_rf.sum():.3f} (pooled so far)", flush=True)
        m_rf = metrics_from_confusion(cm_rf, names)
        runs["RF"].append((m_rf.overall_accuracy, m_rf.macro_f1))
        for m in models:
            m_geo = metrics_from_confusion(cm_geo[m], names)
            runs[m].append((m_geo.overall_accuracy, m_geo.macro_f1))
            line = _line(f"eolearn_slovenia {m}" + (f" repeat {rep}" if repeats > 1 else ""), m_geo, m_rf,
                         (t_geo[m], t_rf))
            print(line, flush=True)
            lines.append(line)
    return lines + _spread("eolearn_slovenia", runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="few epochs (smoke run)")
    ap.add_argument("--only", choices=["brazil", "slovenia"])
    ap.add_argument("--slovenia-models", nargs="+", choices=list(SLOVENIA_MODELS), default=list(SLOVENIA_MODELS),
                    help="geoseg models to compare on Slovenia (default: all)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="repeat the cross-validations with other seeds and print mean and sd")
    ap.add_argument("--tta", choices=["none", "flips", "d4"], default="none",
                    help="test-time augmentation of geoseg's predictions (geoseg infer --tta)")
    ap.add_argument("--ema", type=float, default=0.0, help="geoseg train --ema for the geoseg models (0: off)")
    ap.add_argument("--ensemble", type=int, default=1,
                    help="train this many seeds per fold and predict with all (geoseg infer -m a.pt -m b.pt ...)")
    a = ap.parse_args()
    global TTA, EMA, ENSEMBLE
    TTA, EMA, ENSEMBLE = a.tta, a.ema, max(1, a.ensemble)
    import torch

    torch.set_num_threads(2)
    lines = []
    if a.only in (None, "brazil"):
        lines.extend(brazil(a.quick, a.repeats))
    if a.only in (None, "slovenia"):
        lines.extend(slovenia(a.quick, a.slovenia_models, a.repeats))
    print("\n".join(["", "pooled over folds (held-out pixels only):", *lines]))


if __name__ == "__main__":
    main()
