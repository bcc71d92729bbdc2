"""Model registry: architecture name -> builder. Every model maps (N, bands, H, W) to (N, classes, H, W) logits."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from geoseg.errors import CheckpointError, UsageError
from geoseg.modelmeta import size_multiple  # noqa: F401 - re-exported


def _build_unet(in_channels: int, num_classes: int, base_channels: int = 32, depth: int = 3) -> nn.Module:
    from geoseg.models.unet import UNet

    return UNet(in_channels, num_classes, base_channels=base_channels, depth=depth)


def _build_smp_unet(in_channels: int, num_classes: int, encoder: str = "efficientnet-b3",
                    encoder_weights: str | None = None, encoder_depth: int = 5) -> nn.Module:
    try:
        import segmentation_models_pytorch as smp
    except ImportError:  # pragma: no cover - declared dependency
        raise UsageError("smp-unet needs segmentation-models-pytorch: pip install segmentation-models-pytorch") from None
    try:
        return smp.Unet(encoder_name=encoder, encoder_weights=encoder_weights, encoder_depth=encoder_depth,
                        in_channels=in_channels, classes=num_classes)
    except (KeyError, ValueError) as e:
        raise UsageError(f"smp-unet: cannot build encoder {encoder!r}: {e}") from None


def _build_tempcnn(in_channels: int, num_classes: int, bands_per_date: int = 1, hidden: int = 64,
                   kernel: int = 5, fc: int = 256, dropout: float = 0.2, context: int = 1) -> nn.Module:
    from geoseg.models.tempcnn import TempCNN

    try:
        return TempCNN(in_channels, num_classes, bands_per_date=bands_per_date, hidden=hidden, kernel=kernel,
                       fc=fc, dropout=dropout, context=context)
    except ValueError as e:
        raise UsageError(f"tempcnn: {e}") from None


#: name -> (builder, default keyword arguments)
MODELS: dict[str, tuple[Callable[..., nn.Module], dict[str, Any]]] = {
    "unet": (_build_unet, {"base_channels": 32, "depth": 3}),
    "smp-unet": (_build_smp_unet, {"encoder": "efficientnet-b3", "encoder_weights": None, "encoder_depth": 5}),
    "tempcnn": (_build_tempcnn, {"bands_per_date": 1, "hidden": 64, "kernel": 5, "fc": 256, "dropout": 0.2,
                                 "context": 1}),
}


def arch_defaults(arch: str) -> dict[str, Any]:
    if arch not in MODELS:
        raise UsageError(f"unknown architecture {arch!r}; choose one of {', '.join(MODELS)}")
    return dict(MODELS[arch][1])


def build_model(arch: str, in_channels: int, num_classes: int, **arch_args: Any) -> nn.Module:
    """Build a model of the registered architecture ``arch``.

    Args:
        arch: ``unet``, ``smp-unet`` or ``tempcnn``.
        in_channels: number of input bands.
        num_classes: number of output classes.
        **arch_args: architecture options (``base_channels``, ``depth`` for ``unet``;
            ``encoder``, ``encoder_weights``, ``encoder_depth`` for ``smp-unet``; ``bands_per_date``,
            ``hidden``, ``kernel``, ``fc``, ``dropout`` for ``tempcnn``).
    """
    defaults = arch_defaults(arch)
    unknown = set(arch_args) - set(defaults)
    if unknown:
        raise CheckpointError(f"unknown options for {arch}: {', '.join(sorted(unknown))}")
    builder = MODELS[arch][0]
    return builder(in_channels, num_classes, **{**defaults, **arch_args})
