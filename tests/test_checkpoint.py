"""Loading checkpoints: never the network."""

from __future__ import annotations

import socket

import pytest

from geoseg.classes import ClassSchema
from geoseg.models.meta import ModelMeta


def test_a_checkpoint_naming_pretrained_weights_loads_offline(tmp_path, monkeypatch):
    """arch_args naming encoder_weights='imagenet' made loading try to download them (issue 21)."""
    pytest.importorskip("segmentation_models_pytorch")
    from geoseg.models import build_model, save_checkpoint
    from geoseg.models.checkpoint import load_checkpoint

    args = {"encoder": "resnet18", "encoder_weights": None, "encoder_depth": 5}
    net = build_model("smp-unet", 4, 3, **args)
    meta = ModelMeta("smp-unet", {**args, "encoder_weights": "imagenet"}, ["a", "b", "c", "d"], [0.0] * 4,
                     [1.0] * 4, ClassSchema.default(3), 64, 16)
    ckpt = save_checkpoint(net, meta, tmp_path / "m.pt")
    attempts = []

    def no_network(self, *a, **k):
        attempts.append(a)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    model, loaded = load_checkpoint(ckpt)
    assert not attempts
    assert loaded.arch_args["encoder_weights"] == "imagenet"  # the record is kept as written
    sd, ref = model.state_dict(), net.state_dict()
    assert all((sd[k] == ref[k]).all() for k in ref)


def test_model_info_reads_the_metadata_without_torch(tmp_path):
    """`geoseg model info` of a 1.2 MB checkpoint used 1.7 GB, most of it torch (issue 21)."""
    import json
    import subprocess
    import sys

    from geoseg.models.init import init_checkpoint
    from geoseg.models import read_meta

    ckpt = init_checkpoint(tmp_path / "m.pt", bands=4, classes=3, base_channels=4, depth=1)
    code = ("import json, sys; from geoseg.models.meta import peek_meta; m = peek_meta(sys.argv[1]); "
            "print(json.dumps([m.to_dict(), 'torch' in sys.modules]))")
    r = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-500:]
    meta, torch_loaded = json.loads(r.stdout)
    assert meta == read_meta(ckpt).to_dict() and not torch_loaded


def test_peek_meta_runs_nothing_from_a_hostile_file(tmp_path):
    import pickle
    import zipfile

    from geoseg.models.meta import peek_meta

    class Evil:
        def __reduce__(self):
            return (open, (str(tmp_path / "PWNED"), "w"))

    p = tmp_path / "evil.pt"
    with zipfile.ZipFile(p, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps({"geoseg_meta": Evil(), "state_dict": {}}))
    assert peek_meta(p) is None and not (tmp_path / "PWNED").exists()
