"""TempCNN (Pelletier, Webb and Petitjean 2019): a per-pixel classifier of image time series.

For stacks of many dates (an NDVI series, or several bands per date) where each pixel's
temporal profile, not its neighbourhood, says what it is. Every pixel goes through the
same 1-D convolutions over time, so the model is fully convolutional in space. By default
its receptive field is one pixel: tiles need no overlap and any tile size works. With
``context`` > 1 each pixel's profile is read together with the mean profile of the
``context`` x ``context`` pixels around it (a fixed box filter, borders averaged over the
pixels inside the image), which damps the pixel noise of per-pixel maps; the receptive
field is then ``context`` pixels and tiles overlap by ``context - 1``.

With ``members`` > 1 the model is an ensemble of that many networks trained side by side on the
same batches (each on its own loss: training returns their logits on a last axis), whose class
probabilities are averaged in evaluation (returned as log-probabilities, so a softmax gives the
mean back). Seeds of a small per-pixel model disagree on a few percent of held-out pixels;
averaging cancels much of that, as a random forest's trees do.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class TempCNN(nn.Module):
    """Three 1-D convolutions over the dates, a dense layer, a linear head; per pixel.

    Args:
        in_channels: number of input bands, ``dates * bands_per_date``, ordered date by
            date (all bands of the first date, then of the second, ...).
        num_classes: output classes.
        bands_per_date: bands per date (1 for a single index such as NDVI).
        hidden: filters of each convolution.
        kernel: convolution length in dates (odd).
        fc: units of the dense layer.
        dropout: dropout after every layer (training only).
        context: odd side in pixels of the neighbourhood whose mean profile is added to each
            pixel's own (as ``bands_per_date`` more bands per date); 1 = the pixel alone.
        chunk: pixels per forward chunk in evaluation (bounds activation memory for big tiles).
        members: networks in the ensemble (1: a single network, whose output is plain logits).
    """

    def __init__(self, in_channels: int, num_classes: int, bands_per_date: int = 1, hidden: int = 64,
                 kernel: int = 5, fc: int = 256, dropout: float = 0.2, context: int = 1,
                 chunk: int = 8192, members: int = 1) -> None:
        super().__init__()
        if bands_per_date < 1 or in_channels % bands_per_date:
            raise ValueError(f"{in_channels} bands are not a whole number of dates of {bands_per_date} bands")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        if context < 1 or context % 2 == 0:
            raise ValueError(f"context must be odd, got {context}")
        if members < 1:
            raise ValueError(f"members must be at least 1, got {members}")
        self.dates = in_channels // bands_per_date
        self.bands_per_date = bands_per_date
        self.context = context
        self.chunk = chunk
        cin = bands_per_date * (2 if context > 1 else 1)
        # member 0 keeps the single network's names (checkpoints of members=1 load unchanged)
        self.conv, self.dense, self.head = self._network(cin, num_classes, hidden, kernel, fc, dropout)
        self.more = nn.ModuleList(nn.ModuleList(self._network(cin, num_classes, hidden, kernel, fc, dropout))
                                  for _ in range(members - 1))

    def _network(self, cin: int, num_classes: int, hidden: int, kernel: int, fc: int,
                 dropout: float) -> tuple[nn.Module, nn.Module, nn.Module]:
        layers: list[nn.Module] = []
        for _ in range(3):
            layers += [nn.Conv1d(cin, hidden, kernel, padding=kernel // 2), nn.BatchNorm1d(hidden),
                       nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = hidden
        dense = nn.Sequential(nn.Flatten(), nn.Linear(hidden * self.dates, fc), nn.BatchNorm1d(fc),
                              nn.ReLU(inplace=True), nn.Dropout(dropout))
        return nn.Sequential(*layers), dense, nn.Linear(fc, num_classes)

    def _classify(self, z: torch.Tensor) -> torch.Tensor:
        """Logits of the pixel sequences ``z``: ``(P, classes)``; with several members ``(P, classes,
        members)`` in training, the log of their mean probabilities in evaluation."""
        nets = [(self.conv, self.dense, self.head), *(tuple(net.children()) for net in self.more)]
        outs = [head(dense(conv(z))) for conv, dense, head in nets]
        if len(outs) == 1:
            return outs[0]
        if self.training:
            return torch.stack(outs, -1)
        mean = torch.stack([o.float().softmax(1) for o in outs]).mean(0)
        return mean.clamp_min(1e-12).log().to(outs[0].dtype)

    def forward(self, x: torch.Tensor, pixels: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits ``(N, classes, H, W)``; with ``pixels`` (indexes into the ``N*H*W``
        pixels, row-major) only those pixels' logits, ``(len(pixels), classes)``: training
        spends no compute on unlabelled pixels. An ensemble in training adds a last axis, one
        member each."""
        n, c, h, w = x.shape
        bands = self.bands_per_date
        if self.context > 1:
            k = self.context
            mean = F.avg_pool2d(x, k, stride=1, padding=k // 2, count_include_pad=False)
            # date by date: the pixel's bands, then its neighbourhood's
            x = torch.stack([x.reshape(n, self.dates, bands, h, w), mean.reshape(n, self.dates, bands, h, w)], 2)
            bands *= 2
            x = x.reshape(n, self.dates * bands, h, w)
        # (N, C, H, W) -> one (bands, dates) sequence per pixel
        z = x.permute(0, 2, 3, 1).reshape(n * h * w, self.dates, bands).transpose(1, 2)
        if pixels is not None:
            return self._classify(z[pixels])
        if self.training or torch.compiler.is_exporting() or len(z) <= self.chunk:
            # training batches go in whole: batch norm needs more than one pixel per chunk (and an
            # exported graph keeps its batch dimension free)
            y = self._classify(z)
        else:
            y = torch.cat([self._classify(part) for part in z.split(self.chunk)])
        # (N*H*W, classes[, members]) -> (N, classes, H, W[, members])
        return y.reshape(n, h, w, *y.shape[1:]).movedim(3, 1)
