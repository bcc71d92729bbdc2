"""Nested check of the U-Net depth on rstoolbox_brazil (not a test): is depth 3 what the training
polygons alone would choose?

For each outer fold of ``bench_accuracy.py``'s polygon-wise 3-fold CV, the depth (1, 2 or 3
poolings: receptive fields of about 10, 22 and 46 px) is chosen by an inner polygon-wise 3-fold
CV over that fold's training polygons only (pooled inner macro F1, then OA; ties keep the
deeper net), then trained on all of them and scored on the outer test polygons. Same geoseg
settings as ``bench_accuracy.py`` otherwise (tile 32, batch 16, 256 chips x 20 epochs, lr 3e-3,
``--class-weights auto``). Prints the chosen depths and the pooled outer scores beside the RF's.
About 12 minutes on 2 cores.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import rasterio
from rasterio.features import rasterize

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import bench_accuracy as B  # noqa: E402

from geoseg.metrics import confusion_matrix, metrics_from_confusion  # noqa: E402

DEPTHS = (1, 2, 3)


def main() -> None:
    import geopandas as gpd
    import torch
    from sklearn.model_selection import StratifiedKFold

    torch.set_num_threads(2)
    img = B.DATA / "rstoolbox_brazil" / "lsat_tm_1988.tif"
    polys = gpd.read_file(B.DATA / "rstoolbox_brazil" / "trainingPolygons_lsat.gpkg")
    names = sorted(polys["class"].unique())
    cls = np.array([names.index(c) for c in polys["class"]])
    with rasterio.open(img) as ds:
        x = ds.read().astype(np.float32)
        valid = (x != ds.nodata).all(axis=0)
        pid = rasterize(((g, i + 1) for i, g in enumerate(polys.geometry)), out_shape=(ds.height, ds.width),
                        transform=ds.transform, fill=0, dtype="int32")
    feats = x.reshape(x.shape[0], -1).T
    y_px = np.where(pid > 0, cls[np.maximum(pid - 1, 0)], -1)
    n = len(names)

    def geoseg(train_idx: np.ndarray, depth: int, seed: int, tmp: Path, name: str) -> np.ndarray:
        sub = tmp / f"{name}.gpkg"
        polys.iloc[train_idx].to_file(sub)
        return B._geoseg(dict(vector_labels=str(sub), class_field="class", val_split=0.0, tile_size=32, depth=depth,
                              base_channels=16, epochs=20, samples_per_epoch=256, batch_size=16, lr=3e-3,
                              class_weights="auto", seed=seed), img, tmp, name)

    cm_geo = np.zeros((n, n), dtype=np.int64)
    cm_rf = np.zeros((n, n), dtype=np.int64)
    chosen = []
    outer = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
    with tempfile.TemporaryDirectory() as td:
        tmp = Path(td)
        for k, (tr_idx, te_idx) in enumerate(outer.split(np.zeros(len(cls)), cls)):
            inner = StratifiedKFold(n_splits=3, shuffle=True, random_state=1)
            scores = {}
            for d in DEPTHS:
                cm_in = np.zeros((n, n), dtype=np.int64)
                for j, (a, b) in enumerate(inner.split(np.zeros(len(tr_idx)), cls[tr_idx])):
                    pred = geoseg(tr_idx[a], d, k, tmp, f"in{k}_{j}_d{d}")
                    test_px = np.isin(pid, tr_idx[b] + 1) & valid
                    cm_in += confusion_matrix(y_px[test_px], pred[test_px], n)
                m = metrics_from_confusion(cm_in, names)
                scores[d] = (round(m.macro_f1, 6), round(m.overall_accuracy, 6), d)
                print(f"  outer {k} depth {d}: inner OA {m.overall_accuracy:.4f} macro F1 {m.macro_f1:.4f}", flush=True)
            best = max(scores.values())[2]
            chosen.append(best)
            test_px = np.isin(pid, te_idx + 1) & valid
            pred = geoseg(tr_idx, best, k, tmp, f"out{k}")
            cm_geo += confusion_matrix(y_px[test_px], pred[test_px], n)
            train_px = np.isin(pid, tr_idx + 1) & valid
            pred_rf = B._rf(feats[train_px.ravel()], y_px[train_px], feats[test_px.ravel()], seed=k)
            cm_rf += confusion_matrix(y_px[test_px], pred_rf, n)
            print(f"outer {k}: chose depth {best}", flush=True)
    g, r = metrics_from_confusion(cm_geo, names), metrics_from_confusion(cm_rf, names)
    print(f"chosen depths {chosen}")
    print(f"nested geoseg OA {g.overall_accuracy:.4f} ({np.trace(cm_geo)}/{cm_geo.sum()}) macro F1 {g.macro_f1:.4f} | "
          f"RF OA {r.overall_accuracy:.4f} ({np.trace(cm_rf)}/{cm_rf.sum()}) macro F1 {r.macro_f1:.4f}")


if __name__ == "__main__":
    main()
