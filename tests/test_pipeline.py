"""predict_raster: exact blending, agreement with a whole-image pass, nodata, outputs."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from geoseg.classes import ClassSchema
from geoseg.models.meta import ModelMeta
from geoseg.pipeline import predict_raster

from conftest import shared_file


class PointwiseModel:
    """A fixed per-pixel function (softmax of a linear map): its whole-image result is known exactly."""

    def __init__(self, bands: int, classes: int, depth: int = 0, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.w = rng.normal(size=(classes, bands)).astype(np.float64)
        self.b = rng.normal(size=classes)
        self.meta = ModelMeta(arch="unet" if depth else "pointwise", arch_args={"depth": depth} if depth else {},
                              bands=[f"b{i}" for i in range(bands)], mean=[0.0] * bands, std=[1.0] * bands,
                              schema=ClassSchema.default(classes), tile_size=16, overlap=4)
        self.calls = 0

    def probs(self, x: np.ndarray) -> np.ndarray:
        """x (bands, h, w) -> (classes, h, w)."""
        z = np.einsum("kb,bhw->khw", self.w, x.astype(np.float64)) + self.b[:, None, None]
        z -= z.max(axis=0, keepdims=True)
        e = np.exp(z)
        return e / e.sum(axis=0, keepdims=True)

    def predict(self, batch: np.ndarray) -> np.ndarray:
        self.calls += len(batch)
        return np.stack([self.probs(x) for x in batch]).astype(np.float32)


@st.composite
def layout(draw):
    depth = draw(st.sampled_from([0, 1, 3]))
    align = 2 ** depth
    size = align * draw(st.integers(max(1, 4 // align), 48 // align))
    overlap = draw(st.integers(0, size - align))
    h = draw(st.integers(1, 90))
    w = draw(st.integers(1, 90))
    blend = draw(st.sampled_from(["hann", "triangular", "uniform", "crop"]))
    strip = draw(st.sampled_from([256, 24]))
    batch = draw(st.integers(1, 5))
    return depth, size, overlap, h, w, blend, strip, batch


@given(layout())
@example(case=(0, 7, 6, 26, 27, "triangular", 256, 1))  # 7 tiles over a pixel: float32 sums were off by 1.1e-6
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_blending_reproduces_fixed_function_exactly(make_raster, tmp_path_factory, case):
    depth, size, overlap, h, w, blend, strip, batch = case
    rng = np.random.default_rng(h * 1000 + w)
    data = rng.normal(size=(3, h, w)).astype(np.float32)
    src = make_raster(data, name=f"in_{h}_{w}.tif")
    out = tmp_path_factory.mktemp("o")
    model = PointwiseModel(3, 4, depth)
    expected = model.probs(data)
    # float64 sums: the exactness reference; float32 (the default on every device): within 1e-5
    for acc, atol in (("float64", 1e-6), ("auto", 1e-5)):
        predict_raster(src, model, out / "c.tif", probabilities=out / "p.tif", probability_dtype="float32",
                       tile_size=size, overlap=overlap, blend=blend, batch_size=batch, max_strip_width=strip,
                       accumulate=acc, overwrite=True)
        with rasterio.open(out / "p.tif") as ds:
            got = ds.read()
        np.testing.assert_allclose(got[:4], expected, atol=atol)
        np.testing.assert_allclose(got[4], expected.max(axis=0), atol=atol)
        with rasterio.open(out / "c.tif") as ds:
            cls = ds.read(1)
        assert (cls == expected.argmax(axis=0)).mean() > 0.999  # argmax ties at float precision aside


def test_unet_tiled_matches_whole_image(tmp_path):
    """A real fully-convolutional U-Net on a real Sentinel-2 scene: tiled+blended vs one forward pass."""
    torch = pytest.importorskip("torch")
    from geoseg.models import build_model, save_checkpoint

    src = shared_file("ftw_baselines/inference-img.tif")
    from geoseg.io.stats import band_stats

    mean, std = band_stats([src])
    torch.manual_seed(0)
    net = build_model("unet", 8, 3, base_channels=16, depth=3).eval()
    meta = ModelMeta("unet", {"base_channels": 16, "depth": 3}, [f"b{i}" for i in range(8)], mean, std,
                     ClassSchema.default(3))
    ckpt = save_checkpoint(net, meta, tmp_path / "m.pt")
    with rasterio.open(src) as ds:
        x = ((ds.read().astype("float32") - np.array(mean, "float32")[:, None, None])
             / np.array(std, "float32")[:, None, None])
    h, w = x.shape[1:]
    xp = np.pad(x, ((0, 0), (0, (-h) % 8), (0, (-w) % 8)), mode="reflect")
    with torch.inference_mode():
        whole = net(torch.from_numpy(xp)[None])[0, :, :h, :w].argmax(0).numpy()
    rep = predict_raster(src, ckpt, tmp_path / "c.tif", device="cpu")  # default tile 256, overlap 64, hann
    assert rep.tiles_run == 6
    with rasterio.open(tmp_path / "c.tif") as ds:
        tiled = ds.read(1)
    agreement = (tiled == whole).mean()
    assert agreement >= 0.999, agreement


def test_outputs_georeferenced_cog_with_schema(tmp_path):
    from rio_cogeo.cogeo import cog_validate

    src = shared_file("ftw_baselines/inference-img.tif")
    model = PointwiseModel(8, 3, depth=3)
    model.meta = ModelMeta("unet", {"depth": 3}, model.meta.bands, [1000.0] * 8, [1000.0] * 8,
                           ClassSchema.from_names(["background", "field", "boundary"]), 64, 16)
    rep = predict_raster(src, model, tmp_path / "c.tif", probabilities=tmp_path / "p.tif")
    with rasterio.open(src) as s, rasterio.open(rep.classes_path) as c, rasterio.open(tmp_path / "p.tif") as p:
        for o in (c, p):
            assert o.crs == s.crs and o.transform == s.transform and (o.width, o.height) == (s.width, s.height)
        assert c.dtypes[0] == "uint8" and c.nodata == 255
        assert c.colormap(1)[1][:3] == tuple(model.meta.schema.classes[1].colour)
        assert "field" in c.tags()["geoseg_classes"]
        assert p.count == 4 and p.descriptions[-1] == "confidence"
        assert p.dtypes[0] == "uint8"
        # four Byte bands must not become an RGBA image with the confidence as alpha
        assert not {ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha} & set(p.colorinterp)
        assert p.mask_flag_enums[3] == [MaskFlags.per_dataset]  # the nodata mask, not an alpha band
        probs = p.read().astype(np.int32)
        assert np.abs(probs[:3].sum(0) - 255).max() <= 2  # scaled probabilities sum to 255
        assert (probs[3] == probs[:3].max(0)).all()  # confidence is the top probability
    for path in (tmp_path / "c.tif", tmp_path / "p.tif"):
        valid, errors, _ = cog_validate(str(path))
        assert valid, errors
    assert not list(tmp_path.glob(".*geoseg-tmp*"))


def test_nodata_collar_is_nodata_and_skipped(tmp_path):
    """RGB.byte.tif has a nodata-0 collar around a rotated footprint."""
    src = shared_file("rasterio_testdata/RGB.byte.tif")
    model = PointwiseModel(3, 2, depth=0)
    rep = predict_raster(src, model, tmp_path / "c.tif", probabilities=tmp_path / "p.tif", tile_size=64,
                         overlap=16)
    with rasterio.open(src) as s:
        valid = s.dataset_mask() > 0
    with rasterio.open(rep.classes_path) as c:
        cls = c.read(1)
    assert (cls[~valid] == 255).all()
    assert (cls[valid] != 255).all()
    assert rep.tiles_skipped > 0 and rep.tiles_run + rep.tiles_skipped == rep.tiles_total
    assert model.calls == rep.tiles_run
    with rasterio.open(tmp_path / "p.tif") as p:
        m = p.dataset_mask()
    assert ((m > 0) == valid).all()


def test_nan_and_declared_nodata_inputs(make_raster, tmp_path):
    data = np.random.default_rng(1).normal(size=(2, 40, 50)).astype(np.float32)
    data[:, 5:9, 5:9] = np.nan
    data[0, 20:22, 30:33] = -9999  # declared nodata in one band only: pixel still valid
    data[:, 30:35, 0:4] = -9999  # all bands nodata -> nodata
    src = make_raster(data, nodata=-9999)
    rep = predict_raster(src, PointwiseModel(2, 3), tmp_path / "c.tif", tile_size=16, overlap=4)
    with rasterio.open(rep.classes_path) as c:
        cls = c.read(1)
    assert (cls[5:9, 5:9] == 255).all() and (cls[30:35, 0:4] == 255).all()
    assert (cls[20:22, 30:33] != 255).all()
    assert (cls != 255).sum() == 40 * 50 - 16 - 20


@pytest.mark.parametrize("h,w", [(1, 1), (1, 37), (5, 3), (300, 7)])
def test_tiny_and_thin_rasters(make_raster, tmp_path, h, w):
    data = np.random.default_rng(0).normal(size=(3, h, w)).astype(np.float32)
    model = PointwiseModel(3, 4, depth=3)
    rep = predict_raster(make_raster(data), model, tmp_path / "c.tif", tile_size=64, overlap=16)
    with rasterio.open(rep.classes_path) as c:
        assert (c.read(1) == model.probs(data).argmax(0)).all()


def test_deterministic_across_batch_sizes_strips_and_read_threads(tmp_path):
    torch = pytest.importorskip("torch")
    from geoseg.models import build_model, save_checkpoint

    src = shared_file("ftw_baselines/inference-img.tif")
    torch.manual_seed(1)
    net = build_model("unet", 8, 3, base_channels=8, depth=2)
    meta = ModelMeta("unet", {"base_channels": 8, "depth": 2}, [f"b{i}" for i in range(8)], [1500.0] * 8,
                     [1000.0] * 8, ClassSchema.default(3), 128, 32)
    ckpt = save_checkpoint(net, meta, tmp_path / "m.pt")
    outs = []
    for i, (bs, strip, threads) in enumerate([(1, 8192, 1), (7, 8192, 3), (3, 256, 2)]):
        predict_raster(src, ckpt, tmp_path / f"c{i}.tif", batch_size=bs, max_strip_width=strip, device="cpu",
                       read_threads=threads)
        outs.append((tmp_path / f"c{i}.tif").read_bytes())
    assert outs[0] == outs[1] == outs[2]


def test_all_nodata_raster_warns_and_writes_nodata(make_raster, tmp_path):
    from geoseg.errors import NodataWarning

    src = make_raster(np.full((3, 40, 30), -1.0, np.float32), nodata=-1.0)
    model = PointwiseModel(3, 2)
    with pytest.warns(NodataWarning, match="no valid pixels"):
        rep = predict_raster(src, model, tmp_path / "c.tif", tile_size=16, overlap=4)
    assert rep.tiles_run == 0 and model.calls == 0
    with rasterio.open(rep.classes_path) as c:
        assert (c.read(1) == 255).all()


def test_max_memory_narrows_strips_same_result(make_raster, tmp_path):
    from geoseg.errors import UsageError
    from geoseg.pipeline import buffer_bytes, strip_width_for_budget

    data = np.random.default_rng(2).normal(size=(3, 50, 700)).astype(np.float32)
    src = make_raster(data)
    a = predict_raster(src, PointwiseModel(3, 4), tmp_path / "a.tif", tile_size=32, overlap=8)
    width = strip_width_for_budget(80, 32, 3, 4, 8, 2, 64)
    assert buffer_bytes(width, 32, 3, 4, 8, 2, 64) <= 80 * 2**20 < buffer_bytes(width + 64, 32, 3, 4, 8, 2, 64)
    b = predict_raster(src, PointwiseModel(3, 4), tmp_path / "b.tif", tile_size=32, overlap=8,
                       max_memory_mb=buffer_bytes(200, 32, 3, 4, 8, 2, 64) / 2**20)
    assert a.strips == 1 and b.strips > 1
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    with pytest.raises(UsageError, match="too small"):
        predict_raster(src, PointwiseModel(3, 4), tmp_path / "c.tif", tile_size=32, overlap=8, max_memory_mb=10)
    assert not (tmp_path / "c.tif").exists()


def test_without_max_memory_the_available_memory_bounds_the_run(make_raster, tmp_path, monkeypatch):
    """No --max-memory: strips narrow only when the run would not fit in half the available memory,
    with the same result, and settings that cannot fit at all (a huge batch) are refused up front."""
    from geoseg.errors import UsageError
    from geoseg.pipeline import budget, buffer_bytes

    data = np.random.default_rng(2).normal(size=(3, 50, 700)).astype(np.float32)
    src = make_raster(data)
    a = predict_raster(src, PointwiseModel(3, 4), tmp_path / "a.tif", tile_size=32, overlap=8)
    monkeypatch.setattr(budget, "available_memory_mb", lambda: 2 * buffer_bytes(200, 32, 3, 4, 8, 2, 64) / 2**20)
    b = predict_raster(src, PointwiseModel(3, 4), tmp_path / "b.tif", tile_size=32, overlap=8)
    assert a.strips == 1 and b.strips > 1
    assert (tmp_path / "a.tif").read_bytes() == (tmp_path / "b.tif").read_bytes()
    monkeypatch.setattr(budget, "available_memory_mb", lambda: 64.0)
    with pytest.raises(UsageError, match="half the memory available"):
        predict_raster(src, PointwiseModel(3, 4), tmp_path / "c.tif", tile_size=32, overlap=8, batch_size=4096)
    assert not (tmp_path / "c.tif").exists()


def test_refuses_when_disk_is_too_small(make_raster, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from geoseg.errors import RasterWriteError

    src = make_raster(np.zeros((3, 64, 64), np.float32))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    # sizes in a unit that shows them (the message once said "needs about 0.0 GB ... only 0.0 GB free")
    with pytest.raises(RasterWriteError, match=r"needs about \d+ kB free .* only 1 kB are free"):
        predict_raster(src, PointwiseModel(3, 2), tmp_path / "c.tif", tile_size=32, overlap=8)
    assert not [p for p in tmp_path.iterdir() if p.name != "r.tif"]


def test_band_list_errors_name_the_option_they_came_from():
    from geoseg.errors import UsageError
    from geoseg.io.raster import parse_bands

    assert parse_bands("4, 3,2", "rgb") == [4, 3, 2]
    with pytest.raises(UsageError, match=r"^`rgb` 'a,b,c'"):
        parse_bands("a,b,c", "rgb")
    with pytest.raises(UsageError, match=r"^`bands` "):
        parse_bands("x")


def test_a_second_run_on_the_same_output_is_refused_and_harms_nothing(make_raster, tmp_path):
    """Two runs writing one destination destroyed each other (issue 21): the second gets one clear error."""
    from geoseg.errors import UsageError
    from geoseg.io.atomic import destination_lock

    src = make_raster(np.random.default_rng(0).normal(size=(3, 40, 40)).astype(np.float32))
    out = tmp_path / "c.tif"
    with destination_lock(out):  # a run in progress (here or in another process)
        with pytest.raises(UsageError, match="another geoseg run is writing this output"):
            predict_raster(src, PointwiseModel(3, 2), out, tile_size=16, overlap=4)
        assert not out.exists()
    rep = predict_raster(src, PointwiseModel(3, 2), out, tile_size=16, overlap=4)  # free again
    assert rep.classes_path.exists()
    # no lock or staging left (the .qml and .aux.xml are the class raster's QGIS style and GDAL class names)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.qml", "c.tif", "c.tif.aux.xml", "r.tif"]


def test_a_tile_larger_than_the_raster_is_cut_to_it(make_raster, tmp_path):
    """--tile-size 16384 on a 17 x 13 raster allocated 8+ GB (issue 21): one tile of the raster's size."""
    data = np.random.default_rng(2).normal(size=(3, 17, 13)).astype(np.float32)
    model = PointwiseModel(3, 4, depth=3)
    rep = predict_raster(make_raster(data), model, tmp_path / "c.tif", tile_size=16384, overlap=64)
    assert rep.tile_size == 24 and rep.tiles_run == 1  # 17 rounded up to the model's multiple, 8
    with rasterio.open(rep.classes_path) as c:
        assert (c.read(1) == model.probs(data).argmax(0)).all()


