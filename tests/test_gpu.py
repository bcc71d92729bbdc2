"""GPU inference (run with `pytest -m gpu` on a machine with CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from conftest import shared_file

SLO_IMG = "eolearn_slovenia/NDVI_timeseries_68dates.tif"
SLO_LAB = "eolearn_slovenia/LULC_label.tif"

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from geoseg.models.init import init_checkpoint

    p = tmp_path_factory.mktemp("m") / "m.pt"
    init_checkpoint(p, bands=8, classes=3, base_channels=32, depth=3,
                    stats_from=shared_file("ftw_baselines/inference-img.tif"))
    return p


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A small U-Net trained on the GPU (bf16) on Slovenia's dense labels: decisive, like a real model."""
    from geoseg.train import TrainConfig, train

    p = tmp_path_factory.mktemp("t") / "slovenia.pt"
    rep = train(TrainConfig(images=[str(shared_file(SLO_IMG))], labels=str(shared_file(SLO_LAB)), output=str(p),
                            val_split=0.0, epochs=8, tile_size=64, batch_size=16, samples_per_epoch=256,
                            base_channels=16, depth=3, device="cuda", seed=0, arch="unet"))
    return rep.output


def test_cpu_fp32_and_gpu_bf16_agree(tmp_path, trained):
    """The acceptance: class rasters of a trained model agree on >= 99.5% of pixels."""
    from geoseg.pipeline import predict_raster

    src = shared_file(SLO_IMG)
    cpu = predict_raster(src, trained, tmp_path / "cpu.tif", device="cpu")
    gpu = predict_raster(src, trained, tmp_path / "gpu.tif", device="cuda")
    assert cpu.precision == "fp32" and gpu.precision in ("bf16", "fp16")
    with rasterio.open(tmp_path / "cpu.tif") as a, rasterio.open(tmp_path / "gpu.tif") as b:
        ca, gb = a.read(1), b.read(1)
    agreement = (ca == gb).mean()
    print(f"trained model: CPU fp32 / GPU {gpu.precision} agreement {agreement:.5f}, "
          f"{len(np.unique(ca))} classes predicted")
    assert len(np.unique(ca)) >= 2  # not a constant map
    assert agreement >= 0.995, agreement


def test_untrained_model_differs_only_near_ties(tmp_path, model):
    """A random-init model's probabilities are near ties; bf16 may flip those, and only those."""
    from geoseg.pipeline import predict_raster

    src = shared_file("ftw_baselines/inference-img.tif")
    predict_raster(src, model, tmp_path / "cpu.tif", probabilities=tmp_path / "pc.tif", device="cpu")
    gpu = predict_raster(src, model, tmp_path / "gpu.tif", probabilities=tmp_path / "pg.tif", device="cuda")
    with rasterio.open(tmp_path / "pc.tif") as a, rasterio.open(tmp_path / "pg.tif") as b:
        pc, pg = a.read()[:3].astype(np.int32), b.read()[:3].astype(np.int32)
    top2 = np.sort(pc, axis=0)
    margin = top2[-1] - top2[-2]
    same = pc.argmax(0) == pg.argmax(0)
    clear = margin >= 3  # top two >= 1.2% apart (over half the pixels tie exactly at 8 bits)
    diff = np.abs(pc - pg).mean()
    print(f"untrained model: agreement {same.mean():.5f}; {clear.mean():.3f} of pixels with a margin >= 3/255, "
          f"agreement there {same[clear].mean() if clear.any() else float('nan'):.5f}; "
          f"mean |dp| {diff:.2f}/255; GPU {gpu.precision}")
    assert diff <= 2.0
    assert clear.any() and same[clear].mean() >= 0.98


def test_gpu_tta_and_probabilities(tmp_path, model):
    from geoseg.pipeline import predict_raster

    src = shared_file("ftw_baselines/inference-img.tif")
    rep = predict_raster(src, model, tmp_path / "c.tif", probabilities=tmp_path / "p.tif", device="cuda",
                         tta="d4", batch_size=4)
    with rasterio.open(tmp_path / "p.tif") as p:
        probs = p.read()[:3].astype(np.int32)
    assert rep.tiles_run > 0
    assert np.abs(probs.sum(0) - 255).max() <= 3  # scaled probabilities sum to ~255


