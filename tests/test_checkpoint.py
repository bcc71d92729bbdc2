"""Loading checkpoints: never the network."""

from __future__ import annotations

import socket

import pytest

from geoseg.classes import ClassSchema
from geoseg.modelmeta import ModelMeta


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
