"""Several checkpoints as one model: their class probabilities averaged (an ensemble).

Models trained with different seeds err in different places; averaging their
probabilities cancels much of that seed-to-seed variance (a random forest does the same
with its trees). The members must read the same bands and predict the same classes; each
keeps its own normalization, architecture and depth. The ensemble returns the log of the
mean probabilities, so whatever applies a softmax to a model's output (inference, TTA)
gets the mean probabilities back.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Sequence

import torch
from torch import nn

from geoseg.errors import CheckpointError
from geoseg.models.meta import ModelMeta
from geoseg.models.checkpoint import load_checkpoint


class Ensemble(nn.Module):
    """Mean softmax of ``members``, returned as log-probabilities.

    The input is normalized with the lead member's statistics; member ``i`` sees it mapped
    to its own (``x * scale[i] + shift[i]``, identity where the statistics agree).
    """

    scale: torch.Tensor  # buffers
    shift: torch.Tensor

    def __init__(self, members: Sequence[nn.Module], scale: torch.Tensor, shift: torch.Tensor) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("scale", scale)  # (K, C, 1, 1)
        self.register_buffer("shift", shift)
        self._same = [bool((scale[i] == 1).all() and (shift[i] == 0).all()) for i in range(len(members))]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for i, m in enumerate(self.members):
            xi = x if self._same[i] else x * self.scale[i].to(x.dtype) + self.shift[i].to(x.dtype)
            p = torch.softmax(m(xi).float(), dim=1)
            total = p if total is None else total + p
        assert total is not None
        return torch.log((total / len(self.members)).clamp_min(1e-12))


def load_ensemble(paths: Sequence[str | os.PathLike[str]]) -> tuple[nn.Module, ModelMeta]:
    """Load one checkpoint, or several as an :class:`Ensemble`, with the metadata to run it.

    The metadata is the lead member's (the one whose architecture needs the largest tile
    multiple, so tiles suit every member), with the largest overlap of any member and the
    member paths under ``training["ensemble"]``.

    Raises:
        CheckpointError: a member is unreadable, or reads other bands or predicts other
            classes than the first.
    """
    if not paths:
        raise CheckpointError("no checkpoint given")
    if len(paths) == 1:
        return load_checkpoint(paths[0])
    loaded = [load_checkpoint(p) for p in paths]
    first = loaded[0][1]
    for p, (_, meta) in zip(paths[1:], loaded[1:]):
        if meta.bands != first.bands:
            raise CheckpointError(f"{p}: reads bands {meta.bands}, {paths[0]} reads {first.bands}; "
                                  "an ensemble's models must read the same bands")
        if meta.schema.to_dict() != first.schema.to_dict():
            raise CheckpointError(f"{p}: predicts other classes than {paths[0]} "
                                  f"({', '.join(meta.schema.names)} against {', '.join(first.schema.names)}); "
                                  "an ensemble's models must predict the same classes")
    lead = max(range(len(loaded)), key=lambda i: loaded[i][1].size_multiple)
    lm = loaded[lead][1]
    mean0, std0 = torch.tensor(lm.mean, dtype=torch.float64), torch.tensor(lm.std, dtype=torch.float64)
    scale, shift = [], []
    for _, meta in loaded:
        mi, si = torch.tensor(meta.mean, dtype=torch.float64), torch.tensor(meta.std, dtype=torch.float64)
        scale.append(std0 / si)
        shift.append((mean0 - mi) / si)
    model = Ensemble([m for m, _ in loaded], torch.stack(scale).float()[:, :, None, None],
                     torch.stack(shift).float()[:, :, None, None]).eval()
    meta = replace(lm, overlap=max(m.overlap for _, m in loaded),
                   training={**lm.training, "ensemble": [os.fspath(p) for p in paths]})
    return model, meta
