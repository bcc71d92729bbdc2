"""Every architecture in the table: trains a step, saves, loads safely, and infers through the pipeline
like a direct forward pass; local ones also tiled like a whole-image pass."""

from __future__ import annotations

from pathlib import Path

from typing import Any

import numpy as np
import pytest
import rasterio

from geoseg.architectures import ARCHITECTURES
from tests.conftest import SAMPLE

torch = pytest.importorskip("torch")

#: small options per family, so that every architecture runs in about a second on a CPU
SMALL = {"geoseg": {"base_channels": 4, "depth": 2}, "smp": {}, "tempcnn": {"hidden": 8, "fc": 16}}


def _init(tmp_path: Path, arch: str, bands: int = 7, classes: int = 3, tile: int = 64, overlap: int = 16,
          **options: Any) -> Path:
    from geoseg.architectures import arch_args
    from geoseg.classes import ClassSchema
    from geoseg.models import build_model, save_checkpoint
    from geoseg.models.meta import ModelMeta
    from geoseg.io.stats import band_stats

    args = arch_args(arch, **{**SMALL[ARCHITECTURES[arch].family], **options})
    mean, std = band_stats([SAMPLE / "field.tif"])
    torch.manual_seed(0)
    net = build_model(arch, bands, classes, **args)
    meta = ModelMeta(arch, args, [f"b{i}" for i in range(bands)], mean, std, ClassSchema.default(classes),
                     tile_size=tile, overlap=overlap)
    return save_checkpoint(net, meta, tmp_path / f"{arch}.pt")


def _normalised(src: Path, window: tuple[int, int, int, int], ckpt: Path) -> np.ndarray:
    from geoseg.models import read_meta

    meta = read_meta(ckpt)
    r0, c0, h, w = window
    with rasterio.open(src) as ds:
        x = ds.read(window=((r0, r0 + h), (c0, c0 + w))).astype("float32")
    return (x - np.array(meta.mean, "float32")[:, None, None]) / np.array(meta.std, "float32")[:, None, None]


def _crop(make_raster, h: int, w: int) -> Path:
    with rasterio.open(SAMPLE / "field.tif") as ds:
        data = ds.read(window=((0, h), (0, w)))
    return make_raster(data, name=f"crop{h}x{w}.tif")


@pytest.mark.parametrize("arch", list(ARCHITECTURES))
def test_every_architecture_trains_saves_loads_and_predicts_like_a_forward_pass(arch, tmp_path, make_raster):
    from geoseg.models import load_checkpoint
    from geoseg.pipeline import predict_raster

    ckpt = _init(tmp_path, arch)
    model, meta = load_checkpoint(ckpt)  # weights_only loading, strict
    # one optimisation step changes the weights and gives a finite loss
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    x = torch.randn(2, 7, 64, 64)
    y = torch.randint(0, 3, (2, 64, 64))
    before = [p.detach().clone() for p in model.parameters()]
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    assert torch.isfinite(loss)
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))

    # a raster that is not a multiple of the size multiple: one tile covers it, padded by reflection;
    # the pipeline's probabilities equal a direct forward pass of the same padded image
    h, w = 50, 61
    src = _crop(make_raster, h, w)
    model, meta = load_checkpoint(ckpt)
    m = meta.size_multiple
    side = -(-max(h, w) // m) * m
    xn = _normalised(src, (0, 0, h, w), ckpt)
    xp = np.pad(xn, ((0, 0), (0, side - h), (0, side - w)), mode="reflect")
    with torch.inference_mode():
        direct = torch.softmax(model(torch.from_numpy(xp)[None]), 1)[0, :, :h, :w].numpy()
    predict_raster(src, ckpt, tmp_path / "c.tif", probabilities=tmp_path / "p.tif", probability_dtype="float32",
                   device="cpu", tile_size=256)
    with rasterio.open(tmp_path / "p.tif") as ds:
        probs = ds.read(list(range(1, 4)))
    with rasterio.open(tmp_path / "c.tif") as ds:
        classes = ds.read(1)
    np.testing.assert_allclose(probs, direct, atol=2e-5)
    assert (classes == direct.argmax(0)).mean() > 0.999


def test_smp_unet_tiled_matches_a_whole_image_pass(tmp_path):
    """Fields of The World's architecture (smp U-Net) on a real 8-band Sentinel-2 scene: tiles of 256 px
    with 128 px of overlap, blended, against one forward pass of the whole scene. A resnet18 encoder
    sees about 435 px, more than the overlap, so agreement is high but not total (docs/models.md)."""
    from geoseg.architectures import arch_args
    from geoseg.classes import ClassSchema
    from geoseg.io.stats import band_stats
    from geoseg.models import build_model, save_checkpoint
    from geoseg.models.meta import ModelMeta
    from geoseg.pipeline import predict_raster
    from tests.conftest import shared_file

    src = shared_file("ftw_baselines/inference-img.tif")
    mean, std = band_stats([src])
    torch.manual_seed(0)
    args = arch_args("smp-unet")
    net = build_model("smp-unet", 8, 3, **args).eval()
    ckpt = save_checkpoint(net, ModelMeta("smp-unet", args, [f"b{i}" for i in range(8)], mean, std,
                                          ClassSchema.default(3)), tmp_path / "m.pt")
    xn = _normalised(src, (0, 0, 379, 578), ckpt)
    h, w = xn.shape[1:]
    xp = np.pad(xn, ((0, 0), (0, (-h) % 32), (0, (-w) % 32)), mode="reflect")
    with torch.inference_mode():
        whole = net(torch.from_numpy(xp)[None])[0, :, :h, :w].argmax(0).numpy()
    rep = predict_raster(src, ckpt, tmp_path / "c.tif", device="cpu", tile_size=256, overlap=128)
    assert rep.tiles_run >= 6
    with rasterio.open(tmp_path / "c.tif") as ds:
        tiled = ds.read(1)
    assert (tiled == whole).mean() >= 0.98, (tiled == whole).mean()
