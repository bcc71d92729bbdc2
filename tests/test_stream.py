"""The device stages (geoseg.predict.stream) and the row-band reader (geoseg.pipeline.read), on the CPU."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from geoseg.classes import ClassSchema
from geoseg.io.raster import open_raster, read_window
from geoseg.models.meta import ModelMeta
from geoseg.pipeline import predict_raster
from geoseg.pipeline.plan import plan_run
from geoseg.pipeline.read import BufferPool, RowBandReader, _chunks
from geoseg.tiling import TileGrid, column_strips

from conftest import shared_file


def test_chunks_fall_on_blocks_and_cover_the_range():
    for lo, hi, block, n in [(0, 1000, 256, 3), (100, 1900, 512, 8), (5, 6, 512, 4), (0, 512, 512, 2)]:
        pieces = _chunks(lo, hi, block, n)
        assert pieces[0][0] == lo and pieces[-1][1] == hi and len(pieces) <= n
        assert all(a < b for a, b in pieces)
        assert all(b == c for (_, b), (c, _) in zip(pieces[:-1], pieces[1:]))
        assert all(b % block == 0 for _, b in pieces[:-1])


@pytest.mark.parametrize("tiled,compress", [(True, None), (True, "deflate"), (False, None), (False, "deflate")])
@pytest.mark.parametrize("kind", ["uint16", "float32-nan", "masked"])
def test_reader_threads_equal_one_plain_read(make_raster, tmp_path, tiled, compress, kind):
    """Row bands read with 3 threads = read_window of the whole band: in block-aligned chunks by 3 threads,
    or, for a compressed tiled GeoTIFF, through one handle whose blocks GDAL decodes on 3 threads."""
    rng = np.random.default_rng(3)
    h, w = 300, 700
    if kind == "uint16":
        data, nodata = rng.integers(0, 60000, size=(3, h, w), dtype=np.uint16), None
    elif kind == "float32-nan":
        data, nodata = rng.normal(size=(3, h, w)).astype(np.float32), None
        data[1, 10:40, 600:] = np.nan  # one tile's worth of non-finite values in one band
        data[:, 200:, :] = np.nan
    else:
        data, nodata = rng.integers(1, 200, size=(3, h, w)).astype(np.int16), 0
        data[:, :, :300] = 0
    prof = dict(tiled=True, blockxsize=128, blockysize=128) if tiled else {}
    src = make_raster(data, nodata=nodata, compress=compress, **prof)
    grid = TileGrid(h, w, 96, 16)
    plan = plan_run(grid, column_strips(w, 96, 16, 320))
    with open_raster(src) as ds:
        reader = RowBandReader(ds, [1, 2, 3], plan, threads=3, ahead=1)
        assert (reader.decode_threads, reader.threads) == ((3, 1) if tiled and compress else (1, 3))
        n = skipped = 0
        for band in reader:
            job = band.job
            ww = min(job.cols[-1] + 96, w) - job.col_lo
            ref, valid = read_window(ds, [1, 2, 3], Window(job.col_lo, job.row, ww, job.height), native=True)
            np.testing.assert_array_equal(band.data, ref)
            if kind == "uint16":
                assert band.valid is None
            else:
                np.testing.assert_array_equal(band.valid != 0, valid)
            anyv = valid.any(axis=0)
            expect = tuple(bool(anyv[:, c - job.col_lo: min(c + 96, w) - job.col_lo].any()) for c in job.cols)
            assert band.tile_has_data == expect
            band.release(reader.buffers)
            n += 1
            skipped += expect.count(False)
    assert n == len(plan.jobs)
    assert (skipped > 0) == (kind != "uint16")  # the nodata and NaN regions hold whole tiles


def test_buffer_pool_is_bounded_and_reuses():
    pool = BufferPool(2)
    a, ta = pool.take(10)
    b, tb = pool.take(10)
    got = []
    t = threading.Thread(target=lambda: got.append(pool.take(5)))
    t.start()
    t.join(0.3)
    assert t.is_alive() and not got  # two out: the third waits
    pool.give(ta)
    t.join(5)
    assert got and got[0][0] is a  # the given-back buffer, reused
    big, _ = (pool.give(tb), pool.take(5 * 2**20))[1]
    assert big.size >= 5 * 2**20


class _Pointwise:
    """softmax(W x + b) per pixel as a torch module: a fixed function, so tiled = whole-image."""

    def __init__(self, bands: int, classes: int, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(classes, bands))
        self.b = rng.normal(size=classes)

    def probs(self, x: np.ndarray) -> np.ndarray:
        z = np.einsum("kb,bhw->khw", self.w, x.astype(np.float64)) + self.b[:, None, None]
        e = np.exp(z - z.max(axis=0, keepdims=True))
        return e / e.sum(axis=0, keepdims=True)


def _unet_checkpoint(tmp_path, seed: int = 1):
    torch = pytest.importorskip("torch")
    from geoseg.models import build_model, save_checkpoint

    torch.manual_seed(seed)
    net = build_model("unet", 8, 4, base_channels=8, depth=2)
    meta = ModelMeta("unet", {"base_channels": 8, "depth": 2}, [f"b{i}" for i in range(8)], [1500.0] * 8,
                     [1000.0] * 8, ClassSchema.default(4), 128, 32)
    return save_checkpoint(net, meta, tmp_path / "m.pt")


def test_float32_blending_matches_the_float64_reference(tmp_path):
    """The GPU's float32 sums against the float64 reference, on the CPU: classes equal on >= 99.99% of
    pixels, the others near-ties; probabilities within 1/255."""
    src = shared_file("ftw_baselines/inference-img.tif")
    ckpt = _unet_checkpoint(tmp_path)
    out = {}
    for acc in ("float64", "float32"):
        predict_raster(src, ckpt, tmp_path / f"c_{acc}.tif", probabilities=tmp_path / f"p_{acc}.tif",
                       probability_dtype="float32", device="cpu", accumulate=acc, tile_size=64, overlap=32)
        with rasterio.open(tmp_path / f"c_{acc}.tif") as c, rasterio.open(tmp_path / f"p_{acc}.tif") as p:
            out[acc] = c.read(1), p.read()
    c64, p64 = out["float64"]
    c32, p32 = out["float32"]
    same = c64 == c32
    assert same.mean() >= 0.9999
    top = np.sort(p64[:4], axis=0)
    margin = top[-1] - top[-2]
    assert (margin[~same] < 1e-5).all()  # only near-ties may flip
    assert np.abs(p64 - p32).max() <= 1 / 255
    assert np.abs(p64 - p32).max() < 1e-5  # in fact far closer


def test_torch_and_numpy_predictors_give_the_same_rasters(make_raster, tmp_path):
    """A predictor with forward_tensor (device stages end to end) and the same function through
    the numpy Predictor protocol write the same classes and probabilities."""
    pytest.importorskip("torch")
    from geoseg.predict.null import NullPredictor

    data = np.random.default_rng(0).normal(size=(3, 70, 90)).astype(np.float32)
    src = make_raster(data)
    meta = ModelMeta("pointwise", {}, ["a", "b", "c"], [0.0] * 3, [1.0] * 3, ClassSchema.default(3), 32, 8)
    null = NullPredictor(meta)

    class AsNumpy:
        def __init__(self) -> None:
            self.meta = meta

        def predict(self, batch):
            return null.predict(batch)

    for name, p in (("t", null), ("n", AsNumpy())):
        predict_raster(src, p, tmp_path / f"{name}.tif", probabilities=tmp_path / f"{name}_p.tif")
    with rasterio.open(tmp_path / "t_p.tif") as a, rasterio.open(tmp_path / "n_p.tif") as b:
        np.testing.assert_array_equal(a.read(), b.read())
        assert np.isin(a.read(1), [42, 43]).all() and (a.read(3) == round(255 / 2)).all()  # 1/6, 2/6, 3/6


def test_uint16_values_above_int16_reach_the_model_unchanged(make_raster, tmp_path):
    """uint16 travels as int16 bits and is widened on the device: 40000 must stay 40000."""
    data = np.full((1, 20, 20), 40000, np.uint16)
    data[0, :, 10:] = 100
    src = make_raster(data)
    seen = []

    class Probe:
        meta = ModelMeta("pointwise", {}, ["a"], [0.0], [1.0], ClassSchema.default(2), 32, 0)

        def predict(self, batch):
            seen.append(batch.copy())
            p = np.zeros((len(batch), 2, *batch.shape[2:]), np.float32)
            p[:, 0] = batch[:, 0] > 1000
            p[:, 1] = 1 - p[:, 0]
            return p

    predict_raster(src, Probe(), tmp_path / "c.tif")
    assert seen[0][0, 0, 0, 0] == 40000.0 and seen[0][0, 0, 0, 15] == 100.0
    with rasterio.open(tmp_path / "c.tif") as ds:
        c = ds.read(1)
    assert (c[:, :10] == 0).all() and (c[:, 10:] == 1).all()


def test_values_beyond_float32_are_nodata_with_a_warning(make_raster, tmp_path):
    """A float64 pixel of 1e39 made whole blocks class 0 with exit 0 (issue 21)."""
    from geoseg.errors import NodataWarning

    data = np.random.default_rng(1).normal(size=(2, 30, 30))
    data[1, 5, 7] = 1e39
    src = make_raster(data.astype(np.float64))
    meta = ModelMeta("pointwise", {}, ["a", "b"], [0.0] * 2, [1.0] * 2, ClassSchema.default(2), 16, 4)

    class Sign:
        def __init__(self) -> None:
            self.meta = meta

        def predict(self, batch):
            assert np.isfinite(batch).all()
            p = (batch[:, :1] > 0).astype(np.float32)
            return np.concatenate([p, 1 - p], axis=1)

    with pytest.warns(NodataWarning, match="1 pixel holds values beyond float32's range"):
        predict_raster(src, Sign(), tmp_path / "c.tif")
    with rasterio.open(tmp_path / "c.tif") as ds:
        c = ds.read(1)
    expect = np.where(data[0] > 0, 0, 1)
    expect[5, 7] = 255
    np.testing.assert_array_equal(c, expect)


@pytest.mark.parametrize("acc", ["auto", "float64"])
def test_non_finite_model_outputs_are_nodata_with_a_warning(make_raster, tmp_path, acc):
    """A model that gives NaN (or infinity) near an undeclared extreme fill value: those pixels were class 0,
    while the float32 probabilities called them nodata (NaN). Now nodata in both, with a warning."""
    from geoseg.errors import NodataWarning

    data = np.random.default_rng(2).normal(size=(2, 40, 36)).astype(np.float32)
    data[:, 10:13, 20:22] = -3.4e38  # an undeclared float32 fill
    src = make_raster(data)
    meta = ModelMeta("pointwise", {}, ["a", "b"], [0.0] * 2, [1.0] * 2, ClassSchema.default(2), 16, 4)

    class Spreads:  # like a convolution: a NaN spreads one pixel around the fill
        def __init__(self) -> None:
            self.meta = meta

        def predict(self, batch):
            p = (batch[:, :1] > 0).astype(np.float32)
            out = np.concatenate([p, 1 - p], axis=1)
            bad = np.abs(batch).max(axis=1) > 1e30
            bad[:, 1:] |= bad[:, :-1].copy()
            bad[:, :, 1:] |= bad[:, :, :-1].copy()
            out[:, 0][bad] = np.nan
            out[:, 1][bad & (np.arange(bad.shape[-1]) % 2 == 0)] = np.inf
            return out

    with pytest.warns(NodataWarning, match="NaN or infinite probabilities for 12 pixels"):
        predict_raster(src, Spreads(), tmp_path / "c.tif", probabilities=tmp_path / "p.tif",
                       probability_dtype="float32", accumulate=acc)
    with rasterio.open(tmp_path / "c.tif") as ds:
        c = ds.read(1)
    with rasterio.open(tmp_path / "p.tif") as ds:
        p = ds.read()
    bad = np.zeros(c.shape, bool)
    bad[10:14, 20:23] = True
    assert (c[bad] == 255).all() and np.isnan(p[:, bad]).all()
    expect = np.where(data[0] > 0, 0, 1)
    np.testing.assert_array_equal(c[~bad], expect[~bad])
    assert np.isfinite(p[:, ~bad]).all()


def test_checkpoint_normalization_must_be_finite():
    from geoseg.errors import CheckpointError

    for mean, std in [([0.0, 0.0], [1.0, float("nan")]), ([float("inf"), 0.0], [1.0, 1.0]), ([0.0, 0.0], [1.0, 0.0])]:
        with pytest.raises(CheckpointError, match="normalization"):
            ModelMeta("pointwise", {}, ["a", "b"], mean, std, ClassSchema.default(2), 16, 4)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_row_blender_matches_the_numpy_reference_accumulator(dtype):
    """RowBlender (torch, the production path) against RowBandAccumulator (numpy float64, the reference):
    random tiles, weights and validity, added and popped band by band."""
    torch = pytest.importorskip("torch")
    from geoseg.blend import RowBandAccumulator
    from geoseg.predict.stream import RowBlender

    rng = np.random.default_rng(5)
    k, height, width, col0 = 4, 24, 70, 10
    ref = RowBandAccumulator(k, height, width, col0=col0)
    blend = RowBlender(k, height, width, col0, 0, torch.device("cpu"), getattr(torch, dtype))
    base = 0
    for step in range(6):
        for _ in range(5):
            h, w = rng.integers(4, height + 1), rng.integers(4, 40)
            row, col = base + rng.integers(0, height - h + 1), col0 + rng.integers(-10, width)
            p = rng.dirichlet(np.ones(k), size=(h, w)).transpose(2, 0, 1).astype(np.float32)
            wt = rng.uniform(1e-3, 1, size=(h, w)).astype(np.float32)
            v = rng.random((h, w)) > 0.2
            ref.add(p, wt, row, col, v)
            blend.add(torch.from_numpy(p), torch.from_numpy(wt), row, col, torch.from_numpy(v))
        base += int(rng.integers(1, 9))
        c_ref, p_ref, v_ref = ref.pop_rows(base)
        c, p, v = blend.pop(base, 0, probabilities=True)
        np.testing.assert_array_equal(v.numpy(), v_ref)
        np.testing.assert_allclose(p.numpy()[:, v_ref], p_ref[:, v_ref], atol=1e-6 if dtype == "float64" else 1e-5)
        same = c.numpy()[v_ref] == c_ref[v_ref]
        assert same.mean() == 1.0 if dtype == "float64" else same.mean() >= 0.999


def test_cpu_tile_by_tile_path_equals_the_whole_band_path(make_raster, tmp_path, monkeypatch):
    """On a CPU, tiles are normalized and masked straight into the batch buffer (``_push_tiles``); the
    whole-band path (kept for padding, float64 input and GPUs) must give the same bytes, nodata included."""
    torch = pytest.importorskip("torch")
    from geoseg.predict.stream import StreamRunner

    rng = np.random.default_rng(3)
    data = rng.integers(0, 3000, size=(3, 150, 170)).astype(np.uint16)
    data[:, 20:40, 30:90] = 0  # a nodata hole across tiles
    data[1, 100:110, 5:15] = 0  # one band's nodata only
    src = make_raster(data, nodata=0)
    w = torch.as_tensor(rng.normal(size=(4, 3)) / 1000, dtype=torch.float32)

    class Pointwise:
        meta = ModelMeta("pointwise", {}, ["a", "b", "c"], [1500.0] * 3, [800.0] * 3, ClassSchema.default(4), 64, 16)
        device = "cpu"

        def forward_tensor(self, x):
            return torch.einsum("kb,nbhw->nkhw", w * 800, x).softmax(dim=1)

    calls = {"tiles": 0}
    tiles = StreamRunner._push_tiles

    def counted(self, *a):
        calls["tiles"] += 1
        return tiles(self, *a)

    monkeypatch.setattr(StreamRunner, "_push_tiles", counted)
    out = {}
    for how in ("tiles", "band"):
        if how == "band":
            monkeypatch.setattr(StreamRunner, "_push_tiles",
                                lambda self, job, band, raw, valid: self._push_band(job, band, raw, valid,
                                                                                    self.plan.band_width(job)))
        predict_raster(src, Pointwise(), tmp_path / f"{how}.tif", probabilities=tmp_path / f"{how}_p.tif",
                       probability_dtype="float32", batch_size=3)
        with rasterio.open(tmp_path / f"{how}.tif") as c, rasterio.open(tmp_path / f"{how}_p.tif") as p:
            out[how] = c.read(), p.read()
    assert calls["tiles"] > 0  # the first run took the tile-by-tile path
    np.testing.assert_array_equal(out["tiles"][0], out["band"][0])
    np.testing.assert_array_equal(out["tiles"][1], out["band"][1])
    assert (out["tiles"][0][0, 25:35, 40:80] == 255).all()  # the hole is nodata, not a class
    assert len(np.unique(out["tiles"][0])) > 2


@pytest.mark.parametrize("k", [1, 2, 3, 5, 12])
def test_cpu_argmax_is_the_first_maximum_and_looks_up_class_values(k):
    """``_argmax0`` (uint8 arithmetic on a CPU) equals torch's argmax, the first of equal maxima, with
    noisy and tied sums, and class values in any order (their differences wrap around 256)."""
    torch = pytest.importorskip("torch")
    from geoseg.predict.stream import _argmax0

    g = torch.Generator().manual_seed(k)
    for trial in range(10):
        s = (torch.randint(0, 3, (k, 19, 37), generator=g).float() if trial % 2
             else torch.rand((k, 19, 37), generator=g))  # ties, then noise
        values = torch.randperm(256, generator=g)[:k].to(torch.uint8)
        first = torch.stack([(s[c] == s.amax(dim=0)) & ~(s[:c] == s.amax(dim=0)).any(dim=0) for c in range(k)]
                            ).to(torch.int64).argmax(dim=0)
        assert torch.equal(_argmax0(s).long(), first)
        assert torch.equal(_argmax0(s, values), values[first])


def test_default_read_threads(make_raster):
    """On a CPU two threads only where GDAL decodes the blocks on threads and the model has two or more
    (a one-thread Dask worker keeps one); with a GPU all cores but two."""
    import os

    from geoseg.pipeline.read import default_read_threads

    data = np.zeros((2, 300, 300), np.uint16)
    tiled = dict(tiled=True, blockxsize=128, blockysize=128)
    cases = {make_raster(data, "deflate.tif", compress="deflate", **tiled): 2,
             make_raster(data, "none.tif", **tiled): 1,
             make_raster(data, "striped.tif", compress="deflate"): 1}
    for path, want in cases.items():
        with open_raster(path) as ds:
            assert default_read_threads(ds, on_gpu=False, model_threads=4) == want, path.name
            assert default_read_threads(ds, on_gpu=False, model_threads=1) == 1
            assert default_read_threads(ds, on_gpu=True, model_threads=1) == min(16, max(1, (os.cpu_count() or 1) - 2))


def test_a_damaged_tile_read_by_gdals_decoding_threads_is_one_clear_error(tmp_path):
    """A compressed tiled input is decoded on GDAL's threads (the CPU default reads it on 2); a damaged
    block there still fails the run with one error that names the file, and leaves no output."""
    from pathlib import Path

    from geoseg.errors import RasterReadError
    from geoseg.models.demo import DEMO_MODEL

    field = Path(__file__).resolve().parents[1] / "sample_data" / "field.tif"
    src = tmp_path / "damaged.tif"
    with rasterio.open(field) as ds:
        data, prof = ds.read(), ds.profile
    prof.update(tiled=True, blockxsize=64, blockysize=64, compress="deflate", interleave="pixel")
    with rasterio.open(src, "w", **prof) as out:
        out.write(data)
    with rasterio.open(src) as ds:
        off, size = (int(ds.get_tag_item(f"BLOCK_{k}_2_2", "TIFF", bidx=1)) for k in ("OFFSET", "SIZE"))
    raw = bytearray(src.read_bytes())
    for i in range(off + 2, off + size - 4):
        raw[i] ^= 0x5A
    src.write_bytes(bytes(raw))
    with pytest.raises(RasterReadError, match="damaged.tif.*read failed"):
        predict_raster(src, DEMO_MODEL, tmp_path / "c.tif", read_threads=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["damaged.tif"]
