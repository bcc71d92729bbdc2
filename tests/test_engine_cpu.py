"""TorchPredictor on a CPU: batch normalization folded into the convolutions and channels_last, checked."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from geoseg.classes import ClassSchema  # noqa: E402
from geoseg.models import build_model  # noqa: E402
from geoseg.models.meta import ModelMeta  # noqa: E402
from geoseg.predict.engine import TorchPredictor, for_cpu  # noqa: E402


def _meta(arch: str, bands: int, tile: int = 64) -> ModelMeta:
    return ModelMeta(arch, {}, [f"b{i}" for i in range(bands)], [0.0] * bands, [1.0] * bands,
                     ClassSchema.default(3), tile, 16)


def _trained_bn(net: torch.nn.Module) -> torch.nn.Module:
    """Batch-norm statistics that are not the identity, so folding them matters."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return net.eval()


def test_unet_is_folded_and_channels_last_with_the_same_probabilities():
    torch.manual_seed(0)
    net = _trained_bn(build_model("unet", 4, 3, base_channels=8, depth=2))
    fast, cl = for_cpu(net, _meta("unet", 4))
    assert cl
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fast.modules())  # folded
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in net.modules())  # the checkpoint's module untouched
    x = torch.randn(2, 4, 64, 64)
    p = TorchPredictor(net, _meta("unet", 4), device="cpu")
    assert p.channels_last
    with torch.inference_mode():
        want = torch.softmax(net(x), dim=1)
    got = p.forward_tensor(x)
    assert float((got - want).abs().max()) < 1e-5


def test_a_network_the_layout_breaks_is_used_as_it_is():
    class Flat(torch.nn.Module):  # a view across channels and pixels: impossible in channels_last
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(4, 3, 3, padding=1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = self.conv(x)
            n, c, h, w = y.shape
            return y.view(n, c * h * w).view(n, c, h, w)

    net = Flat().eval()
    fast, cl = for_cpu(net, _meta("unet", 4))
    assert not cl and fast is net


def test_per_pixel_networks_are_left_alone():
    net = build_model("tempcnn", 12, 3).eval()
    p = TorchPredictor(net, _meta("tempcnn", 12), device="cpu")
    assert not p.channels_last and p.model is net


def test_shared_predictor_loads_each_model_once(tmp_path):
    """`geoseg infer` on many inputs in one process (as a Dask worker) loads the model once, its CPU
    preparation included; another option or a rewritten checkpoint loads again."""
    from geoseg.models import save_checkpoint
    from geoseg.predict.load import shared_predictor

    meta = ModelMeta("unet", {"base_channels": 4, "depth": 2}, [f"b{i}" for i in range(4)], [0.0] * 4, [1.0] * 4,
                     ClassSchema.default(3), 64, 16)
    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    save_checkpoint(build_model("unet", 4, 3, base_channels=4, depth=2), meta, ckpt)
    a, _ = shared_predictor([ckpt], device="cpu", threads=1)
    assert shared_predictor([str(ckpt)], device="cpu", threads=1)[0] is a
    assert shared_predictor([ckpt], device="cpu", threads=1, tta="flips")[0] is not a
    torch.manual_seed(1)
    save_checkpoint(build_model("unet", 4, 3, base_channels=4, depth=2), meta, ckpt, overwrite=True)  # rewritten
    assert shared_predictor([ckpt], device="cpu", threads=1)[0] is not a


def test_threads_option_gives_the_model_that_many_threads(tmp_path):
    """``predict_raster(threads=N)`` (``geoseg infer --threads N``): the model runs on N CPU threads, and runs
    with the same N give the same bytes (docs/reliability.md#determinism)."""
    from pathlib import Path

    from geoseg.models.demo import DEMO_MODEL
    from geoseg.pipeline import predict_raster

    field = Path(__file__).resolve().parents[1] / "sample_data" / "field.tif"
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        for i in range(2):
            predict_raster(field, DEMO_MODEL, tmp_path / f"c{i}.tif", probabilities=tmp_path / f"p{i}.tif", threads=1)
            assert torch.get_num_threads() == 1  # the model's threads, given back after the run
    finally:
        torch.set_num_threads(before)
    assert (tmp_path / "p0.tif").read_bytes() == (tmp_path / "p1.tif").read_bytes()
