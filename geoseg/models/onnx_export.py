"""Export a checkpoint to ONNX (``geoseg model export``), with its metadata inside.

The graph takes normalised tiles ``(N, bands, tile, tile)`` (dynamic batch, the checkpoint's tile
size) and returns class probabilities ``(N, classes, tile, tile)`` (softmax inside). The file's
metadata properties hold geoseg's complete metadata (``geoseg_meta``) and the keys the Deepness
QGIS plugin reads, JSON-encoded as it expects: ``model_type`` ``"Segmentor"``, ``class_names``
(``{"0": name, ...}``), ``tile_size``, ``tiles_overlap`` (percent of the tile), ``resolution``
(cm per pixel, when known), and ``standardization_mean``/``standardization_std``. Deepness divides
pixel values by 255 before standardizing, so these are geoseg's mean and std divided by 255:
the model then sees ``(value - mean) / std`` in both tools.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoseg.errors import UsageError
from geoseg.io.atomic import atomic_output, check_destination
from geoseg.models.meta import ModelMeta

#: Opset of the exported graphs (onnxruntime >= 1.14 runs it).
OPSET = 18


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.softmax(self.model(x), dim=1)


def deepness_metadata(meta: ModelMeta, resolution_cm: float | None = None) -> dict[str, str]:
    """The metadata properties Deepness reads, JSON-encoded values."""
    props: dict[str, Any] = {
        "model_type": "Segmentor",
        "class_names": {str(i): c.name for i, c in enumerate(meta.schema.classes)},
        "tile_size": int(meta.tile_size),
        "tiles_overlap": int(round(100 * meta.overlap / meta.tile_size)),
        "standardization_mean": [float(m) / 255.0 for m in meta.mean],
        "standardization_std": [float(s) / 255.0 for s in meta.std],
    }
    if resolution_cm is not None:
        props["resolution"] = float(resolution_cm)
    return {k: json.dumps(v) for k, v in props.items()}


def export_onnx(checkpoint: str | os.PathLike[str], output: str | os.PathLike[str], *,
                resolution_cm: float | None = None, overwrite: bool = False) -> Path:
    """Write ``checkpoint`` as an ONNX file at ``output``; return its path.

    Args:
        checkpoint: a geoseg checkpoint (``.pt``).
        output: the ``.onnx`` file to write.
        resolution_cm: ground sampling distance of the training imagery in cm per pixel, for
            Deepness (which rescales other imagery to it); omitted when None.
        overwrite: replace an existing file.
    """
    import onnx

    from geoseg.models.checkpoint import load_checkpoint

    if resolution_cm is not None and not resolution_cm > 0:
        raise UsageError(f"`resolution_cm` must be > 0 cm per pixel, got {resolution_cm}")
    # the destination is checked before the model is loaded and traced (a refused output costs nothing)
    dest = check_destination(output, overwrite=overwrite, inputs=[checkpoint])
    model, meta = load_checkpoint(checkpoint)
    net = _Probabilities(model).eval()
    tile = int(meta.tile_size)
    x = torch.randn(2, meta.num_bands, tile, tile)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with atomic_output(dest, overwrite=overwrite, checked=True) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on its own internals
        try:
            program = torch.onnx.export(net, (x,), dynamic_shapes=({0: batch},), input_names=["input"],
                                        output_names=["probabilities"], opset_version=OPSET, dynamo=True,
                                        verbose=False, optimize=True)
        except Exception as e:  # noqa: BLE001 - the exporter raises many kinds
            why = str(e).strip().splitlines()[0][:200]
            raise UsageError(f"{meta.arch} cannot be exported to ONNX: {why}") from None
        if program is None:  # dynamo=True always returns a program
            raise UsageError(f"{meta.arch} cannot be exported to ONNX: the exporter returned nothing")
        proto = program.model_proto
        if not proto.graph.input[0].type.tensor_type.shape.dim[0].dim_param:
            raise UsageError(f"{meta.arch} exported with a fixed batch size (the exporter specialized it); "
                             "report this with the model's architecture")
        proto.producer_name = "geoseg"
        proto.doc_string = f"geoseg {meta.arch} segmentation model: normalised tiles in, class probabilities out"
        props = {"geoseg_meta": meta.to_json(), **deepness_metadata(meta, resolution_cm)}
        del proto.metadata_props[:]
        for k, v in props.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = k, v
        onnx.checker.check_model(proto)
        onnx.save_model(proto, str(tmp))
    return Path(output)
