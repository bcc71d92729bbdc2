"""Models in and out: ``model import`` (Fields of The World / torchgeo Lightning checkpoints, plain state
dicts), ``model export`` to ONNX read by ``geoseg infer`` through onnxruntime, ``--encoder-weights``."""

from __future__ import annotations

from geoseg.models.demo import DEMO_MODEL

import json
from pathlib import Path

import numpy as np
import pytest
import rasterio

from tests.conftest import SAMPLE, shared_file
from tests.test_train_cli import assert_one_line_error, run

torch = pytest.importorskip("torch")
smp = pytest.importorskip("segmentation_models_pytorch")

FTW_HPARAMS = {"model": "unet", "backbone": "resnet18", "weights": None, "in_channels": 8, "num_classes": 3,
               "num_filters": 64, "loss": "ce", "class_weights": [0.04, 0.08, 0.88], "ignore_index": 3, "lr": 1e-3,
               "patience": 100, "patch_weights": False, "freeze_backbone": False, "freeze_decoder": False,
               "model_kwargs": {}}


def ftw_checkpoint(path: Path, seed: int = 0) -> smp.Unet:
    """A checkpoint laid out as ftw-tools' CustomSemanticSegmentationTask saves it (a torchgeo
    SemanticSegmentationTask under Lightning), with random weights; nothing is downloaded."""
    torch.manual_seed(seed)
    net = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=8, classes=3).eval()
    state = {f"model.{k}": v for k, v in net.state_dict().items()}
    state["criterion.weight"] = torch.tensor([0.04, 0.08, 0.88])
    torch.save({"epoch": 12, "global_step": 3400, "pytorch-lightning_version": "2.5.0", "state_dict": state,
                "hyper_parameters": dict(FTW_HPARAMS), "loops": {}, "callbacks": {
                    "ModelCheckpoint{'monitor': 'val_loss'}": {"best_model_score": torch.tensor(0.3),
                                                               "dirpath": Path("/runs/ftw")}},
                "optimizer_states": [], "lr_schedulers": []}, path)
    return net


def test_ftw_checkpoint_imports_and_infers_like_ftw_scaling(tmp_path, capsys):
    """image / 3000 in, background/field/boundary out: geoseg's probabilities equal the network's own."""
    src = shared_file("ftw_baselines/inference-img.tif")
    net = ftw_checkpoint(tmp_path / "ftw.ckpt")
    out = tmp_path / "ftw.pt"
    code, stdout, err = run(["model", "import", str(tmp_path / "ftw.ckpt"), "-o", str(out), "--preset", "ftw"], capsys)
    assert code == 0, err
    from geoseg.models import load_checkpoint
    from geoseg.pipeline import predict_raster

    model, meta = load_checkpoint(out)
    assert (meta.arch, meta.arch_args["encoder"], meta.num_bands) == ("smp-unet", "resnet18", 8)
    assert meta.schema.names == ["background", "field", "boundary"]
    assert meta.mean == [0.0] * 8 and meta.std == [3000.0] * 8
    assert meta.training["hyper_parameters"]["backbone"] == "resnet18"
    for k, v in net.state_dict().items():
        assert torch.equal(model.state_dict()[k], v), k

    # the whole scene fits one tile (1024 cut to 608): compare with the network on image / 3000
    predict_raster(src, out, tmp_path / "c.tif", probabilities=tmp_path / "p.tif", probability_dtype="float32",
                   device="cpu")
    with rasterio.open(src) as ds:
        x = ds.read().astype("float32") / 3000.0
    h, w = x.shape[1:]
    xp = np.pad(x, ((0, 0), (0, 608 - h), (0, 608 - w)), mode="reflect")
    with torch.inference_mode():
        direct = torch.softmax(net(torch.from_numpy(xp)[None]), 1)[0, :, :h, :w].numpy()
    with rasterio.open(tmp_path / "p.tif") as ds:
        np.testing.assert_allclose(ds.read([1, 2, 3]), direct, atol=2e-5)


