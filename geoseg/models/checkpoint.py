"""Save and load self-describing checkpoints, safely.

A checkpoint is a ``torch.save`` zip holding ``{"geoseg_meta": <JSON str>, "state_dict": ...}``.
Loading uses ``torch.load(weights_only=True)``, which refuses any pickled object
other than tensors and plain containers, so a crafted file cannot run code.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoseg.errors import CheckpointError
from geoseg.io.atomic import atomic_output
from geoseg.models.files import checkpoint_destination, model_file
from geoseg.models.meta import ModelMeta
from geoseg.models.registry import build_model


def save_checkpoint(model: nn.Module, meta: ModelMeta, path: str | os.PathLike[str], *,
                    overwrite: bool = False, extra: dict[str, Any] | None = None) -> Path:
    """Write ``model``'s weights and ``meta`` to ``path`` atomically.

    Args:
        model: the network (its ``state_dict`` is saved on CPU).
        meta: metadata describing it.
        path: destination ``.pt`` file.
        overwrite: replace an existing file.
        extra: more tensors or plain values to store (optimizer state for resuming).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    payload: dict[str, Any] = {"geoseg_meta": meta.to_json(), "state_dict": state}
    if extra:
        payload["extra"] = extra
    with atomic_output(checkpoint_destination(path), overwrite=overwrite) as tmp:
        torch.save(payload, tmp)
    return Path(path)


def update_training_record(path: str | os.PathLike[str], **entries: Any) -> None:
    """Add ``entries`` to a checkpoint's ``training`` metadata (e.g. a cross-validation estimate); the
    file is rewritten atomically, its weights unchanged."""
    payload = read_checkpoint(path)
    meta = ModelMeta.from_json(payload["geoseg_meta"])
    meta.training.update(entries)
    payload["geoseg_meta"] = meta.to_json()
    with atomic_output(path, overwrite=True) as tmp:
        torch.save(payload, tmp)


def read_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the raw payload safely (weights only); raise :class:`CheckpointError` on any problem."""
    p = model_file(path)
    if p.stat().st_size == 0:
        raise CheckpointError(f"{p}: model file is empty")
    if not zipfile.is_zipfile(p):
        raise CheckpointError(f"{p}: not a geoseg checkpoint (not a torch zip archive; truncated or another format)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise CheckpointError(f"{p}: refused to load: the file holds objects other than weights ({first[:160]}); "
                              "only load models from sources you trust") from None
    except (RuntimeError, OSError, EOFError, ValueError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{p}: damaged model file ({str(e).splitlines()[0][:160]})") from None
    if not isinstance(payload, dict) or "geoseg_meta" not in payload or "state_dict" not in payload:
        raise CheckpointError(f"{p}: not a geoseg checkpoint (a torch file without geoseg metadata)")
    return payload


def load_checkpoint(path: str | os.PathLike[str], *, map_location: str | torch.device = "cpu"
                    ) -> tuple[nn.Module, ModelMeta]:
    """Load a model and its metadata. The model is returned in eval mode.

    Raises:
        CheckpointError: missing, damaged, unsafe, or of an unknown architecture.
    """
    payload = read_checkpoint(path)
    try:
        meta = ModelMeta.from_json(payload["geoseg_meta"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
    try:
        # the weights come from the file: pretrained weights a checkpoint names (encoder_weights) are
        # never fetched, so loading a checkpoint never reaches the network
        args = {**meta.arch_args, **({"encoder_weights": None} if "encoder_weights" in meta.arch_args else {})}
        model = build_model(meta.arch, meta.num_bands, meta.num_classes, **args)
    except Exception as e:  # noqa: BLE001 - any build failure is a bad checkpoint
        raise CheckpointError(f"{path}: cannot build architecture {meta.arch!r}: {str(e).splitlines()[0]}") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except (RuntimeError, KeyError, TypeError) as e:
        msg = str(e).splitlines()[0][:200]
        raise CheckpointError(f"{path}: weights do not match the {meta.arch} architecture in its metadata "
                              f"({msg})") from None
    model.eval()
    return model.to(map_location), meta


def read_meta(path: str | os.PathLike[str]) -> ModelMeta:
    """Metadata only (still loads the file safely)."""
    payload = read_checkpoint(path)
    try:
        return ModelMeta.from_json(payload["geoseg_meta"])
    except CheckpointError as e:
        raise CheckpointError(f"{path}: {e}") from None
