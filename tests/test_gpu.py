"""GPU inference (run with `pytest -m gpu` on a machine with CUDA)."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio

from conftest import shared_file

torch = pytest.importorskip("torch")

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from geoseg.modelinit import init_checkpoint

    p = tmp_path_factory.mktemp("m") / "m.pt"
    init_checkpoint(p, bands=8, classes=3, base_channels=32, depth=3,
                    stats_from=shared_file("ftw_baselines/inference-img.tif"))
    return p


def test_cpu_fp32_and_gpu_bf16_agree(tmp_path, model):
    from geoseg.pipeline import predict_raster

    src = shared_file("ftw_baselines/inference-img.tif")
    cpu = predict_raster(src, model, tmp_path / "cpu.tif", device="cpu")
    gpu = predict_raster(src, model, tmp_path / "gpu.tif", device="cuda")
    assert cpu.precision == "fp32" and gpu.precision in ("bf16", "fp16")
    with rasterio.open(tmp_path / "cpu.tif") as a, rasterio.open(tmp_path / "gpu.tif") as b:
        agreement = (a.read(1) == b.read(1)).mean()
    assert agreement >= 0.995, agreement


def test_gpu_tta_and_probabilities(tmp_path, model):
    from geoseg.pipeline import predict_raster

    src = shared_file("ftw_baselines/inference-img.tif")
    rep = predict_raster(src, model, tmp_path / "c.tif", probabilities=tmp_path / "p.tif", device="cuda",
                         tta="d4", batch_size=4)
    with rasterio.open(tmp_path / "p.tif") as p:
        probs = p.read()[:3].astype(np.int32)
    assert rep.tiles_run > 0
    assert np.abs(probs.sum(0) - 255).max() <= 3  # scaled probabilities sum to ~255