def test_a_vrt_with_a_missing_source_names_it(make_raster, tmp_path):
    """The error said "Read failed. See previous exception for details." (issue 21)."""
    import rasterio.shutil

    from geoseg.errors import RasterReadError

    src = make_raster(np.ones((3, 40, 40), np.float32), name="part.tif")
    vrt = tmp_path / "mosaic.vrt"
    rasterio.shutil.copy(src, vrt, driver="VRT")
    src.unlink()
    with pytest.raises(RasterReadError, match=r"part\.tif: No such file or directory"):
        predict_raster(vrt, PointwiseModel(3, 2), tmp_path / "c.tif", tile_size=16, overlap=4)
    assert not (tmp_path / "c.tif").exists()


def test_nodata_value_marks_an_undeclared_collar(make_raster, tmp_path):
    """A zero collar the raster does not declare is a class without --nodata, and nodata with nodata=0."""
    rng = np.random.default_rng(5)
    data = rng.integers(100, 3000, size=(3, 64, 80)).astype(np.uint16)
    data[:, :, :16] = 0  # the collar, not declared
    src = make_raster(data)
    plain = predict_raster(src, PointwiseModel(3, 4), tmp_path / "a.tif", tile_size=32, overlap=8)
    marked = predict_raster(src, PointwiseModel(3, 4), tmp_path / "b.tif", tile_size=32, overlap=8, nodata=0)
    with rasterio.open(plain.classes_path) as a, rasterio.open(marked.classes_path) as b:
        ca, cb = a.read(1), b.read(1)
    assert (ca[:, :16] != 255).all()
    assert (cb[:, :16] == 255).all()
    assert (ca[:, 16:] == cb[:, 16:]).mean() > 0.99  # away from the collar, the same classes


