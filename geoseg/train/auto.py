"""Training settings picked from the labels, for the options a user did not set. Torch-free.

Polygons and points are *sparse* labels: a few places of each class, with most of the image unlabelled.
A U-Net trained on chips around them learns the polygons' shapes and surroundings rather than the
classes (on the accuracy suite of ``benchmarks/bench_accuracy.py`` its best validation epoch came within
the first three and spatial cross-validation fell below a random forest on the same pixels). For sparse
labels geoseg therefore trains a per-pixel model (``tempcnn``) that reads each labelled pixel's bands
beside the mean of its 3 x 3 neighbourhood: it cannot learn a layout, and the neighbourhood mean damps
pixel noise. Its chips are 3 x 3 (one labelled pixel at the centre, with its whole neighbourhood), 256
a step and 4096 an epoch, so that each step learns from hundreds of places; chips of 16 px around points
held one labelled pixel each and trained on a few pixels a step. A dense label raster keeps the U-Net, which learns from whole chips of labels.

Only options left at their defaults change; an option set on the command line, in a config file or
as a :class:`TrainConfig` argument is kept, and so is the architecture whenever any architecture
option is set. :func:`pick_settings` says what it picked and why, in one line.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from geoseg.train.config import TrainConfig

#: options the picker may set, with the value it gives them for sparse labels
SPARSE_SETTINGS: dict[str, Any] = {"arch": "tempcnn", "context": 3, "tile_size": 3, "batch_size": 256,
                                   "samples_per_epoch": 4096}
#: options that belong to an architecture: one of them set keeps the architecture as it is
ARCH_OPTIONS = ("arch", "base_channels", "depth", "encoder", "encoder_depth", "encoder_weights",
                "bands_per_date", "context")


def explicit_options(cfg: TrainConfig) -> set[str]:
    """The options the user set: those recorded by :meth:`TrainConfig.merge` (the command line and a
    config file), else those whose value differs from the default."""
    given = getattr(cfg, "_explicit", None)
    if given is not None:
        return set(given)
    defaults = TrainConfig()
    return {f.name for f in dataclasses.fields(TrainConfig) if getattr(cfg, f.name) != getattr(defaults, f.name)}


def pick_settings(cfg: TrainConfig) -> tuple[TrainConfig, str | None]:
    """``cfg`` with the settings its labels call for, and a line saying what was picked (None: nothing)."""
    if cfg.vector_labels is None:
        return cfg, None  # a dense label raster keeps the defaults
    # (a resumed run picks the same again: the choice depends only on the options and the label kind)
    given = explicit_options(cfg)
    if given & set(ARCH_OPTIONS):
        return cfg, None
    changes = {k: v for k, v in SPARSE_SETTINGS.items() if k not in given}
    if not changes:
        return cfg, None
    picked = dataclasses.replace(cfg, **changes)
    _copy_explicit(cfg, picked)
    said = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in changes.items())
    return picked, (f"sparse labels (polygons or points): picked {said}, a per-pixel model that reads each "
                    "pixel with its 3x3 neighbourhood mean and cannot learn the polygons' shapes; set --arch to "
                    "choose yourself")


def _copy_explicit(src: TrainConfig, dst: TrainConfig) -> None:
    given = getattr(src, "_explicit", None)
    if given is not None:
        object.__setattr__(dst, "_explicit", given)


def replace_options(cfg: TrainConfig, **changes: Any) -> TrainConfig:
    """``dataclasses.replace`` that counts ``changes`` as set by the user, beside what ``cfg``'s user set
    (so a trial of ``geoseg tune`` or a cross-validation fold trains exactly the options it was given)."""
    out = dataclasses.replace(cfg, **changes)
    object.__setattr__(out, "_explicit", frozenset(explicit_options(cfg) | set(changes)))
    return out