def test_train_on_gpu_bf16_then_infer(tmp_path):
    """A few bf16 steps on the GPU (raster labels, pinned loader, channels_last), resumed, then inferred."""
    from geoseg.models import read_meta
    from geoseg.pipeline import predict_raster
    from geoseg.train import TrainConfig, train

    img, lab = shared_file(SLO_IMG), shared_file(SLO_LAB)
    kw = dict(images=[str(img)], labels=str(lab), output=str(tmp_path / "m.pt"), val_block=48, tile_size=32,
              batch_size=8, samples_per_epoch=32, base_channels=8, depth=2, device="cuda", num_workers=2,
              arch="unet")
    rep = train(TrainConfig(epochs=1, **kw))
    assert rep.device.startswith("cuda") and "bf16" in rep.precision
    rep2 = train(TrainConfig(epochs=2, resume=True, **kw))
    assert [h.epoch for h in rep2.history] == [0, 1]
    meta = read_meta(rep2.output)
    assert len(meta.schema) >= 2
    out = tmp_path / "pred.tif"
    predict_raster(img, rep2.output, out, device="cuda")
    with rasterio.open(out) as ds, rasterio.open(img) as src:
        assert ds.transform == src.transform and ds.crs == src.crs
        assert set(np.unique(ds.read(1))) <= set(meta.schema.ids) | {255}


def test_batch_finish_on_the_gpu_equals_the_cpu_batch_code():
    """Workers send raw chips on CUDA; finishing them on the GPU gives the CPU path's batches."""
    from geoseg.train import data as D

    nodata = [255.0, float("nan"), 0.0]

    class _Grid:
        pass

    _Grid.nodata = nodata
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 60, (8, 3, 16, 16), generator=g).float()
    x[0, 0, 1, 1], x[1, 2, 2, :], x[2, 1, 3, 3] = 255.0, 0.0, float("nan")
    mask = torch.randint(0, 4, (8, 16, 16), generator=g)
    lut = np.array([255, 0, 1, 2])
    kw = dict(augment="d4", jitter=0.1, band_dropout=0.3, seed=2)
    cpu = D.BatchMaker(_Grid(), lut, [1.0, 2.0, 3.0], [0.5, 2.0, 1.5], **kw).process(x, mask)
    dev = D.BatchMaker(_Grid(), lut, [1.0, 2.0, 3.0], [0.5, 2.0, 1.5], on_device=True, **kw)
    raw = dev([{"image": xi, "mask": mi} for xi, mi in zip(x, mask)])
    got = dev.finish({k: v.cuda() for k, v in raw.items()})
    assert got["image"].is_cuda
    assert torch.equal(got["mask"].cpu(), cpu["mask"])
    assert torch.allclose(got["image"].cpu(), cpu["image"], rtol=1e-6, atol=1e-6)


def test_ring_batches_on_the_gpu_equal_the_cpu_ones(tmp_path):
    """Workers fill shared-memory slots, page-locked in the main process and copied to the GPU on
    a side stream: the finished batches equal those finished on the CPU from the same slots."""
    from test_train import train_parts

    from geoseg.train import TrainConfig
    from geoseg.train import data as D

    cfg = TrainConfig(images=[str(shared_file(SLO_IMG))], labels=str(shared_file(SLO_LAB)),
                      output=str(tmp_path / "m.pt"), val_split=0.0, tile_size=32, batch_size=4,
                      samples_per_epoch=22, num_workers=2, arch="unet")
    with train_parts(cfg) as t:
        out = {}
        for device in ("cuda", "cpu"):
            bm = D.BatchMaker(t.grid, t.plan.lut, t.mean, t.std, regions=t.plan.train_regions,
                              clip=t.plan.clip_train, augment="d4", seed=1, on_device=True)
            loader = D.make_loader(t.ds, t.chips, bm, cfg, pin_memory=device == "cuda", ring=True)
            out[device] = []
            for e in range(2):
                bm.set_epoch(e)
                for b in loader:
                    assert "slot" in b
                    f = bm.finish(b, device)
                    assert f["image"].device.type == device
                    out[device].append({k: v.cpu() for k, v in f.items()})
            bm.release()
        assert len(out["cuda"]) == len(out["cpu"]) == 12
        for a, b in zip(out["cuda"], out["cpu"]):
            assert torch.equal(a["mask"], b["mask"])
            assert torch.allclose(a["image"], b["image"], rtol=1e-6, atol=1e-6)


