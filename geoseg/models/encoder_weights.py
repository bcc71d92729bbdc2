"""Start an smp encoder from pretrained weights in a local file (``geoseg train --encoder-weights``).

The file is a state dict of the encoder's network as timm, segmentation-models-pytorch or torchgeo
publish them (``.pt``/``.pth`` read with ``torch.load(weights_only=True)``, or ``.safetensors``),
bare or wrapped (``{"state_dict": ...}``, ``{"model": ...}``, Lightning's ``model.encoder.`` keys).
Nothing is downloaded. When the file's first convolution takes another number of bands than the
model, it is adapted the way timm does for pretrained weights with ``in_chans`` (torchgeo's
timm backbones load that way): its filters repeated over the new bands and scaled by
``old / new`` (summed for one band), so the layer's response to a band-average image is kept.
"""

from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from geoseg.errors import UsageError

#: Prefixes that published files put before the encoder's own keys.
_PREFIXES = ("", "model.encoder.", "encoder.", "model.backbone.", "backbone.", "module.", "model.")
#: Share of the encoder's tensors a file must provide to count as weights for that encoder.
MIN_MATCHED = 0.5


@dataclass
class EncoderLoad:
    """What :func:`load_encoder_weights` did."""

    matched: int
    total: int
    adapted: list[str]


def read_state_dict(path: str | os.PathLike[str]) -> dict[str, torch.Tensor]:
    """The tensors of a weights file, safely (no code runs); unwraps the usual containers."""
    p = Path(path)
    if not p.is_file():
        raise UsageError(f"{p}: weights file not found")
    if p.suffix.lower() == ".safetensors":
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(p)))
        except Exception as e:  # noqa: BLE001 - the library's own errors for damaged files
            raise UsageError(f"{p}: not a readable safetensors file ({str(e).splitlines()[0][:160]})") from None
    if not zipfile.is_zipfile(p):
        raise UsageError(f"{p}: not a torch weights file (expected .pt/.pth saved by torch.save, or .safetensors)")
    try:
        obj: Any = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe content"
        raise UsageError(f"{p}: refused: the file holds objects other than weights ({first[:160]})") from None
    except (RuntimeError, OSError, EOFError, ValueError) as e:
        raise UsageError(f"{p}: damaged weights file ({str(e).splitlines()[0][:160]})") from None
    for key in ("state_dict", "model", "model_state", "model_state_dict", "weights"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    tensors = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)} if isinstance(obj, dict) else {}
    if not tensors:
        raise UsageError(f"{p}: holds no tensors (expected a state dict of encoder weights)")
    return tensors


def _candidates(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]
                ) -> dict[str, torch.Tensor]:
    """The key mapping (strip a prefix, maybe add ``model.`` for smp's timm-universal encoders)
    under which most of ``target``'s names are found in ``source``."""
    best: dict[str, torch.Tensor] = {}
    for strip in _PREFIXES:
        for add in ("", "model."):
            mapped = {add + k[len(strip):]: v for k, v in source.items() if k.startswith(strip)}
            hits = {k: v for k, v in mapped.items() if k in target}
            if len(hits) > len(best):
                best = hits
    return best


def load_encoder_weights(model: nn.Module, path: str | os.PathLike[str]) -> EncoderLoad:
    """Load the encoder weights in ``path`` into ``model.encoder`` (an smp model).

    Raises:
        UsageError: the file is not a weights file, or fits less than half of the encoder's
            tensors (weights of another network).
    """
    from timm.models import adapt_input_conv

    encoder = getattr(model, "encoder", None)
    if not isinstance(encoder, nn.Module):
        raise UsageError("`encoder_weights` needs an smp-* architecture (a model with an encoder)")
    target = encoder.state_dict()
    found = _candidates(read_state_dict(path), target)
    load: dict[str, torch.Tensor] = {}
    adapted: list[str] = []
    for k, v in found.items():
        want = target[k]
        if v.shape == want.shape:
            load[k] = v.to(want.dtype)
        elif v.ndim == 4 and want.ndim == 4 and v.shape[0] == want.shape[0] and v.shape[2:] == want.shape[2:]:
            load[k] = adapt_input_conv(int(want.shape[1]), v, base_chans=int(v.shape[1])).to(want.dtype)
            adapted.append(f"{k}: {v.shape[1]} -> {want.shape[1]} bands")
    if len(load) < MIN_MATCHED * len(target):
        raise UsageError(f"{path}: its tensors fit {len(load)} of the {len(target)} of this encoder "
                         f"({type(encoder).__name__}); pass weights published for this `encoder`")
    encoder.load_state_dict(load, strict=False)
    return EncoderLoad(len(load), len(target), adapted)
