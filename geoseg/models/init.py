"""Create untrained checkpoints (``geoseg model init``). Imports torch."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import torch

from geoseg.architectures import arch_args as complete_arch_args
from geoseg.classes import ClassSchema
from geoseg.errors import UsageError
from geoseg.models.meta import ModelMeta
from geoseg.models import build_model, save_checkpoint, size_multiple
from geoseg.tiling import check_tile_params


def init_checkpoint(output: str | os.PathLike[str], *, arch: str = "unet", bands: int = 3, classes: int = 2,
                    class_names: Sequence[str] | None = None, band_names: Sequence[str] | None = None,
                    base_channels: int | None = None, depth: int | None = None, encoder: str | None = None,
                    encoder_depth: int | None = None,
                    stats_from: str | os.PathLike[str] | None = None, mean: Sequence[float] | None = None,
                    std: Sequence[float] | None = None, tile_size: int = 256, overlap: int = 64,
                    seed: int = 0, overwrite: bool = False) -> Path:
    """Build a randomly initialised model and save it with complete metadata.

    The architecture options (``base_channels``, ``depth``, ``encoder``, ``encoder_depth``) default
    to the architecture table's (:data:`geoseg.architectures.ARCHITECTURES`); giving one that
    ``arch`` does not take is a :class:`UsageError`.
    """
    if class_names is not None and len(class_names) != classes:
        raise UsageError(f"{len(class_names)} class names given for `classes` {classes}")
    if band_names is not None and len(band_names) != bands:
        raise UsageError(f"{len(band_names)} band names given for `bands` {bands}")
    arch_args = complete_arch_args(arch, base_channels=base_channels, depth=depth, encoder=encoder,
                                   encoder_depth=encoder_depth)
    check_tile_params(tile_size, overlap, size_multiple(arch, arch_args))
    if stats_from is not None:
        from geoseg.io.stats import band_stats

        m, s = band_stats([stats_from])
        if len(m) != bands:
            raise UsageError(f"{stats_from} has {len(m)} bands but `bands` is {bands}")
    else:
        m = list(mean) if mean else [0.0] * bands
        s = list(std) if std else [1.0] * bands
        if len(m) != bands or len(s) != bands:
            raise UsageError(f"`mean`/`std` need {bands} values each")
    torch.manual_seed(seed)
    model = build_model(arch, bands, classes, **arch_args)
    schema = ClassSchema.from_names(class_names) if class_names else ClassSchema.default(classes)
    meta = ModelMeta(arch=arch, arch_args=arch_args,
                     bands=list(band_names) if band_names else [f"band_{i}" for i in range(1, bands + 1)],
                     mean=m, std=s, schema=schema, tile_size=tile_size, overlap=overlap,
                     training={"untrained": True, "seed": seed,
                               "note": "random initial weights from 'geoseg model init'"})
    return save_checkpoint(model, meta, output, overwrite=overwrite)