def test_plain_state_dict_imports_with_metadata_from_the_command_line(tmp_path, capsys):
    torch.manual_seed(1)
    net = smp.FPN(encoder_name="resnet18", encoder_weights=None, in_channels=4, classes=2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, tmp_path / "fpn.pth")
    out = tmp_path / "fpn.pt"
    code, _, err = run(["model", "import", str(tmp_path / "fpn.pth"), "-o", str(out), "--arch", "smp-fpn",
                        "--band-names", "B4,B3,B2,B8", "--mean", "1,2,3,4", "--std", "5,6,7,8",
                        "--class-names", "other,crop", "--colours", "#000000,#ffcc00", "--tile-size", "512",
                        "--overlap", "96"], capsys)
    assert code == 0, err
    from geoseg.models import load_checkpoint

    model, meta = load_checkpoint(out)
    assert meta.arch == "smp-fpn" and meta.bands == ["B4", "B3", "B2", "B8"]
    assert (meta.mean, meta.std, meta.tile_size, meta.overlap) == ([1, 2, 3, 4], [5, 6, 7, 8], 512, 96)
    assert [c.colour for c in meta.schema.classes] == [(0, 0, 0), (255, 204, 0)]
    assert all(torch.equal(model.state_dict()[k], v) for k, v in net.state_dict().items())

    # the wrong architecture is refused in one line, and nothing is written
    bad = tmp_path / "bad.pt"
    code, _, err = run(["model", "import", str(tmp_path / "fpn.pth"), "-o", str(bad), "--arch", "smp-unet",
                        "--scale", "1"], capsys)
    assert_one_line_error(code, err, "not those of smp-unet", bad)
    # without normalization the import says what to give
    code, _, err = run(["model", "import", str(tmp_path / "fpn.pth"), "-o", str(bad), "--arch", "smp-fpn"], capsys)
    assert_one_line_error(code, err, "--scale", bad)


class _Boom:
    def __reduce__(self):
        import os

        return (os.system, ("touch BOOM_MARKER",))