def _pointwise_checkpoint(path, bands: int = 8, classes: int = 4):
    """A 1x1-convolution network: a fixed per-pixel function, exact in fp32 on any device."""
    from geoseg.classes import ClassSchema
    from geoseg.models.meta import ModelMeta
    from geoseg.predict import TorchPredictor

    torch.manual_seed(0)
    net = torch.nn.Conv2d(bands, classes, 1)
    meta = ModelMeta("pointwise", {}, [f"b{i}" for i in range(bands)], [1500.0] * bands, [900.0] * bands,
                     ClassSchema.default(classes), 128, 32)

    def make(device, **kw):
        pred = TorchPredictor(net, meta, device=device, precision="fp32", **kw)
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # exact fp32
        return pred

    return make


def test_device_stages_on_the_gpu_match_the_cpu_reference(tmp_path, make_raster):
    """float32 blending on the GPU (uint16 input, a nodata collar, probabilities) against the CPU's
    float64 reference: classes equal on >= 99.99% of pixels, probabilities within 1/255."""
    from geoseg.pipeline import predict_raster

    with rasterio.open(shared_file("ftw_baselines/inference-img.tif")) as ds:
        data = ds.read()
    data[:, :, :40] = 0
    src = make_raster(data, nodata=0)
    make = _pointwise_checkpoint(tmp_path)
    out = {}
    for device in ("cpu", "cuda"):
        rep = predict_raster(src, make(device), tmp_path / f"c_{device}.tif",
                             probabilities=tmp_path / f"p_{device}.tif", batch_size=5)
        with rasterio.open(tmp_path / f"c_{device}.tif") as c, rasterio.open(tmp_path / f"p_{device}.tif") as p:
            out[device] = c.read(1), p.read().astype(np.int32), rep
    (cc, pc, rc), (cg, pg, rg) = out["cpu"], out["cuda"]
    assert rg.device.startswith("cuda") and rc.tiles_skipped == rg.tiles_skipped
    assert (cc[:, :40] == 255).all() and (cg[:, :40] == 255).all()
    same = (cc == cg).mean()
    print(f"GPU float32 / CPU float64 class agreement {same:.6f}, max |dp| {np.abs(pc - pg).max()}/255")
    assert same >= 0.9999
    assert np.abs(pc - pg).max() <= 1


def test_gpu_runs_are_identical_across_prefetch_and_threads(tmp_path):
    """Page-locked buffers are reused only after their copies: any prefetch and thread count, same bytes."""
    from geoseg.pipeline import predict_raster

    src = shared_file("ftw_baselines/inference-img.tif")
    make = _pointwise_checkpoint(tmp_path)
    outs = []
    for i, (prefetch, threads, batch) in enumerate([(2, 8, 16), (1, 1, 3), (4, 3, 7)]):
        predict_raster(src, make("cuda"), tmp_path / f"c{i}.tif", probabilities=tmp_path / f"p{i}.tif",
                       prefetch=prefetch, read_threads=threads, batch_size=batch, tile_size=64, overlap=16)
        outs.append(((tmp_path / f"c{i}.tif").read_bytes(), (tmp_path / f"p{i}.tif").read_bytes()))
    assert outs[0] == outs[1] == outs[2]


def test_compiled_model_on_the_gpu_matches_eager(tmp_path, model):
    from geoseg.pipeline import predict_raster

    src = shared_file("ftw_baselines/inference-img.tif")
    predict_raster(src, model, tmp_path / "e.tif", device="cuda", batch_size=4)
    predict_raster(src, model, tmp_path / "c.tif", device="cuda", batch_size=4, compile=True)
    with rasterio.open(tmp_path / "e.tif") as a, rasterio.open(tmp_path / "c.tif") as b:
        agreement = (a.read(1) == b.read(1)).mean()
    print(f"compiled / eager class agreement {agreement:.5f}")
    assert agreement >= 0.99
