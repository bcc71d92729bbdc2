"""Turn external checkpoints into geoseg's self-describing format (``geoseg model import``).

Two kinds of file come in:

* **Lightning checkpoints of torchgeo's** ``SemanticSegmentationTask`` (Fields of The World's
  ``CustomSemanticSegmentationTask`` included): the architecture comes from ``hyper_parameters``
  (``model``, ``backbone``, ``in_channels``, ``num_classes``) and the weights from ``state_dict``
  under ``model.``.
* **Plain state dicts** of a segmentation-models-pytorch network (or one of geoseg's
  architectures), bare or under ``state_dict``/``model``, with ``model.``/``module.`` prefixes
  allowed: the architecture is named on the command line, the band and class counts are read
  from the weights.

What a weights file cannot say (band names, normalization, class names and colours, tile size
and overlap) is given as options, or by a preset (:data:`PRESETS`: ``ftw`` for Fields of The
World's models). The file is read with ``torch.load(weights_only=True)``, which runs no code;
only plain containers, tensors, ``pathlib`` paths and numpy scalars are allowed in it.
"""

from __future__ import annotations

import hashlib
import math
import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from geoseg.architectures import ARCHITECTURES, arch_args, from_torchgeo
from geoseg.classes import ClassInfo, ClassSchema, default_colours
from geoseg.errors import CheckpointError, UsageError
from geoseg.io.atomic import check_destination
from geoseg.models.files import checkpoint_destination
from geoseg.models.meta import ModelMeta
from geoseg.models.checkpoint import save_checkpoint
from geoseg.models.registry import build_model
from geoseg.tiling import check_tile_params


@dataclass(frozen=True)
class Preset:
    """What a published family of checkpoints needs beside its weights."""

    description: str
    bands: tuple[str, ...]
    scale: float
    classes: tuple[str, ...]
    tile_size: int
    overlap: int


#: Known checkpoint families. ``ftw``: Fields of The World (ftw-baselines): Sentinel-2 B4, B3, B2, B8
#: of two dates (window A, window B), input ``image / 3000``, classes background/field/boundary;
#: ``ftw inference run`` uses 1024 px patches with 64 px discarded on each side (128 px overlap).
PRESETS: dict[str, Preset] = {
    "ftw": Preset("Fields of The World field boundaries (ftw-baselines)",
                  ("A_B4", "A_B3", "A_B2", "A_B8", "B_B4", "B_B3", "B_B2", "B_B8"), 3000.0,
                  ("background", "field", "boundary"), 1024, 128),
}


@dataclass
class ImportOptions:
    """Metadata given on the command line (None: from the preset or a default)."""

    preset: str | None = None
    arch: str | None = None
    encoder: str | None = None
    encoder_depth: int | None = None
    base_channels: int | None = None
    depth: int | None = None
    band_names: Sequence[str] | None = None
    mean: Sequence[float] | None = None
    std: Sequence[float] | None = None
    scale: float | None = None
    class_names: Sequence[str] | None = None
    colours: Sequence[tuple[int, int, int]] | None = None
    tile_size: int | None = None
    overlap: int | None = None


def _allowed_globals() -> list[Any]:
    """The non-tensor types a published checkpoint may hold: paths, numpy scalars and dtypes."""
    import pathlib

    import numpy as np

    allowed: list[Any] = [pathlib.PosixPath, pathlib.WindowsPath, pathlib.PurePosixPath, pathlib.PureWindowsPath,
                          np.dtype]
    try:
        from numpy._core.multiarray import scalar
    except ImportError:  # numpy < 2
        from numpy.core.multiarray import scalar  # type: ignore[no-redef]
    allowed.append(scalar)
    allowed += [type(np.dtype(t)) for t in ("float64", "float32", "int64", "int32", "bool")]
    return allowed


def read_external(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load an external checkpoint without running code; a :class:`CheckpointError` otherwise."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: file not found")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p}: not a torch checkpoint (expected a file written by torch.save: .ckpt, .pt, .pth)")
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            obj = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        try:
            names = torch.serialization.get_unsafe_globals_in_checkpoint(p)
        except Exception:  # noqa: BLE001 - only for the message
            names = []
        what = ", ".join(names[:5]) or "objects other than weights"
        raise CheckpointError(f"{p}: refused to load: it holds {what}, which could run code; export its "
                              "state_dict with torch.save(model.state_dict(), ...) and import that") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{p}: damaged checkpoint ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{p}: expected a dict of weights (a state dict or a Lightning checkpoint)")
    if "geoseg_meta" in obj:
        raise UsageError(f"{p}: already a geoseg checkpoint; use it as it is")
    return obj