def test_import_runs_no_code_from_the_file(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    net = smp.Unet(encoder_name="resnet18", encoder_weights=None, in_channels=3, classes=2)
    torch.save({"state_dict": net.state_dict(), "hyper_parameters": {"model": "unet", "backbone": "resnet18",
                "in_channels": 3, "num_classes": 2, "trap": _Boom()}}, tmp_path / "evil.ckpt",
               pickle_protocol=2)
    out = tmp_path / "imported.pt"
    code, _, err = run(["model", "import", str(tmp_path / "evil.ckpt"), "-o", str(out), "--scale", "1"], capsys)
    assert_one_line_error(code, err, "refused", out)
    assert "os.system" in err or "posix.system" in err
    assert not (tmp_path / "BOOM_MARKER").exists()


def test_onnx_export_carries_metadata_and_infers_like_torch(tmp_path, capsys):
    """The demo model exported to ONNX: Deepness keys inside; geoseg infer -m model.onnx through
    onnxruntime gives the torch run's classes (>= 99.9%) and probabilities."""
    import onnxruntime as ort

    onnx_path = tmp_path / "demo.onnx"
    code, _, err = run(["model", "export", str(DEMO_MODEL), "-o", str(onnx_path),
                        "--resolution", "1000"], capsys)
    assert code == 0, err
    from geoseg.models import read_meta

    meta = read_meta(DEMO_MODEL)
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    props = {k: json.loads(v) for k, v in sess.get_modelmeta().custom_metadata_map.items()}
    assert props["model_type"] == "Segmentor"
    assert props["class_names"] == {str(i): n for i, n in enumerate(meta.schema.names)}
    assert props["tile_size"] == meta.tile_size and props["tiles_overlap"] == round(100 * meta.overlap / meta.tile_size)
    np.testing.assert_allclose(np.array(props["standardization_mean"]) * 255, meta.mean, rtol=1e-9)
    np.testing.assert_allclose(np.array(props["standardization_std"]) * 255, meta.std, rtol=1e-9)
    assert props["resolution"] == 1000.0 and props["geoseg_meta"]["arch"] == meta.arch
    shape = sess.get_inputs()[0].shape
    assert isinstance(shape[0], str) and shape[1:] == [meta.num_bands, meta.tile_size, meta.tile_size]

    outs = {}
    for name, model in (("pt", DEMO_MODEL), ("onnx", onnx_path)):
        d = tmp_path / name
        code, _, err = run(["infer", str(SAMPLE / "field.tif"), "-m", str(model), "-o", str(d), "--probabilities",
                            "--device", "cpu", "-q"], capsys)
        assert code == 0, err
        with rasterio.open(d / "field_classes.tif") as c, rasterio.open(d / "field_probabilities.tif") as p:
            outs[name] = (c.read(1), p.read(1).astype(int))
    assert (outs["pt"][0] == outs["onnx"][0]).mean() >= 0.999
    assert np.abs(outs["pt"][1] - outs["onnx"][1]).max() <= 1

    # an ONNX model with Deepness keys only (no geoseg metadata) is read through them; its tiles are not
    # aligned to the U-Net's multiple of 8 (the file cannot say it), so tiles and blending differ a little
    import onnx

    proto = onnx.load(str(onnx_path))
    keep = [p for p in proto.metadata_props if p.key != "geoseg_meta"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(keep)
    onnx.save(proto, str(tmp_path / "foreign.onnx"))
    from geoseg.pipeline import predict_raster

    predict_raster(SAMPLE / "field.tif", tmp_path / "foreign.onnx", tmp_path / "f.tif")
    with rasterio.open(tmp_path / "f.tif") as ds:
        assert (ds.read(1) == outs["pt"][0]).mean() >= 0.98
        assert json.loads(ds.tags()["geoseg_classes"])["classes"][0]["name"] == meta.schema.names[0]

    # a fixed-size graph refuses larger tiles up front, and GPU-only options are refused for ONNX
    bad = tmp_path / "big"
    code, _, err = run(["infer", str(SAMPLE / "field.tif"), "-m", str(onnx_path), "-o", str(bad), "--tile-size", "512",
                        "-q"], capsys)
    assert code != 0 and "at most 256" in err and not bad.exists()
    code, _, err = run(["infer", str(SAMPLE / "field.tif"), "-m", str(onnx_path), "-o", str(bad), "--tta", "d4",
                        "-q"], capsys)
    assert code != 0 and "--tta" in err and not bad.exists()


@pytest.mark.parametrize("arch", ["smp-deeplabv3plus", "smp-segformer", "tempcnn", "tempcnn-members"])
def test_other_architectures_export_to_onnx(arch, tmp_path):
    """Architectures beyond the U-Nets export too (a tempcnn ensemble too), and onnxruntime reproduces
    torch's probabilities."""
    import onnxruntime as ort

    from geoseg.models import load_checkpoint
    from geoseg.models.onnx_export import export_onnx
    from tests.test_models import _init

    members = arch == "tempcnn-members"
    ckpt = _init(tmp_path, "tempcnn", tile=64, members=3) if members else _init(tmp_path, arch, tile=64)
    export_onnx(ckpt, tmp_path / "m.onnx")
    model, _ = load_checkpoint(ckpt)
    x = torch.randn(3, 7, 64, 64)
    with torch.inference_mode():
        want = torch.softmax(model(x), 1).numpy()
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, want, atol=1e-4)


def test_encoder_weights_from_a_file_adapt_the_bands(tmp_path, capsys):
    """timm resnet18 weights for 3 bands start a 7-band smp encoder: conv1 repeated and scaled as timm
    does, every other tensor as in the file; training records it; weights of another net are refused."""
    import timm
    from timm.models import adapt_input_conv

    from geoseg.models import build_model
    from geoseg.models.encoder_weights import load_encoder_weights

    torch.manual_seed(3)
    src = timm.create_model("resnet18", pretrained=False, in_chans=3)
    torch.save(src.state_dict(), tmp_path / "resnet18_timm.pth")
    model = build_model("smp-unet", 7, 3, encoder="resnet18")
    rep = load_encoder_weights(model, tmp_path / "resnet18_timm.pth")
    assert rep.matched == rep.total and rep.adapted == ["conv1.weight: 3 -> 7 bands"]
    enc = model.encoder.state_dict()
    assert torch.equal(enc["conv1.weight"], adapt_input_conv(7, src.state_dict()["conv1.weight"]))
    assert torch.equal(enc["layer4.1.bn2.running_var"], src.state_dict()["layer4.1.bn2.running_var"])

    other = timm.create_model("efficientnet_b0", pretrained=False)
    torch.save(other.state_dict(), tmp_path / "effnet.pth")
    with pytest.raises(Exception, match=r"fit \d of the 120 .*published for this `encoder`"):
        load_encoder_weights(build_model("smp-unet", 7, 3, encoder="resnet18"), tmp_path / "effnet.pth")

    out = tmp_path / "m.pt"
    code, _, err = run(["train", "--image", str(SAMPLE / "field.tif"), "--vector-labels",
                        str(SAMPLE / "field_training_polygons.gpkg"), "--class-field", "class", "-o", str(out),
                        "--arch", "smp-unet", "--encoder-weights", str(tmp_path / "resnet18_timm.pth"),
                        "--tile-size", "32", "--epochs", "1", "--samples-per-epoch", "4", "--batch-size", "4",
                        "-q"], capsys)
    assert code == 0, err
    from geoseg.models import read_meta

    rec = read_meta(out).training["encoder_weights"]
    assert rec["tensors"] == rec["of"] and rec["adapted"] == ["conv1.weight: 3 -> 7 bands"]
    code, _, err = run(["train", "--image", str(SAMPLE / "field.tif"), "--vector-labels",
                        str(SAMPLE / "field_training_polygons.gpkg"), "--class-field", "class", "-o",
                        str(tmp_path / "u.pt"), "--encoder-weights", str(tmp_path / "resnet18_timm.pth")], capsys)
    assert_one_line_error(code, err, "applies to the smp-* architectures: choose one with --arch", tmp_path / "u.pt")
