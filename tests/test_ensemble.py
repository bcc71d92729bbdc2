"""Several checkpoints averaged as one model (geoseg infer -m a.pt -m b.pt)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio

from conftest import shared_file
from test_cli_infer import leftovers, run_cli

torch = pytest.importorskip("torch")

SRC = "ftw_baselines/inference-img.tif"


def _init(path: Path, seed: int, mean: float, std: float, depth: int = 2, classes: int = 3) -> Path:
    from geoseg.models.init import init_checkpoint

    return init_checkpoint(path, bands=8, classes=classes, base_channels=8, depth=depth, mean=[mean] * 8,
                           std=[std] * 8, tile_size=128, overlap=16 * depth, seed=seed)


def test_ensemble_averages_each_members_probabilities_under_its_own_normalization(tmp_path: Path) -> None:
    from geoseg.predict import TorchPredictor

    a = _init(tmp_path / "a.pt", 0, 1000.0, 500.0)
    b = _init(tmp_path / "b.pt", 1, 1500.0, 300.0, depth=3)  # other statistics, deeper
    raw = np.random.default_rng(0).uniform(0, 3000, (2, 8, 64, 64)).astype(np.float32)
    pa = TorchPredictor.from_checkpoint(a, device="cpu").predict((raw - 1000) / 500)
    pb = TorchPredictor.from_checkpoint(b, device="cpu").predict((raw - 1500) / 300)
    both = TorchPredictor.from_checkpoint([a, b], device="cpu")
    # the deeper member needs tiles in multiples of 8: it leads, and its statistics normalize
    assert both.meta.size_multiple == 8 and both.meta.mean[0] == 1500.0
    assert both.meta.overlap == 48 and both.meta.training["ensemble"] == [str(a), str(b)]
    pe = both.predict((raw - 1500) / 300)
    assert not np.allclose(pa, pb, atol=1e-3)  # two different models
    assert np.allclose(pe, (pa + pb) / 2, atol=1e-5)
    assert np.allclose(pe.sum(axis=1), 1.0, atol=1e-5)


def test_ensemble_members_must_agree_on_bands_and_classes(tmp_path: Path) -> None:
    from geoseg.errors import CheckpointError
    from geoseg.models.ensemble import load_ensemble

    a = _init(tmp_path / "a.pt", 0, 1000.0, 500.0)
    c = _init(tmp_path / "c.pt", 1, 1000.0, 500.0, classes=4)
    with pytest.raises(CheckpointError, match="must predict the same classes"):
        load_ensemble([a, c])


def test_cli_infer_with_two_models(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = shared_file(SRC)
    a = _init(tmp_path / "a.pt", 0, 1000.0, 500.0)
    b = _init(tmp_path / "b.pt", 1, 1100.0, 450.0)
    out = tmp_path / "out"
    code, _, err = run_cli(["infer", src, "-m", a, "-m", b, "-o", out, "-q", "--no-vector"], capsys)
    assert code == 0, err
    with rasterio.open(out / "inference-img_classes.tif") as ds, rasterio.open(src) as s:
        assert ds.transform == s.transform and ds.shape == s.shape
        assert set(np.unique(ds.read(1))) <= {0, 1, 2, 255}
    c = _init(tmp_path / "c.pt", 2, 1000.0, 500.0, classes=4)
    code, _, err = run_cli(["infer", src, "-m", a, "-m", c, "-o", tmp_path / "o2", "-q", "--no-vector"], capsys)
    assert code != 0 and len(err.strip().splitlines()) == 1 and "same classes" in err
    assert "Traceback" not in err
    assert not (tmp_path / "o2").exists() or not leftovers(tmp_path / "o2")