def _tensors(obj: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    return {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}


def _strip(state: dict[str, torch.Tensor], wanted: set[str]) -> dict[str, torch.Tensor]:
    """``state`` under the prefix (``""``, ``model.``, ``module.``...) that makes its names the model's."""
    best: dict[str, torch.Tensor] = {}
    for prefix in ("", "model.", "module.", "module.model.", "net.", "network."):
        mapped = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if len(set(mapped) & wanted) > len(set(best) & wanted):
            best = mapped
    return best


def _json_safe(v: Any) -> Any:
    if isinstance(v, torch.Tensor):
        return v.tolist()
    if isinstance(v, Mapping):
        return {str(k): _json_safe(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_json_safe(x) for x in v]
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def _from_lightning(obj: dict[str, Any], opts: ImportOptions) -> tuple[str, dict[str, Any], int, int,
                                                                      dict[str, torch.Tensor], dict[str, Any]]:
    hp = obj["hyper_parameters"]
    if not isinstance(hp, Mapping) or "model" not in hp:
        raise CheckpointError("a Lightning checkpoint without the 'model' hyper-parameter of torchgeo's "
                              "SemanticSegmentationTask")
    arch = from_torchgeo(str(hp["model"]))
    if arch is None:
        known = ", ".join(a.torchgeo for a in ARCHITECTURES.values() if a.torchgeo)
        raise CheckpointError(f"torchgeo model {hp['model']!r} has no geoseg architecture (geoseg imports {known})")
    if hp.get("model_kwargs"):
        raise CheckpointError(f"model_kwargs {dict(hp['model_kwargs'])} change the architecture; geoseg builds "
                              f"{arch.smp_class} with smp's defaults only")
    if opts.arch is not None and opts.arch != arch.name:
        raise UsageError(f"`arch` {opts.arch} disagrees with the checkpoint's model {hp['model']!r} ({arch.name})")
    args = arch_args(arch.name, encoder=str(hp.get("backbone") or "resnet50"),
                     encoder_depth=opts.encoder_depth)
    bands = int(hp.get("in_channels") or 0)
    classes = int(hp.get("num_classes") or hp.get("num_labels") or 0)
    state = {k[len("model."):]: v for k, v in _tensors(obj["state_dict"]).items() if k.startswith("model.")}
    keep = ("model", "backbone", "in_channels", "num_classes", "loss", "class_weights", "ignore_index", "lr")
    record = {"source_format": "lightning checkpoint of torchgeo SemanticSegmentationTask",
              "hyper_parameters": _json_safe({k: hp[k] for k in keep if k in hp}),
              "lightning": str(obj.get("pytorch-lightning_version", "")), "epoch": _json_safe(obj.get("epoch"))}
    return arch.name, args, bands, classes, state, record


def _from_state_dict(obj: dict[str, Any], opts: ImportOptions) -> tuple[str, dict[str, Any], int, int,
                                                                        dict[str, torch.Tensor], dict[str, Any]]:
    for key in ("state_dict", "model", "model_state_dict", "net"):
        if isinstance(obj.get(key), Mapping) and _tensors(obj[key]):
            obj = dict(obj[key])
            break
    state = _tensors(obj)
    if not state:
        raise CheckpointError("holds no weights (expected a state dict or a Lightning checkpoint)")
    if opts.arch is None:
        raise UsageError("a plain state dict does not say its architecture: pass `arch` (and `encoder` for smp-*), "
                         "e.g. `arch` smp-unet `encoder` efficientnet-b3")
    args = arch_args(opts.arch, encoder=opts.encoder, encoder_depth=opts.encoder_depth,
                     base_channels=opts.base_channels, depth=opts.depth)
    # band and class counts from the weights: the first convolution's inputs, the last one's outputs
    convs = [v for v in state.values() if v.ndim == 4]
    bands = int(convs[0].shape[1]) if convs else 0
    classes = int(convs[-1].shape[0]) if convs else 0
    return opts.arch, args, bands, classes, state, {"source_format": "state dict"}


def _normalization(opts: ImportOptions, preset: Preset | None, n: int) -> tuple[list[float], list[float]]:
    if opts.scale is not None and (opts.mean or opts.std):
        raise UsageError("give `scale` or `mean`/`std`, not both")
    if opts.mean or opts.std:
        if not (opts.mean and opts.std) or len(opts.mean) != n or len(opts.std) != n:
            raise UsageError(f"`mean` and `std` need {n} values each (the model takes {n} bands)")
        return [float(v) for v in opts.mean], [float(v) for v in opts.std]
    scale = opts.scale if opts.scale is not None else preset.scale if preset else None
    if scale is None:
        raise UsageError("the file does not say how its input was scaled: pass `scale` S (the model took image / S), "
                         f"`mean`/`std` per band, or `preset` ({', '.join(PRESETS)})")
    if not (math.isfinite(scale) and scale > 0):
        raise UsageError(f"`scale` must be a number > 0, got {scale}")
    return [0.0] * n, [float(scale)] * n


def _schema(opts: ImportOptions, preset: Preset | None, k: int) -> ClassSchema:
    names = list(opts.class_names) if opts.class_names else list(preset.classes) if preset else None
    if names is None:
        names = [f"class_{i}" for i in range(k)]
    if len(names) != k:
        raise UsageError(f"{len(names)} class names for a model with {k} output classes")
    if opts.colours is not None and len(opts.colours) != k:
        raise UsageError(f"{len(opts.colours)} colours for {k} classes")
    colours = list(opts.colours) if opts.colours else default_colours([str(n) for n in names])
    return ClassSchema(tuple(ClassInfo(i, str(n), (int(c[0]), int(c[1]), int(c[2])))
                             for i, (n, c) in enumerate(zip(names, colours))))


def import_checkpoint(source: str | os.PathLike[str], output: str | os.PathLike[str], opts: ImportOptions,
                      *, overwrite: bool = False) -> tuple[Path, ModelMeta]:
    """Convert ``source`` into a geoseg checkpoint at ``output``; return its path and metadata.

    The network is rebuilt from the architecture table and the weights loaded strictly, so a
    file whose weights do not fit the architecture is refused, never half-loaded.
    """
    preset = None
    if opts.preset is not None:
        if opts.preset not in PRESETS:
            raise UsageError(f"`preset` {opts.preset!r}: choose one of {', '.join(PRESETS)}")
        preset = PRESETS[opts.preset]
    check_destination(checkpoint_destination(output), overwrite=overwrite, inputs=[source])  # before the work
    obj = read_external(source)
    if isinstance(obj.get("hyper_parameters"), Mapping) and isinstance(obj.get("state_dict"), Mapping):
        arch, args, n_bands, n_classes, state, record = _from_lightning(obj, opts)
    else:
        arch, args, n_bands, n_classes, state, record = _from_state_dict(obj, opts)
    if n_bands < 1 or n_classes < 1:
        raise CheckpointError(f"{source}: cannot tell the number of input bands and classes from the file")
    try:
        model = build_model(arch, n_bands, n_classes, **args)
    except UsageError as e:
        raise CheckpointError(f"{source}: {e}") from None
    wanted = model.state_dict()
    state = _strip(state, set(wanted))
    missing = [k for k in wanted if k not in state]
    unexpected = [k for k in state if k not in wanted]
    if missing or unexpected:
        detail = (f"missing {len(missing)} (e.g. {missing[0]})" if missing else "") + \
                 ("; " if missing and unexpected else "") + \
                 (f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "")
        raise CheckpointError(f"{source}: the weights are not those of {arch} {args}: {detail}; check `arch` "
                              "and `encoder`")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        msg = next((ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln), str(e).splitlines()[0])
        raise CheckpointError(f"{source}: the weights do not fit {arch} {args}: {msg[:200]}") from None

    names = list(opts.band_names) if opts.band_names else list(preset.bands) if preset else None
    if names is not None and len(names) != n_bands:
        raise UsageError(f"{len(names)} band names for a model with {n_bands} input bands")
    mean, std = _normalization(opts, preset, n_bands)
    tile = opts.tile_size or (preset.tile_size if preset else 256)
    overlap = opts.overlap if opts.overlap is not None else preset.overlap if preset else min(64, tile // 4)
    check_tile_params(tile, overlap, ARCHITECTURES[arch].size_multiple(args))
    with open(source, "rb") as f:  # streamed: a checkpoint can be gigabytes
        digest = hashlib.file_digest(f, "sha256").hexdigest()
    meta = ModelMeta(arch=arch, arch_args=args,
                     bands=names or [f"band_{i}" for i in range(1, n_bands + 1)], mean=mean, std=std,
                     schema=_schema(opts, preset, n_classes), tile_size=tile, overlap=overlap,
                     training={"imported_from": Path(source).name, "sha256": digest,
                               **({"preset": opts.preset} if opts.preset else {}), **record})
    return save_checkpoint(model, meta, output, overwrite=overwrite), meta
