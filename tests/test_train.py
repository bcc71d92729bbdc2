"""Training on real shared rasters: raster labels, polygons in another CRS, resume, round trip into infer."""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Iterator

import numpy as np
import pytest
import rasterio

from tests.conftest import shared_file

torch = pytest.importorskip("torch")

SLO_IMG = "eolearn_slovenia/NDVI_timeseries_68dates.tif"
SLO_LAB = "eolearn_slovenia/LULC_label.tif"
BR_IMG = "rstoolbox_brazil/lsat_tm_1988.tif"
BR_POLY = "rstoolbox_brazil/trainingPolygons_lsat.gpkg"

TINY = dict(tile_size=32, depth=2, base_channels=4, batch_size=4, samples_per_epoch=8)


def _cfg(tmp_path: Path, name: str = "m.pt", **kw: Any) -> Any:
    from geoseg.train import TrainConfig

    base: dict[str, Any] = dict(images=[str(shared_file(SLO_IMG))], labels=str(shared_file(SLO_LAB)),
                                output=str(tmp_path / name), val_block=48, epochs=2, arch="unet", **TINY)
    base.update(kw)
    return TrainConfig(**base)


def _state(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


@contextlib.contextmanager
def train_parts(cfg: Any) -> Iterator[SimpleNamespace]:
    """The training data of ``cfg`` (validated): grid, label plan, statistics, dataset and the
    chips of a seed-0 sampler; the plan is closed afterwards."""
    from geoseg.train import data as D

    cfg.validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    try:
        mean, std = D.normalization_stats(grid)
        ds = D.build_dataset(grid, plan, cfg, "train")
        chips = list(D.train_sampler(grid, plan, cfg, torch.Generator().manual_seed(0)))
        yield SimpleNamespace(grid=grid, plan=plan, mean=mean, std=std, ds=ds, chips=chips)
    finally:
        plan.close()


@pytest.fixture(scope="module")
def brazil_4326(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import geopandas as gpd

    p = tmp_path_factory.mktemp("poly") / "polys_4326.gpkg"
    g = gpd.read_file(shared_file(BR_POLY))
    assert g.crs.to_epsg() == 32622
    g.to_crs(4326).to_file(p)
    return p


# ---------------------------------------------------------------------- raster labels
def test_raster_labels_train_outputs_and_checkpoint(tmp_path: Path) -> None:
    from geoseg.models import load_checkpoint
    from geoseg.train import train

    cfg = _cfg(tmp_path)
    rep = train(cfg, command=["geoseg", "train", "..."])
    model, meta = load_checkpoint(rep.output)
    assert meta.schema.ids == [1, 2, 3, 4, 8]  # label values kept as class ids
    assert meta.num_bands == 68 and meta.bands[0].startswith("NDVI_2015")
    assert meta.training["config"]["labels"] == cfg.labels
    assert cfg.num_workers is None and meta.training["config"]["num_workers"] == 0  # auto, as resolved
    assert meta.training["command"] == ["geoseg", "train", "..."]
    assert meta.training["split"]["method"] == "spatial blocks"
    assert "val_per_class" in meta.training
    # normalization from the training image (no nodata in this file)
    with rasterio.open(cfg.images[0]) as ds:
        a = ds.read().astype(np.float64)
    np.testing.assert_allclose(meta.mean, a.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(meta.std, a.std(axis=(1, 2)), rtol=1e-4)
    rows = rep.metrics_csv.read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss,val_miou") and len(rows) == 3
    assert rep.curves_png.read_bytes()[:4] == b"\x89PNG"
    assert rep.last.exists() and len(rep.history) == 2
    payload = torch.load(rep.last, map_location="cpu", weights_only=True)  # resumable state is weights-only safe
    assert payload["extra"]["epoch"] == 1


@pytest.mark.parametrize("block", [48, 32])
def test_block_split_counts_each_validation_pixel_once(tmp_path: Path, block: int) -> None:
    from geoseg.train import data as D
    from geoseg.train.data.plan import _blocks

    # block 32 = chip size: regions exactly one chip wide must not be dropped by float rounding
    cfg = _cfg(tmp_path, val_block=block, val_split=0.25).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    val_ids = plan.split["val_block_ids"]
    assert plan.split["val_blocks"] == len(val_ids) >= 1 and plan.split["train_blocks"] >= 3
    rows, cols = _blocks(grid.height, block), _blocks(grid.width, block)
    with rasterio.open(cfg.labels) as ds:
        lab = ds.read(1)
    expected = np.zeros(9, dtype=np.int64)
    for bi, bj in val_ids:
        blk = lab[rows[bi][0]:rows[bi][1], cols[bj][0]:cols[bj][1]]
        expected += np.bincount(blk[blk > 0], minlength=9)
    mean, std = D.normalization_stats(grid)
    ds_val = D.build_dataset(grid, plan, cfg, "val")
    bm = D.BatchMaker(grid, plan.lut, mean, std, regions=plan.val_regions, clip=True)
    got = np.zeros(len(plan.schema), dtype=np.int64)
    for b in D.make_loader(ds_val, D.val_sampler(grid, plan, cfg), bm, cfg):
        y = b["mask"].numpy()
        got += np.bincount(y[y != 255], minlength=len(plan.schema))
    np.testing.assert_array_equal(got, expected[[1, 2, 3, 4, 8]])
    # training counts are the labels of the other blocks
    np.testing.assert_array_equal(plan.train_counts + got, np.bincount(lab[lab > 0], minlength=9)[[1, 2, 3, 4, 8]])
    # every training block, even one exactly a chip wide, can be sampled
    sampler = D.train_sampler(grid, plan, cfg, torch.Generator().manual_seed(0))
    assert len(sampler.bounds) == plan.split["train_blocks"]


@pytest.mark.parametrize("workers", [0, 1])
def test_same_seed_same_weights_and_exact_resume(tmp_path: Path, workers: int) -> None:
    """Also with (persistent) DataLoader workers: their augmentation follows the epoch seed."""
    from geoseg.train import train

    a = train(_cfg(tmp_path, "a.pt", val_split=0.0, num_workers=workers))
    b = train(_cfg(tmp_path, "b.pt", val_split=0.0, epochs=1, num_workers=workers))
    b2 = train(_cfg(tmp_path, "b.pt", val_split=0.0, epochs=2, resume=True, num_workers=workers))
    assert [h.epoch for h in b2.history] == [0, 1]
    sa, sb = _state(a.last), _state(b2.last)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c = train(_cfg(tmp_path, "c.pt", val_split=0.0, epochs=1, seed=1, num_workers=workers))
    sc = _state(c.last)
    assert any(not torch.equal(_state(b.last)[k], sc[k]) for k in sc)  # a different seed differs


def test_resume_refuses_changed_data_options(tmp_path: Path) -> None:
    from geoseg.errors import UsageError
    from geoseg.train import train

    train(_cfg(tmp_path, epochs=1, val_split=0.0))
    with pytest.raises(UsageError, match="depth"):
        train(_cfg(tmp_path, epochs=2, val_split=0.0, resume=True, depth=1))


def test_existing_output_is_refused_without_overwrite(tmp_path: Path) -> None:
    from geoseg.errors import OutputExistsError
    from geoseg.train import train

    (tmp_path / "m.pt").write_bytes(b"keep")
    with pytest.raises(OutputExistsError):
        train(_cfg(tmp_path, epochs=1))
    assert (tmp_path / "m.pt").read_bytes() == b"keep"


# ---------------------------------------------------------------------- vector labels
def test_polygons_in_another_crs_train_and_round_trip_into_infer(tmp_path: Path, brazil_4326: Path) -> None:
    from geoseg import predict_raster
    from geoseg.models import read_meta
    from geoseg.train import train

    img = shared_file(BR_IMG)
    cfg = _cfg(tmp_path, images=[str(img)], labels=None, vector_labels=str(brazil_4326), class_field="class",
               epochs=1, class_weights="auto", dice=True, jitter=0.1, samples_per_epoch=4)
    rep = train(cfg)
    meta = read_meta(rep.output)
    assert meta.schema.names == ["cleared", "fallen_dry", "forest", "water"]
    assert meta.schema.ids == [0, 1, 2, 3]
    split = meta.training["split"]
    assert split["method"].startswith("by polygon")
    assert split["train_polygons"] + split["val_polygons"] == 36 and split["val_polygons"] >= 4
    assert len(meta.training["class_weights"]) == 4
    # the validation pass saw labelled pixels of every class (polygons reprojected from EPSG:4326)
    conf = np.array(meta.training["val_confusion"])
    assert (conf.sum(axis=1) > 0).all()
    out = tmp_path / "pred.tif"
    r = predict_raster(img, rep.output, out)
    assert r.classes_path == out
    with rasterio.open(out) as ds, rasterio.open(img) as src:
        a = ds.read(1)
        assert ds.crs == src.crs and ds.transform == src.transform
        nod = (src.read() == 255).all(axis=0)
    assert set(np.unique(a[~nod])) <= {0, 1, 2, 3}


def test_geoparquet_polygons_read_like_the_gpkg(tmp_path: Path) -> None:
    import geopandas as gpd

    from geoseg.io.labels import read_polygons

    src = gpd.read_file(shared_file(BR_POLY))
    pq = tmp_path / "polys.parquet"
    src.to_crs(4326).to_parquet(pq)
    a = read_polygons(shared_file(BR_POLY), "class")
    b = read_polygons(pq, "class")
    assert b.crs.to_epsg() == 4326 and len(b) == len(a) == 36
    assert list(b["class"]) == list(a["class"])
    assert b.to_crs(a.crs).geometry.geom_equals_exact(a.geometry, tolerance=1e-3).all()


def test_polygon_split_keeps_train_and_val_polygons_apart(tmp_path: Path, brazil_4326: Path) -> None:
    import geopandas as gpd

    from geoseg.train import data as D

    cfg = _cfg(tmp_path, images=[str(shared_file(BR_IMG))], labels=None, vector_labels=str(brazil_4326),
               class_field="class", class_map={"fallen_dry": "cleared"}).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    try:
        assert plan.schema.names == ["cleared", "forest", "water"]  # merged by --class-map
        tr = gpd.read_parquet(plan.train_source)
        va = gpd.read_parquet(plan.val_source)
        assert tr.crs.to_epsg() == 4326  # torchgeo does the reprojection
        assert len(tr) + len(va) == 36
        assert not tr.geometry.apply(lambda g: va.geometry.geom_equals(g).any()).any()
        assert set(va["class"]) == {"cleared", "fallen_dry", "forest", "water"}
    finally:
        plan.close()


def test_polygon_chips_equal_torchgeo_vectordataset(tmp_path: Path, brazil_4326: Path) -> None:
    """The in-memory, STR-tree rasterizer burns the same masks as torchgeo's VectorDataset."""
    import geopandas as gpd
    from torchgeo.datasets import VectorDataset

    from geoseg.train import data as D
    from geoseg.train.datasets import PolygonLabels
    from geoseg.io.labels import class_key

    grid = D.image_grid([shared_file(BR_IMG)])
    pq = tmp_path / "p.parquet"
    gpd.read_file(brazil_4326).to_parquet(pq)
    codes = {"cleared": 1, "fallen_dry": 2, "forest": 3, "water": 4}

    class Reference(VectorDataset):
        def get_label(self, feature):  # type: ignore[no-untyped-def]
            return codes[class_key(feature["class"])]

    ours = PolygonLabels(pq, "class", codes, crs=grid.crs, res=grid.res)
    ref = Reference(paths=[str(pq)], crs=grid.crs, res=grid.res, task="semantic_segmentation")
    rng = np.random.default_rng(0)
    (x0, y0, x1, _), (rx, ry) = grid.bounds, grid.res
    burnt = 0
    for size in (16, 64, 200):
        for _ in range(15):
            cx = x0 + rng.integers(0, grid.width - size) * rx
            cy = y0 + rng.integers(0, grid.height - size) * ry
            q = (slice(cx, cx + size * rx, rx), slice(cy, cy + size * ry, ry), slice(None, None, 1))
            a, b = ours[q]["mask"], ref[q]["mask"]
            assert a.shape == b.shape == (size, size) or a.shape == b.shape == (1, size, size)
            assert torch.equal(a, b)
            burnt += int((a > 0).sum())
    assert burnt > 1000  # the chips did hit polygons
    assert ours[(slice(x1 + 1e4, x1 + 2e4, rx), slice(y0, y0 + 1e4, ry), slice(None, None, 1))]["mask"].max() == 0


def test_stacked_single_band_files(tmp_path: Path) -> None:
    from geoseg.models import read_meta
    from geoseg.train import train

    d = shared_file("rstoolbox_brazil/landsat_LT5_original_bands")
    bands = [str(d / f"LT52240631988227CUB02_B{i}.TIF") for i in (1, 2, 3, 4, 5, 7)]
    cfg = _cfg(tmp_path, images=bands, labels=None, vector_labels=str(shared_file(BR_POLY)),
               class_field="class", epochs=1, samples_per_epoch=4, val_split=0.0)
    meta = read_meta(train(cfg).output)
    assert meta.num_bands == 6 and meta.bands[0] == "LT52240631988227CUB02_B1"


def test_label_raster_in_another_crs_is_warped(tmp_path: Path) -> None:
    from rasterio.enums import Resampling
    from rasterio.warp import calculate_default_transform, reproject

    from geoseg.train import data as D

    src = shared_file(SLO_LAB)
    with rasterio.open(src) as ds:
        tr, w, h = calculate_default_transform(ds.crs, "EPSG:4326", ds.width, ds.height, *ds.bounds)
        dst = np.zeros((h, w), dtype=np.uint8)
        reproject(ds.read(1), dst, src_transform=ds.transform, src_crs=ds.crs, dst_transform=tr,
                  dst_crs="EPSG:4326", resampling=Resampling.nearest)
        orig = ds.read(1)
        prof = dict(ds.profile, crs="EPSG:4326", transform=tr, width=w, height=h)
    p = tmp_path / "labels_4326.tif"
    with rasterio.open(p, "w", **prof) as out:
        out.write(dst, 1)
    cfg = _cfg(tmp_path, labels=str(p), val_split=0.0).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    assert plan.schema.ids == [1, 2, 3, 4, 8]
    expected = np.bincount(orig[orig > 0], minlength=9)[[2, 3]]
    got = plan.train_counts[[1, 2]]  # forest, grassland: the big classes survive two warps nearly unchanged
    np.testing.assert_allclose(got, expected, rtol=0.05)
    mean, std = D.normalization_stats(grid)
    ds_train = D.build_dataset(grid, plan, cfg, "train")
    bm = D.BatchMaker(grid, plan.lut, mean, std, regions=plan.train_regions, clip=plan.clip_train)
    batch = next(iter(D.make_loader(ds_train, D.train_sampler(grid, plan, cfg, torch.Generator().manual_seed(0)),
                                    bm, cfg)))
    assert batch["image"].shape == (4, 68, 32, 32)
    assert (batch["mask"] != 255).float().mean() > 0.5  # the warped labels land on the image chips


# ---------------------------------------------------------------------- time series: tempcnn, band dropout
def test_tempcnn_trains_with_band_dropout_and_round_trips_into_infer(tmp_path: Path) -> None:
    """The per-pixel temporal CNN on the 68-date NDVI stack: small chips, no tile overlap, infer works."""
    from geoseg.models import load_checkpoint
    from geoseg.pipeline import predict_raster
    from geoseg.train import train

    cfg = _cfg(tmp_path, arch="tempcnn", tile_size=8, batch_size=8, samples_per_epoch=32, band_dropout=0.3,
               val_block=24, depth=3)
    rep = train(cfg)
    model, meta = load_checkpoint(rep.output)
    assert meta.arch == "tempcnn" and meta.arch_args["bands_per_date"] == 1
    assert meta.overlap == 0  # a per-pixel model needs no overlap between tiles
    assert meta.training["config"]["band_dropout"] == 0.3
    out = tmp_path / "c.tif"
    r = predict_raster(cfg.images[0], rep.output, out, tile_size=64, overlap=0)
    with rasterio.open(out) as ds:
        cls = ds.read(1)
    assert r.overlap == 0 and set(np.unique(cls)) <= {1, 2, 3, 4, 8}
    # per pixel: predicting a window alone gives the same classes as the whole raster
    sub = tmp_path / "sub.tif"
    with rasterio.open(cfg.images[0]) as src:
        win = rasterio.windows.Window(13, 29, 37, 41)
        prof = dict(src.profile, width=37, height=41, transform=src.window_transform(win))
        with rasterio.open(sub, "w", **prof) as dst:
            dst.write(src.read(window=win))
    predict_raster(sub, rep.output, tmp_path / "sub_c.tif", tile_size=16, overlap=0)
    with rasterio.open(tmp_path / "sub_c.tif") as ds:
        np.testing.assert_array_equal(ds.read(1), cls[29:70, 13:50])


def test_tempcnn_refuses_bands_that_are_not_whole_dates(tmp_path: Path) -> None:
    from geoseg.errors import UsageError
    from geoseg.train import train

    with pytest.raises(UsageError, match="whole number of dates"):
        train(_cfg(tmp_path, arch="tempcnn", tile_size=8, bands_per_date=3))  # 68 bands


def test_band_dropout_replaces_whole_bands_by_their_mean() -> None:
    from geoseg.train import data as D

    class _Grid:
        nodata = [float("nan")] * 6

    x = torch.arange(2 * 6 * 4 * 4, dtype=torch.float32).reshape(2, 6, 4, 4) + 1
    mask = torch.ones(2, 4, 4, dtype=torch.long)
    lut = np.array([255, 0])
    plain = D.BatchMaker(_Grid(), lut, [0.0] * 6, [1.0] * 6, augment="none")
    drop = D.BatchMaker(_Grid(), lut, [0.0] * 6, [1.0] * 6, augment="none", band_dropout=0.5, seed=1)
    a = plain.process(x, mask)["image"]
    b = drop.process(x, mask)["image"]
    zero = (b == 0).flatten(2).all(-1)  # (sample, band) fully replaced by the mean (0)
    kept = (b == a).flatten(2).all(-1)
    assert (zero ^ kept).all() and zero.any() and kept.any()
    drop.set_epoch(0)
    assert torch.equal(drop.process(x, mask)["image"], b)  # same seed and epoch: same draws
    assert torch.equal(plain.process(x, mask)["image"], a)  # off: unchanged


def _reference_batch(x: torch.Tensor, mask: torch.Tensor, nodata: list[float], mean: list[float],
                     std: list[float], lut: np.ndarray, seed: int, jitter: float, band_dropout: float,
                     d4: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """BatchMaker's contract written plainly, one sample at a time (the batch code is the fast form)."""
    rng = np.random.default_rng([seed, 0, 0, 7])
    xs, ys = [], []
    for xi, mi in zip(x, mask):
        yi = torch.tensor([[lut[v] if 0 <= v < len(lut) else 255 for v in row] for row in mi.tolist()])
        bad = torch.zeros(xi.shape[1:], dtype=torch.bool)
        for c in range(xi.shape[0]):
            bad |= ~torch.isfinite(xi[c]) | ((xi[c] == nodata[c]) if not np.isnan(nodata[c]) else False)
        yi[bad] = 255
        xi = torch.stack([(xi[c] - mean[c]) / std[c] for c in range(xi.shape[0])])
        xi[:, bad] = 0.0
        xi = torch.nan_to_num(xi, nan=0.0, posinf=0.0, neginf=0.0)
        if d4:  # each enabled augmentation draws, in this order; a disabled one draws nothing
            k, flip = [(k, f) for f in (False, True) for k in range(4)][int(rng.integers(8))]
            if flip:
                xi, yi = xi.flip(-1), yi.flip(-1)
            xi, yi = torch.rot90(xi, k, (-2, -1)), torch.rot90(yi, k, (-2, -1))
        if jitter > 0:
            gain = torch.from_numpy(rng.uniform(1 - jitter, 1 + jitter, xi.shape[0]).astype(np.float32))
            off = torch.from_numpy(rng.uniform(-jitter, jitter, xi.shape[0]).astype(np.float32))
            xi = xi * gain[:, None, None] + off[:, None, None]
        if band_dropout > 0:
            keep = torch.from_numpy(rng.random(xi.shape[0]) >= band_dropout)
            xi = xi * keep[:, None, None]
        xs.append(xi)
        ys.append(yi)
    return torch.stack(xs), torch.stack(ys)


@pytest.mark.parametrize("augment,jitter,band_dropout", [("d4", 0.1, 0.3), ("none", 0.0, 0.0), ("d4", 0.0, 0.0),
                                                        ("none", 0.1, 0.0), ("none", 0.0, 0.3)])
@pytest.mark.parametrize("on_device", [False, True])
def test_batch_maker_equals_a_plain_per_sample_reference(on_device: bool, augment: str, jitter: float,
                                                         band_dropout: float) -> None:
    """Validity (nodata per band, NaN, inf), normalization, overflow, D4, jitter and band dropout, each
    option on and off; in the workers (CPU) or split between workers and the model's device
    (``finish``, run here on the CPU): the CPU and the device batch code equal one reference."""
    from geoseg.train import data as D

    nodata = [255.0, float("nan"), 0.0, float("nan"), 7.0]

    class _Grid:
        pass

    _Grid.nodata = nodata  # type: ignore[attr-defined]
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 60, (6, 5, 9, 9), generator=g).float()
    x[0, 0, 1, 1] = 255.0  # nodata of band 0
    x[1, 2, 2, :] = 0.0  # nodata of band 2
    x[2, 1, 3, 3] = float("nan")
    x[3, 3, 4, 4:6] = float("inf")
    x[4, 4, 5, 5] = -float("inf")
    x[5, :, 6, 6] = 3e38  # finite, but overflows once normalized
    mask = torch.randint(0, 5, (6, 9, 9), generator=g)
    lut = np.array([255, 0, 1, 255])  # value 4 is out of the table: ignored too
    mean, std = [1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 2.0, 1.5, 3.0, 1e-3]
    bm = D.BatchMaker(_Grid(), lut, mean, std, augment=augment, jitter=jitter, band_dropout=band_dropout, seed=5,
                      on_device=on_device)
    before = x.clone()
    if on_device:
        raw = bm([{"image": xi, "mask": mi} for xi, mi in zip(x, mask)])
        assert torch.equal(raw["image"].nan_to_num(), x.nan_to_num())  # the chips as read
        got = bm.finish(raw)
    else:
        got = bm.process(x, mask)
    want_x, want_y = _reference_batch(x, mask, nodata, mean, std, lut, 5, jitter, band_dropout, augment == "d4")
    assert torch.equal(x.nan_to_num(), before.nan_to_num())  # the input is left alone
    assert torch.equal(got["mask"], want_y)
    assert torch.allclose(got["image"], want_x, rtol=1e-6, atol=1e-6)
    assert bool(torch.isfinite(got["image"]).all())
    assert int((got["mask"] == 255).sum()) > int((mask == 4).sum() + (mask == 0).sum() + (mask == 3).sum())


def test_tempcnn_chunked_evaluation_equals_one_pass() -> None:
    from geoseg.models.tempcnn import TempCNN

    torch.manual_seed(0)
    m = TempCNN(12, 4, bands_per_date=2, chunk=50).eval()
    x = torch.randn(2, 12, 9, 11)
    with torch.no_grad():
        chunked = m(x)
        m.chunk = 10**6
        whole = m(x)
    torch.testing.assert_close(chunked, whole)


def test_tempcnn_ensemble_trains_members_on_their_own_and_averages_their_probabilities() -> None:
    """members=3: member 0 is the single network (same names, same init), training returns one logit map a
    member on a last axis, the loss is the mean of the members' own losses (a member's gradient does not
    depend on the others), and evaluation returns the log of the members' mean softmax."""
    from geoseg.models.tempcnn import TempCNN
    from geoseg.train.losses import segmentation_loss

    torch.manual_seed(0)
    one = TempCNN(12, 4, bands_per_date=2)
    torch.manual_seed(0)
    ens = TempCNN(12, 4, bands_per_date=2, members=3)
    single = one.state_dict()
    assert all(torch.equal(ens.state_dict()[k], v) for k, v in single.items())
    assert len(ens.state_dict()) == 3 * len(single)
    x = torch.randn(2, 12, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, 0] = 255
    ens.train()
    torch.manual_seed(1)
    logits = ens(x)
    assert logits.shape == (2, 4, 5, 6, 3)
    for dice in (False, True):
        want = torch.stack([segmentation_loss(logits[..., k], target, None, dice) for k in range(3)]).mean()
        torch.testing.assert_close(segmentation_loss(logits, target, None, dice), want)
    picked = ens(x, pixels=torch.tensor([0, 7, 59]))
    assert picked.shape == (3, 4, 3)
    # member 1's gradient comes from its own logits only: zero the others' loss, same gradient
    ens.zero_grad()
    segmentation_loss(logits, target, None, False).backward(retain_graph=True)
    g_all = [p.grad.clone() for p in ens.more[0].parameters()]
    ens.zero_grad()
    (segmentation_loss(logits[..., 1], target, None, False) / 3).backward()
    for a, b in zip(g_all, ens.more[0].parameters()):
        torch.testing.assert_close(a, b.grad)
    ens.eval()
    with torch.no_grad():
        got = ens(x)
        ens.chunk = 7
        chunked = ens(x)
        probs = []
        for conv, dense, head in [(ens.conv, ens.dense, ens.head), *map(tuple, ens.more)]:
            z = x.permute(0, 2, 3, 1).reshape(-1, 6, 2).transpose(1, 2)
            probs.append(head(dense(conv(z))).softmax(1))
    want = torch.stack(probs).mean(0).log().reshape(2, 5, 6, 4).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(chunked, want)


def test_tempcnn_context_reads_the_pixel_and_its_neighbourhood_mean() -> None:
    """context=3: each pixel's profile beside the mean of its 3x3 window (inside the image only)."""
    import torch.nn.functional as F

    from geoseg.models.tempcnn import TempCNN

    torch.manual_seed(0)
    ctx = TempCNN(8, 3, bands_per_date=2, context=3).eval()
    plain = TempCNN(16, 3, bands_per_date=4).eval()  # the same network fed [own, mean] by hand
    plain.load_state_dict(ctx.state_dict())
    x = torch.randn(1, 8, 5, 6)
    pad = F.pad(x, (1, 1, 1, 1))
    ones = F.pad(torch.ones(1, 1, 5, 6), (1, 1, 1, 1))
    win_sum = sum(pad[..., i:i + 5, j:j + 6] for i in range(3) for j in range(3))
    win_n = sum(ones[..., i:i + 5, j:j + 6] for i in range(3) for j in range(3))
    mean = win_sum / win_n  # corners average 4 pixels, edges 6, the inside 9
    by_hand = torch.cat([x.reshape(1, 4, 2, 5, 6), mean.reshape(1, 4, 2, 5, 6)], 2).reshape(1, 16, 5, 6)
    with torch.no_grad():
        torch.testing.assert_close(ctx(x), plain(by_hand))
        # receptive field: 3 px; a change 2 px away leaves the pixel alone, 1 px away does not
        y = ctx(x)
        x2 = x.clone()
        x2[..., 2, 4] += 5
        d = (ctx(x2) - y).abs().amax(1)[0]
        assert d[2, 2] == 0 and d[2, 3] > 0 and d[1, 3] > 0 and d[0, 4] == 0
    with pytest.raises(ValueError, match="context must be odd"):
        TempCNN(8, 3, context=4)


def test_pool_over_dates_gives_each_band_the_stats_of_all_its_dates() -> None:
    from geoseg.train.data import pool_over_dates

    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 3, 2)) * [1.0, 10.0] + rng.normal(size=(1, 3, 2)) * 5  # pixels, dates, bands
    flat = a.reshape(500, 6)
    mean, std = pool_over_dates(flat.mean(0), flat.std(0), 2)
    for b in range(2):
        np.testing.assert_allclose(mean[b::2], a[..., b].mean(), rtol=1e-9)
        np.testing.assert_allclose(std[b::2], a[..., b].std(), rtol=1e-9)


def test_tempcnn_with_context_stores_pooled_stats_and_tile_overlap(tmp_path: Path) -> None:
    from geoseg.models import load_checkpoint
    from geoseg.pipeline import predict_raster
    from geoseg.train import train

    cfg = _cfg(tmp_path, arch="tempcnn", context=5, tile_size=16, batch_size=4, samples_per_epoch=8,
               val_block=32, depth=3)
    rep = train(cfg)
    _, meta = load_checkpoint(rep.output)
    assert meta.arch_args["context"] == 5
    assert meta.overlap == 4  # the receptive field: tiles overlap by context - 1
    assert len(set(meta.mean)) == 1 and len(set(meta.std)) == 1  # one NDVI band: one pooled mean and std
    with rasterio.open(cfg.images[0]) as ds:
        assert meta.mean[0] == pytest.approx(float(ds.read().astype(np.float64).mean()), rel=1e-4)
    r = predict_raster(cfg.images[0], rep.output, tmp_path / "c.tif", tile_size=32)
    assert r.overlap == 4


def test_margin_leaves_out_labels_near_inner_chip_edges_only() -> None:
    """Labels within the model's reach of a chip edge are ignored, unless that edge is the image's."""
    from geoseg.train import data as D

    grid = D.image_grid([shared_file(SLO_IMG)])
    left, bottom, right, top = grid.bounds
    rx, ry = grid.res
    bm = D.BatchMaker(grid, np.arange(256), [0.0] * 68, [1.0] * 68, margin=2)
    x = torch.ones(2, 68, 8, 8)
    mask = torch.ones(2, 8, 8, dtype=torch.long)
    inner = (slice(left + 10 * rx, left + 18 * rx), slice(top - 30 * ry, top - 22 * ry), slice(0, 1))
    corner = (slice(left, left + 8 * rx), slice(top - 8 * ry, top), slice(0, 1))  # the image's top-left corner
    y = bm.process(x, mask, [inner, corner])["mask"]
    labelled = y != 255
    expect_inner = torch.zeros(8, 8, dtype=torch.bool)
    expect_inner[2:6, 2:6] = True
    assert torch.equal(labelled[0], expect_inner)
    expect_corner = torch.zeros(8, 8, dtype=torch.bool)
    expect_corner[:6, :6] = True  # top and left are the image's edges: kept
    assert torch.equal(labelled[1], expect_corner)
    assert (D.BatchMaker(grid, np.arange(256), [0.0] * 68, [1.0] * 68).process(x, mask)["mask"] != 255).all()


def test_context_options_are_checked(tmp_path: Path) -> None:
    from geoseg.errors import UsageError

    with pytest.raises(UsageError, match="applies to `arch` tempcnn only"):
        _cfg(tmp_path, context=3).validate()
    with pytest.raises(UsageError, match="`context`"):
        _cfg(tmp_path, arch="tempcnn", context=4, tile_size=16).validate()
    with pytest.raises(UsageError, match="smaller than `context` 9"):
        _cfg(tmp_path, arch="tempcnn", context=9, tile_size=8).validate()
    _cfg(tmp_path, arch="tempcnn", context=7, tile_size=16).validate()


# ---------------------------------------------------------------------- direct chip reads
@pytest.mark.parametrize("rel,merge_exact", [(SLO_IMG, True), (SLO_LAB, True), (BR_IMG, True),
                                             ("rstoolbox_brazil/landsat_LT5_original_bands/LT52240631988227CUB02_B1.TIF",
                                              True), ("rasterio_testdata/RGB.byte.tif", False)])
def test_direct_chip_reads_equal_torchgeo_merge(rel: str, merge_exact: bool) -> None:
    """Chips on the file's grid are read as plain windows: the file's pixels, nodata (or 0)
    outside it, and the same values as torchgeo's rasterio.merge path. Chips off the grid
    fall back to merge.

    RGB.byte.tif has a resolution of 300.0379 m: there merge reads a fractional source
    window and repeats some pixels (nearest resampling), where the window read is exact.
    Float files through merge are bilinearly resampled, exact to ~1e-11 only."""
    from rasterio.windows import Window

    from geoseg.train.datasets import ImageFile, LabelRaster, RasterDataset, read_on_grid

    path = shared_file(rel)
    ds = (LabelRaster(path, crs=None, res=None) if "LULC" in rel else ImageFile(path))  # type: ignore[arg-type]
    fp = ds.index.filepath.iloc[0]
    src = rasterio.open(fp)
    rng = np.random.default_rng(1)
    (bx, by, _), (rx, ry) = ds.bounds, ds.res
    direct = 0
    for k in range(40):
        size = int(rng.choice([8, 32, 64]))
        # aligned chips, some hanging over the edges; every 5th off the grid by a fraction of a pixel
        col = int(rng.integers(-size // 2, src.width))
        row = int(rng.integers(-size // 2, src.height))
        cx, cy = bx.start + col * rx, by.stop - (row + size) * ry
        if k % 5 == 4:
            cx += 0.37 * rx
        q = (slice(cx, cx + size * rx), slice(cy, cy + size * ry))  # as torchgeo's samplers give them
        key = "image" if ds.is_image else "mask"
        got = ds[q][key]  # read straight into the sample's dtype
        want = RasterDataset._merge_files(ds, [fp], q, ds.band_indexes).to(ds.dtype)
        want = want if ds.is_image else want.squeeze(0)
        assert got.dtype == want.dtype == ds.dtype and got.shape == want.shape
        x, y, _ = ds._disambiguate_slice(q)
        on_grid = read_on_grid(src, x, y, ds.band_indexes) is not None
        assert on_grid == (k % 5 != 4)
        direct += on_grid
        if on_grid:
            ref = src.read(window=Window(col, row, size, size), boundless=True, fill_value=src.nodata or 0)
            assert np.array_equal(got.numpy(), ref.astype(got.numpy().dtype).reshape(got.shape), equal_nan=True)
        if merge_exact or not on_grid:
            # merge resamples float images bilinearly from a window off by float rounding
            # (~1e-10 px): values then differ from the file's by ~1e-11
            assert np.allclose(got.numpy(), want.numpy(), rtol=0, atol=1e-6, equal_nan=True)
            assert got.is_floating_point() or torch.equal(got, want)
    assert direct == 32


@pytest.mark.parametrize("on_device", [False, True])
def test_worker_batches_in_shared_memory_equal_main_process_batches(tmp_path: Path, on_device: bool) -> None:
    """Batches built in a DataLoader worker (output tensors made in shared memory) hold what
    the main process builds from the same chips; also the raw chips sent for ``finish``."""
    from geoseg.train import data as D

    cfg = _cfg(tmp_path, val_split=0.0, samples_per_epoch=8)
    with train_parts(cfg) as t:
        bm = D.BatchMaker(t.grid, t.plan.lut, t.mean, t.std, regions=t.plan.train_regions,
                          clip=t.plan.clip_train, on_device=on_device)
        out = []
        for workers in (0, 1):
            loader = D.make_loader(t.ds, t.chips, bm, cfg.__class__(**{**cfg.__dict__, "num_workers": workers}))
            out.append([bm.finish(b) if on_device else b for b in loader])
        assert len(out[0]) == len(out[1]) == 2
        for a, b in zip(*out):
            assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
            assert b["image"].is_contiguous() and b["image"].dtype == torch.float32


def test_ring_batches_equal_torch_path_across_epochs_abandoned_iterators_and_short_batches(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Workers writing batches into shared-memory slots (what a GPU run uses) give exactly the
    batches of the main process, over epochs, after an abandoned epoch, with a short last batch."""
    from geoseg.train import data as D
    from geoseg.train import ring as R

    cfg = _cfg(tmp_path, val_split=0.0, samples_per_epoch=22, batch_size=4, num_workers=2)
    with train_parts(cfg) as t:
        ds, chips = t.ds, t.chips
        assert len(chips) % cfg.batch_size  # a short last batch

        def maker() -> Any:
            return D.BatchMaker(t.grid, t.plan.lut, t.mean, t.std, regions=t.plan.train_regions,
                                clip=t.plan.clip_train, augment="d4", jitter=0.1, seed=3, on_device=True)

        bm = maker()
        loader = D.make_loader(ds, chips, bm, cfg, ring=True)
        assert bm._ring is not None and bm._ring.mask.dtype == torch.uint8
        got = {}
        for e in range(3):
            bm.set_epoch(e)
            batches = []
            for b in loader:
                assert set(b) == {"slot", "n"}  # only the slot number travels
                batches.append(bm.finish(b, "cpu"))
                if e == 1:
                    break  # abandoned: the workers' prefetched batches are dropped
            got[e] = batches
        ref = maker()
        ref_cfg = cfg.__class__(**{**cfg.__dict__, "num_workers": 0})
        for e in (0, 2):
            ref.set_epoch(e)
            want = [ref.finish(b) for b in D.make_loader(ds, chips, ref, ref_cfg)]
            assert [len(b["mask"]) for b in want] == [len(b["mask"]) for b in got[e]] == [4, 4, 4, 4, 4, 2]
            for a, b in zip(got[e], want):
                assert torch.equal(a["image"], b["image"]) and torch.equal(a["mask"], b["mask"])
                assert a["mask"].dtype == torch.long
        # slots that would page-lock more than the budget: torch's path instead, same batches
        monkeypatch.setattr(R, "MAX_BYTES", 1024)
        small = maker()
        assert not small.attach_ring(2, 2, 4, cfg.tile_size)
        small.set_epoch(2)
        plain = [small.finish(b) for b in D.make_loader(ds, chips, small, cfg, ring=True)]
        assert all(torch.equal(a["image"], b["image"]) for a, b in zip(plain, got[2]))


def test_persistent_workers_follow_the_epoch_seed(tmp_path: Path) -> None:
    """Workers live across epochs; set_epoch still reseeds their augmentation draws."""
    from geoseg.train import data as D

    cfg = _cfg(tmp_path, val_split=0.0, samples_per_epoch=8, num_workers=1)
    with train_parts(cfg) as t:
        ds, chips = t.ds, t.chips

        def maker() -> Any:
            return D.BatchMaker(t.grid, t.plan.lut, t.mean, t.std, regions=t.plan.train_regions,
                                clip=t.plan.clip_train, augment="d4", seed=3)

        bm = maker()
        loader = D.make_loader(ds, chips, bm, cfg)
        assert loader.persistent_workers
        epochs = []
        for e in range(2):
            bm.set_epoch(e)
            epochs.append([b["mask"] for b in loader])
        fresh = maker()
        fresh.set_epoch(1)
        again = [b["mask"] for b in D.make_loader(ds, chips, fresh, cfg)]
        assert all(torch.equal(a, b) for a, b in zip(epochs[1], again))
        assert not all(torch.equal(a, b) for a, b in zip(epochs[0], epochs[1]))


def test_validation_confusion_update_ignores_unlabelled_pixels() -> None:
    from geoseg.metrics import confusion_matrix
    from geoseg.train.losses import confusion_update

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 4, 5, 6, generator=g)
    target = torch.randint(0, 4, (3, 5, 6), generator=g)
    target[0, :2] = 255
    cm = torch.zeros(4, 4, dtype=torch.long)
    confusion_update(cm, logits, target)
    confusion_update(cm, logits, target)  # accumulates
    ok = (target != 255).numpy()
    want = confusion_matrix(target.numpy()[ok], logits.argmax(1).numpy()[ok], 4)
    assert np.array_equal(cm.numpy(), 2 * want) and cm.sum() == 2 * ok.sum()


def test_ema_weights_are_saved_and_resume_exactly(tmp_path: Path) -> None:
    """--ema: checkpoints hold the averaged weights, the raw ones resume bit for bit."""
    from geoseg.errors import UsageError
    from geoseg.train import train

    a = train(_cfg(tmp_path, "a.pt", ema=0.9))
    train(_cfg(tmp_path, "b.pt", ema=0.9, epochs=1))
    b2 = train(_cfg(tmp_path, "b.pt", ema=0.9, epochs=2, resume=True))
    sa, sb = _state(a.last), _state(b2.last)
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    extra = torch.load(a.last, map_location="cpu", weights_only=True)["extra"]
    raw, n = extra["raw_state"], extra["ema_n"]
    assert n == 4  # 2 epochs x 2 steps
    assert any(not torch.equal(sa[k], raw[k]) for k in sa if sa[k].is_floating_point())  # averaged != raw
    plain = _state(train(_cfg(tmp_path, "c.pt")).last)
    assert all(torch.equal(raw[k], plain[k]) for k in raw)  # EMA does not change the training itself
    with pytest.raises(UsageError, match="`ema`"):
        train(_cfg(tmp_path, "d.pt", ema=1.0))


@pytest.mark.parametrize("dice", [False, True])
@pytest.mark.parametrize("weighted", [False, True])
def test_segmentation_loss_equals_the_plain_formula(dice: bool, weighted: bool) -> None:
    """Cross entropy averaged over labelled pixels (class-weighted), plus 1 - soft Dice over
    the classes present; 0 with a graph when nothing is labelled; (N,C,H,W) or (P,C) inputs."""
    import torch.nn.functional as F

    from geoseg.train.losses import segmentation_loss

    g = torch.Generator().manual_seed(0)
    weight = torch.tensor([0.5, 2.0, 1.0]) if weighted else None
    logits = torch.randn(2, 3, 5, 4, generator=g, requires_grad=True)
    target = torch.randint(0, 2, (2, 5, 4), generator=g)  # class 2 absent
    target[0, :2] = 255
    for lg, tg in ((logits, target), (logits.permute(0, 2, 3, 1).reshape(-1, 3), target.flatten())):
        ok = tg != 255
        flat = lg if lg.dim() == 2 else lg.permute(0, 2, 3, 1)
        p_l, t_l = flat[ok], tg[ok]
        w = weight[t_l] if weight is not None else torch.ones(len(t_l))
        want = (F.cross_entropy(p_l, t_l, reduction="none") * w).sum() / w.sum()
        if dice:
            p, t = p_l.softmax(1), F.one_hot(t_l, 3).float()
            d = (2 * (p * t).sum(0) + 1) / (p.sum(0) + t.sum(0) + 1)
            want = want + (1 - d[t.sum(0) > 0]).mean()
        got = segmentation_loss(lg, tg, weight, dice)
        assert torch.allclose(got, want, rtol=1e-6, atol=1e-7)
        none = segmentation_loss(lg, torch.full_like(tg, 255), weight, dice)
        assert float(none) == 0.0 and none.requires_grad


def test_auto_workers(monkeypatch: pytest.MonkeyPatch) -> None:
    """No --num-workers: none on a CPU, up to 8 per GPU process on a GPU, a core left for each."""
    import os

    from geoseg.train import data as D

    assert D.auto_workers(torch.device("cpu")) == 0
    for cores, devices, want in [(16, 1, 8), (6, 1, 5), (1, 1, 0), (16, 2, 7), (64, 4, 8)]:
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid, n=cores: set(range(n)))
        assert D.auto_workers(torch.device("cuda"), devices) == want


class _CacheMax(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> int:
        from rasterio.env import get_gdal_config

        return int(get_gdal_config("GDAL_CACHEMAX"))


def test_workers_share_the_gdal_cache_budget(tmp_path: Path) -> None:
    """Each of n workers gets 1/n of the main process's GDAL_CACHEMAX (at least 64 MB)."""
    from rasterio.env import get_gdal_config

    from geoseg.train import data as D

    total = int(get_gdal_config("GDAL_CACHEMAX"))
    cfg = _cfg(tmp_path, batch_size=1, num_workers=2)
    got = [int(b[0]) for b in D.make_loader(_CacheMax(), list(range(4)), lambda s: s, cfg)]
    assert got == [max(64 << 20, total // 2)] * 4
    assert int(get_gdal_config("GDAL_CACHEMAX")) == total  # the main process keeps its own


def test_ring_budget_follows_ram_and_free_shared_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Slots are page-locked and live in /dev/shm: at most 2 GiB, RAM/16 and half of /dev/shm's free space."""
    import os

    from geoseg.train import ring as R

    class _St:
        f_bavail, f_frsize = 1000, 4096  # 4 MB free, as in a container's small /dev/shm

    assert R.ring_budget() <= R.MAX_BYTES
    monkeypatch.setattr(os, "statvfs", lambda p: _St())
    assert R.ring_budget() == 2048000
    assert R.ring_bytes(8, 2, 16, (68, 64, 64), torch.uint8) == 8 * 3 * (16 * 68 * 64 * 64 * 4 + 16 * 64 * 64)


# ---------------------------------------------------------------------- pixel sampling
def test_pixel_table_holds_exactly_the_training_polygons_pixels(tmp_path: Path) -> None:
    """The training table of polygons: the pixels whose centres lie in a training polygon (rasterized whole
    here, window by window there), with their raw band values; none of a validation polygon."""
    import geopandas as gpd
    from rasterio.features import rasterize

    from geoseg.io.labels import class_key
    from geoseg.train import data as D
    from geoseg.train.data.pixels import read_pixel_table

    from geoseg.train import TrainConfig

    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(shared_file(BR_POLY)), class_field="class",
                      arch="tempcnn", tile_size=16, val_split=0.2).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    try:
        codes = plan.split["codes"]
        with rasterio.open(cfg.images[0]) as ds:
            img = ds.read()
        for part, src in (("train", plan.train_source), ("val", plan.val_source)):
            t = read_pixel_table(grid, plan, part, class_field="class", seed=0)
            g = gpd.read_parquet(src).to_crs(grid.crs)
            ref = rasterize(((geom, codes[class_key(v)]) for geom, v in zip(g.geometry, g["class"])),
                            out_shape=(grid.height, grid.width), transform=grid.transform, fill=0, dtype="int32")
            valid = (img != 255).all(axis=0)  # the file's nodata
            y = plan.lut[ref]
            ok = (y != 255) & valid
            assert len(t) == ok.sum() > 0 and (t.counts == np.bincount(y[ok], minlength=len(t.counts))).all()
            # the same (values, class) rows, in any order
            want = np.c_[img[:, ok].T.astype(np.float32), y[ok]]
            got = np.c_[t.x, t.y]
            assert (np.unique(want, axis=0) == np.unique(got, axis=0)).all()
    finally:
        plan.close()


def test_pixel_table_cuts_raster_labels_to_their_blocks_and_caps_each_class() -> None:
    """Raster labels: the training table holds the labelled pixels of the training blocks only (the plan's
    counts); with a cap, each class keeps at most that many, while ``counts`` keeps the full numbers."""
    from geoseg.train import TrainConfig
    from geoseg.train import data as D
    from geoseg.train.data.pixels import read_pixel_table

    cfg = TrainConfig(images=[str(shared_file(SLO_IMG))], labels=str(shared_file(SLO_LAB)), arch="tempcnn",
                      sampling="pixels", tile_size=16, val_split=0.2).validate()
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    assert plan.val_regions and cfg.block_size == 32
    full = read_pixel_table(grid, plan, "train", class_field=None, seed=0, ignore_values=(0,))
    assert (full.counts == plan.train_counts).all() and len(full) == plan.train_counts.sum()
    val = read_pixel_table(grid, plan, "val", class_field=None, seed=0, ignore_values=(0,))
    assert len(val) > 0 and len(val) + len(full) <= (101 * 100)
    capped = read_pixel_table(grid, plan, "train", class_field=None, seed=0, ignore_values=(0,), cap=50)
    per = np.bincount(capped.y, minlength=len(plan.schema))
    assert (per == np.minimum(plan.train_counts, 50)).all() and (capped.counts == plan.train_counts).all()
    # a capped class keeps a sample of its own rows
    rows = {tuple(r) for r in full.x[full.y == 0]}
    assert all(tuple(r) in rows for r in capped.x[capped.y == 0])


def test_pixel_table_with_a_context_gives_the_model_each_pixels_own_neighbourhood() -> None:
    """``context`` 7 on raster labels: each row holds the pixel's values and the mean of its 7 x 7 pixels
    (beyond the image they do not count, as on a tile); as a chip, the TempCNN gives it the same logits
    as on the whole image there."""
    import torch.nn.functional as F

    from geoseg.models.tempcnn import TempCNN
    from geoseg.train import TrainConfig
    from geoseg.train import data as D
    from geoseg.train.data.batches import BatchMaker
    from geoseg.train.data.pixel_batches import PixelBatches
    from geoseg.train.data.pixels import read_pixel_table

    cfg = TrainConfig(images=[str(shared_file(SLO_IMG))], labels=str(shared_file(SLO_LAB)), arch="tempcnn",
                      context=7, sampling="pixels", val_split=0).validate()
    assert cfg.pixels
    grid = D.image_grid(cfg.images)
    plan = D.plan_labels(cfg, grid)
    with rasterio.open(cfg.images[0]) as ds:
        img = ds.read().astype(np.float64)
    bands = img.shape[0]
    mean = img.mean(axis=(1, 2))
    std = img.std(axis=(1, 2)) + 1e-6
    t = read_pixel_table(grid, plan, "train", class_field=None, seed=0, ignore_values=(0,), context=7, fill=mean)
    one = read_pixel_table(grid, plan, "train", class_field=None, seed=0, ignore_values=(0,))
    assert t.context == 7 and t.x.shape == (len(one), 2 * bands) and (t.y == one.y).all()
    assert (t.x[:, :bands] == one.x).all()
    # brute force: the 7 x 7 mean over the pixels inside the image
    box = F.avg_pool2d(torch.from_numpy(img)[None], 7, stride=1, padding=3, count_include_pad=False)[0].numpy()
    rows = {tuple(r): i for i, r in enumerate(img.reshape(bands, -1).T.astype(np.float32))}
    at = np.array([rows[tuple(r)] for r in t.x[:, :bands]])  # each row's pixel (the series are distinct)
    want = box.reshape(bands, -1)[:, at].T
    assert np.abs(t.x[:, bands:] - want).max() <= 1e-4 * np.abs(want).max()
    # the same logits as on the whole normalized image
    torch.manual_seed(0)
    net = TempCNN(bands, len(plan.schema), bands_per_date=1, context=7).eval()
    norm = ((img - mean[:, None, None]) / std[:, None, None]).astype(np.float32)
    with torch.no_grad():
        whole = net(torch.from_numpy(norm)[None])[0].reshape(len(plan.schema), -1)[:, at].T
        bm = BatchMaker(grid, list(range(len(plan.schema))), mean.tolist(), std.tolist())
        got = torch.cat([net(b["image"], pixels=(b["mask"].flatten() != 255).nonzero().squeeze(1))
                         for b in PixelBatches(t, bm, 512, balance=None)])
    assert torch.allclose(got, whole, atol=1e-4), float((got - whole).abs().max())
    plan.close()


def test_pixel_batches_draw_classes_by_the_square_root_of_their_pixels() -> None:
    """Class-balanced draws: class c with probability sqrt(n_c) / sum sqrt(n); the same seed and epoch draw the
    same batches; validation batches hold every pixel once."""
    from geoseg.train.data.batches import BatchMaker
    from geoseg.train.data.grid import ImageGrid
    from geoseg.train.data.pixel_batches import PixelBatches
    from geoseg.train.data.pixels import PixelTable
    from affine import Affine

    counts = np.array([10_000, 100, 900])
    y = np.repeat(np.arange(3), counts)
    x = np.c_[y, -y].astype(np.float32)
    table = PixelTable(x, y, counts)
    grid = ImageGrid(("a.tif",), None, Affine.identity(), 1, 1, ("a", "b"), (float("nan"),) * 2)
    bm = BatchMaker(grid, [0, 1, 2], [0.0, 0.0], [1.0, 1.0])
    batches = PixelBatches(table, bm, 512, 40, seed=3)
    ys = torch.cat([b["mask"].flatten() for b in batches]).numpy()
    xs = torch.cat([b["image"][:, 0, 0, 0] for b in batches]).numpy()
    assert (xs == ys).all()  # each pixel's own values come with its class
    p = np.sqrt(counts) / np.sqrt(counts).sum()
    assert np.abs(np.bincount(ys, minlength=3) / len(ys) - p).max() < 0.02
    again = torch.cat([b["mask"].flatten() for b in PixelBatches(table, bm, 512, 40, seed=3)]).numpy()
    assert (again == ys).all()
    bm.set_epoch(1)
    assert (torch.cat([b["mask"].flatten() for b in batches]).numpy() != ys).any()
    val = PixelBatches(table, BatchMaker(grid, [0, 1, 2], [0.0, 0.0], [1.0, 1.0]), 4096, balance=None)
    assert len(val) == 3 and (torch.cat([b["mask"].flatten() for b in val]).numpy() == y).all()


def test_default_training_on_polygons_is_per_pixel_says_so_and_round_trips_into_infer(tmp_path: Path) -> None:
    """The defaults on polygons: tempcnn on the labelled pixels (said in one line, recorded in the checkpoint),
    no validation split, the whole schedule run and the last epoch kept; with a validation split, it is scored
    every epoch but steers nothing; the model classifies the image in geoseg infer."""
    from geoseg.models import read_meta
    from geoseg.pipeline import predict_raster
    from geoseg.train import TrainConfig, train

    said: list[str] = []
    cfg = TrainConfig(images=[str(shared_file(BR_IMG))], vector_labels=str(shared_file(BR_POLY)), class_field="class",
                      output=str(tmp_path / "m.pt"), epochs=3, patience=1, samples_per_epoch=8192)
    report = train(cfg, on_message=said.append)
    assert said[0].startswith("--arch auto: tempcnn (bands_per_date 7, members 3)")
    assert "no validation split; then a spatial 3-fold cross-validation estimates its accuracy" in said[0]
    assert len(said) > 1 and not any(line.startswith("--arch") for line in said[1:])  # the folds' own progress
    meta = read_meta(report.output)
    assert meta.arch == "tempcnn" and meta.training["auto"] == said[0]
    assert meta.arch_args["members"] == 3 and meta.training["config"]["cv"] == 3
    cv = meta.training["spatial_cv"]
    assert report.cross_validation is not None and cv["folds"] == 3 and 0.5 < cv["overall_accuracy"] <= 1
    assert meta.training["config"]["sampling"] == "pixels" and meta.training["config"]["batch_size"] == 256
    assert meta.training["config"]["val_split"] == 0.0
    assert meta.training["pixel_tables"]["train"] > 0 and meta.training["pixel_tables"]["val"] == 0
    assert report.epochs_run == 3 and report.best_epoch == 2
    held = train(TrainConfig(**{**cfg.to_dict(), "output": str(tmp_path / "v.pt"), "val_split": 0.2, "cv": 0}))
    assert held.epochs_run == 3 and held.best_epoch == 2  # no early stop (patience 1), the last epoch kept
    assert read_meta(held.output).training["pixel_tables"]["val"] > 0 and held.val_metrics is not None
    predict_raster(shared_file(BR_IMG), report.output, tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        c = ds.read(1)
    assert set(np.unique(c)) <= set(meta.schema.ids) and len(np.unique(c)) >= 3


def test_two_dimensional_networks_train_in_channels_last_on_a_cpu_too():
    """oneDNN's convolutions prefer channels_last (a U-Net step 1.2x faster on 2 cores); per-pixel
    networks keep their own layout (channels_last breaks their reshapes)."""
    import torch

    from geoseg.train import TrainConfig
    from geoseg.train.loop import _channels_last

    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert _channels_last(TrainConfig(images=["a.tif"], labels="l.tif", arch="unet"), cpu)
    assert _channels_last(TrainConfig(images=["a.tif"], labels="l.tif", arch="smp-unet"), cpu)
    assert not _channels_last(TrainConfig(images=["a.tif"], labels="l.tif", arch="tempcnn"), cpu)
    assert _channels_last(TrainConfig(images=["a.tif"], labels="l.tif", arch="tempcnn"), cuda)