@pytest.mark.parametrize("bad", [dict(accumulate="float16"), dict(bands="1,2,3"), dict(tile_size=0), dict(threads=0),
                                 dict(read_threads=0), dict(checkpoint_seconds=-1), dict(prefetch=0),
                                 dict(output="c.png")])
def test_bad_options_are_one_clear_error_before_any_work(make_raster, tmp_path, bad):
    """They raised KeyError/TypeError, ran with the default (tile_size=0), or wrote a GeoTIFF named .png."""
    from geoseg.errors import GeosegError

    src = make_raster(np.zeros((3, 20, 20), np.float32))
    kw = dict(bad)
    out = tmp_path / kw.pop("output", "c.tif")
    with pytest.raises(GeosegError) as e:
        predict_raster(src, PointwiseModel(3, 2), out, **kw)
    assert str(e.value).count("\n") == 0
    assert not out.exists()


def test_a_batch_larger_than_the_run_and_a_model_with_other_classes(make_raster, tmp_path):
    """batch_size 100 000 allocated its whole buffer (183 GB: an unexpected RuntimeError); a model that gives
    3 classes for a 2-class schema failed deep in the blending ("The size of tensor a (2) must match")."""
    from geoseg.errors import CheckpointError

    src = make_raster(np.random.default_rng(0).normal(size=(3, 40, 40)).astype(np.float32))
    rep = predict_raster(src, PointwiseModel(3, 2), tmp_path / "c.tif", batch_size=100_000)
    assert rep.tiles_run > 1

    class ThreeForTwo(PointwiseModel):
        def predict(self, batch):
            return np.concatenate([super().predict(batch), np.zeros_like(batch[:, :1])], axis=1)

    model = ThreeForTwo(3, 2)
    with pytest.raises(CheckpointError, match="gave 3 class probabilities a pixel, but its metadata lists 2"):
        predict_raster(src, model, tmp_path / "d.tif")
    assert not (tmp_path / "d.tif").exists()
