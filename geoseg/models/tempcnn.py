"""TempCNN (Pelletier, Webb and Petitjean 2019): a per-pixel classifier of image time series.

For stacks of many dates (an NDVI series, or several bands per date) where each pixel's
temporal profile, not its neighbourhood, says what it is. Every pixel goes through the
same 1-D convolutions over time, so the model is fully convolutional in space with a
receptive field of one pixel: tiles need no overlap and any tile size works.
"""

from __future__ import annotations

import torch
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
        chunk: pixels per forward chunk in evaluation (bounds activation memory for big tiles).
    """

    def __init__(self, in_channels: int, num_classes: int, bands_per_date: int = 1, hidden: int = 64,
                 kernel: int = 5, fc: int = 256, dropout: float = 0.2, chunk: int = 8192) -> None:
        super().__init__()
        if bands_per_date < 1 or in_channels % bands_per_date:
            raise ValueError(f"{in_channels} bands are not a whole number of dates of {bands_per_date} bands")
        if kernel < 1 or kernel % 2 == 0:
            raise ValueError(f"kernel must be odd, got {kernel}")
        self.dates = in_channels // bands_per_date
        self.bands_per_date = bands_per_date
        self.chunk = chunk
        layers: list[nn.Module] = []
        cin = bands_per_date
        for _ in range(3):
            layers += [nn.Conv1d(cin, hidden, kernel, padding=kernel // 2), nn.BatchNorm1d(hidden),
                       nn.ReLU(inplace=True), nn.Dropout(dropout)]
            cin = hidden
        self.conv = nn.Sequential(*layers)
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(hidden * self.dates, fc), nn.BatchNorm1d(fc),
                                   nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.head = nn.Linear(fc, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        # (N, C, H, W) -> one (bands_per_date, dates) sequence per pixel
        z = x.permute(0, 2, 3, 1).reshape(n * h * w, self.dates, self.bands_per_date).transpose(1, 2)
        if self.training or len(z) <= self.chunk:
            # training batches go in whole: batch norm needs more than one pixel per chunk
            y = self.head(self.dense(self.conv(z)))
        else:
            y = torch.cat([self.head(self.dense(self.conv(part))) for part in z.split(self.chunk)])
        return y.reshape(n, h, w, -1).permute(0, 3, 1, 2)
