"""Run an ONNX segmentation model with onnxruntime inside geoseg's tiled, blended, streaming pipeline.

Files written by ``geoseg model export`` carry geoseg's metadata (``geoseg_meta``). Other ONNX
segmentation models are read through the keys of the Deepness QGIS plugin (``class_names``,
``tile_size``, ``tiles_overlap``, ``standardization_mean``/``_std``, which apply to pixel values
divided by 255), with one input ``(N, bands, H, W)`` and one output of probabilities
``(N, classes, H, W)`` (one channel: a sigmoid, read as background/foreground).

A graph with a fixed tile side takes smaller tiles (at the raster's edge, or a small raster)
padded by reflection and cropped back; larger ones are refused up front.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from geoseg.classes import ClassSchema
from geoseg.errors import CheckpointError, UsageError
from geoseg.models.files import model_file
from geoseg.models.meta import ModelMeta


def _session(path: Path, threads: int | None) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads or os.cpu_count() or 1)
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only
    try:
        return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise CheckpointError(f"{path}: not a loadable ONNX model ({str(e).strip().splitlines()[0][:160]})") from None


def _foreign_meta(path: Path, props: dict[str, str], bands: int, classes: int, fixed: int | None) -> ModelMeta:
    """Metadata of an ONNX model geoseg did not write, from the Deepness keys."""
    def get(key: str, default: Any) -> Any:
        try:
            return json.loads(props[key]) if key in props else default
        except ValueError:
            raise CheckpointError(f"{path}: metadata {key!r} is not JSON: {props[key][:80]!r}") from None

    names = get("class_names", None)
    if isinstance(names, dict):
        names = [str(names[k]) for k in sorted(names, key=int)]
    if not names or len(names) != classes:
        names = [f"class_{i}" for i in range(classes)]
    mean = [255.0 * float(v) for v in get("standardization_mean", [0.0] * bands)]
    std = [255.0 * float(v) for v in get("standardization_std", [1.0 / 255.0] * bands)]
    tile = int(get("tile_size", fixed or 256))
    overlap = int(round(tile * float(get("tiles_overlap", 15)) / 100))
    return ModelMeta(arch="onnx", arch_args={}, bands=[f"band_{i}" for i in range(1, bands + 1)],
                     mean=mean, std=std, schema=ClassSchema.from_names(names), tile_size=tile, overlap=overlap,
                     training={"onnx": path.name, "metadata": "Deepness keys"})


class OnnxPredictor:
    """Class probabilities from an ONNX model, for :func:`geoseg.pipeline.predict_raster`.

    Args:
        path: the ``.onnx`` file.
        threads: CPU threads for onnxruntime (default: all cores).
    """

    device = "cpu"
    #: what runs the graph, in the place of a checkpoint's precision in reports ("on cpu onnxruntime")
    precision = "onnxruntime"

    def __init__(self, path: str | os.PathLike[str], *, threads: int | None = None) -> None:
        p = model_file(path)
        self.path = p
        #: CPU threads the model runs on
        self.threads = int(threads or os.cpu_count() or 1)
        self.session = _session(p, self.threads)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(f"{p}: expected one input of shape (N, bands, H, W), got "
                                  f"{[tuple(i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        shape = inputs[0].shape
        h, w = shape[2], shape[3]
        self.fixed_tile = int(h) if isinstance(h, int) and isinstance(w, int) and h == w else None
        if (isinstance(h, int) or isinstance(w, int)) and self.fixed_tile is None:
            raise CheckpointError(f"{p}: input tiles of {h}x{w} are not square; geoseg tiles are")
        props = dict(self.session.get_modelmeta().custom_metadata_map)
        bands = shape[1] if isinstance(shape[1], int) else None
        out_shape = outputs[0].shape
        classes = out_shape[1] if len(out_shape) == 4 and isinstance(out_shape[1], int) else None
        if "geoseg_meta" in props:
            self.meta = ModelMeta.from_json(props["geoseg_meta"])
        elif bands is None or classes is None:
            raise CheckpointError(f"{p}: neither geoseg metadata nor fixed band and class counts in its shapes")
        else:
            self.meta = _foreign_meta(p, props, bands, max(2, classes), self.fixed_tile)
        self.sigmoid = classes == 1
        if bands is not None and bands != self.meta.num_bands:
            raise CheckpointError(f"{p}: its input takes {bands} bands but its metadata lists {self.meta.num_bands}")
        if self.fixed_tile is not None:
            self.meta.tile_size = min(self.meta.tile_size, self.fixed_tile)

    @property
    def num_classes(self) -> int:
        return self.meta.num_classes

    def check_tile(self, size: int) -> None:
        """Refuse tiles larger than a fixed-size graph takes."""
        if self.fixed_tile is not None and size > self.fixed_tile:
            raise UsageError(f"{self.path.name} takes tiles of at most {self.fixed_tile} px; use `tile_size` "
                             f"{self.fixed_tile} or less")

    def predict(self, batch: np.ndarray) -> np.ndarray:
        """Probabilities (N, classes, H, W) float32 for normalised ``batch`` (N, bands, H, W)."""
        x = np.ascontiguousarray(batch, dtype=np.float32)
        h, w = x.shape[2:]
        t = self.fixed_tile
        if t is not None and (h, w) != (t, t):
            self.check_tile(max(h, w))
            x = np.pad(x, ((0, 0), (0, 0), (0, t - h), (0, t - w)), mode="reflect" if min(h, w) > 1 else "edge")
        y = np.asarray(self.session.run(None, {self.input_name: x})[0], dtype=np.float32)
        if self.sigmoid:
            y = np.concatenate([1.0 - y, y], axis=1)
        return np.ascontiguousarray(y[:, :, :h, :w])


def read_onnx_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """The metadata of an ONNX model (as :class:`OnnxPredictor` reads it) without running it."""
    return OnnxPredictor(path, threads=1).meta


def is_onnx(path: str | os.PathLike[str]) -> bool:
    """An ``.onnx`` file name."""
    return str(path).lower().endswith(".onnx")
