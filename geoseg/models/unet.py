"""The classic U-Net (Ronneberger et al. 2015) with BatchNorm and 'same' padding.

Fully convolutional: any input whose height and width are multiples of
``2**depth`` works, so tiles of any such size can be predicted.
"""

from __future__ import annotations

import torch
from torch import nn


def _double_conv(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """Encoder-decoder with skip connections.

    Args:
        in_channels: number of input bands.
        num_classes: number of output classes (logit channels).
        base_channels: channels of the first level; doubled at each pooling.
        depth: number of 2x2 max-poolings (the input side must be a multiple of ``2**depth``).
    """

    def __init__(self, in_channels: int, num_classes: int, base_channels: int = 32, depth: int = 3) -> None:
        super().__init__()
        if in_channels < 1 or num_classes < 1 or base_channels < 1 or depth < 1:
            raise ValueError("in_channels, num_classes, base_channels and depth must be >= 1")
        self.depth = depth
        chans = [base_channels * 2**i for i in range(depth + 1)]
        self.encoders = nn.ModuleList()
        cin = in_channels
        for c in chans[:-1]:
            self.encoders.append(_double_conv(cin, c))
            cin = c
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _double_conv(chans[-2], chans[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for i in range(depth, 0, -1):
            self.ups.append(nn.ConvTranspose2d(chans[i], chans[i - 1], 2, stride=2))
            self.decoders.append(_double_conv(chans[i - 1] * 2, chans[i - 1]))
        self.head = nn.Conv2d(chans[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for enc in self.encoders:
            x = enc(x)
            skips.append(x)
            x = self.pool(x)
        x = self.bottleneck(x)
        for up, dec, skip in zip(self.ups, self.decoders, reversed(skips)):
            x = up(x)
            x = dec(torch.cat([x, skip], dim=1))
        return self.head(x)
