"""Losses and scores computed on the device during training (imports torch)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from geoseg.train.config import IGNORE_INDEX


def segmentation_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None,
                      dice: bool) -> torch.Tensor:
    """Cross entropy over labelled pixels (+ soft Dice). Zero, with a graph, when nothing is labelled.

    ``logits`` are ``(N, C, H, W)`` with ``target`` ``(N, H, W)``, or ``(P, C)`` with ``(P,)``
    for pixels already picked out (per-pixel models). An ensemble's logits have one more, last
    axis (a member each): the loss is the mean of the members' losses against the same target, so
    each member learns on its own (their parameters are disjoint).
    """
    if logits.dim() == target.dim() + 2:
        members = logits.unbind(-1)
        return torch.stack([segmentation_loss(m, target, weight, dice) for m in members]).mean()
    # masks instead of boolean indexing and no early return: nothing here waits for the GPU
    valid = target != IGNORE_INDEX
    logits = logits.float()
    n = logits.shape[1]
    safe = torch.where(valid, target, 0)  # ignored pixels point at class 0 and are masked out
    ce = F.cross_entropy(logits, target, weight=weight, ignore_index=IGNORE_INDEX, reduction="sum")
    denom = (weight[safe] * valid).sum() if weight is not None else valid.sum()
    loss = ce / denom.clamp_min(1e-6)  # 0 when nothing is labelled
    if dice:
        p = logits.softmax(1).movedim(1, -1).reshape(-1, n)  # (pixels, n)
        m = valid.reshape(-1, 1).to(p.dtype)
        t = F.one_hot(safe.reshape(-1), n).to(p.dtype) * m
        p = p * m
        inter = (p * t).sum(0)
        card = p.sum(0) + t.sum(0)
        present = (t.sum(0) > 0).to(p.dtype)
        d = (2 * inter + 1.0) / (card + 1.0)
        loss = loss + ((1 - d) * present).sum() / present.sum().clamp_min(1.0)  # mean over classes present
    return loss


def cosine_lr(lr: float, epoch: int, epochs: int) -> float:
    """Learning rate of ``epoch``: cosine decay from ``lr`` to ``lr / 100`` over ``epochs`` (closed form,
    so a resumed run, even with more ``epochs``, needs no scheduler state)."""
    lo = lr * 0.01
    return lo + (lr - lo) * 0.5 * (1 + math.cos(math.pi * epoch / max(epochs - 1, 1)))


def confusion_update(cm: torch.Tensor, logits: torch.Tensor, target: torch.Tensor) -> None:
    n = cm.shape[0]
    pred = logits.argmax(1)
    # ignored pixels go to an extra slot: no boolean indexing, so no host sync on a GPU
    idx = torch.where(target != IGNORE_INDEX, target * n + pred, n * n).flatten()
    counts = torch.zeros(n * n + 1, dtype=cm.dtype, device=cm.device)
    counts.scatter_add_(0, idx, torch.ones_like(idx))
    cm += counts[:-1].reshape(n, n)

