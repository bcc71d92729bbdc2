"""Build the networks of :data:`geoseg.architectures.ARCHITECTURES`: one builder per family.

Every model maps (N, bands, H, W) to (N, classes, H, W) logits.
"""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from geoseg.architectures import ARCHITECTURES, Architecture, arch_defaults, get_architecture  # noqa: F401
from geoseg.errors import CheckpointError, UsageError
from geoseg.architectures import size_multiple  # noqa: F401 - re-exported


def _build_unet(arch: Architecture, in_channels: int, num_classes: int, base_channels: int, depth: int) -> nn.Module:
    from geoseg.models.unet import UNet

    return UNet(in_channels, num_classes, base_channels=base_channels, depth=depth)


def _build_smp(arch: Architecture, in_channels: int, num_classes: int, encoder: str,
               encoder_weights: str | None, encoder_depth: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    cls = getattr(smp, str(arch.smp_class))
    try:
        return cls(encoder_name=encoder, encoder_weights=encoder_weights, encoder_depth=encoder_depth,
                   in_channels=in_channels, classes=num_classes)
    except (KeyError, ValueError, TypeError, AttributeError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UsageError(f"{arch.name}: cannot build encoder {encoder!r}: {first[:200]}") from None


def _build_tempcnn(arch: Architecture, in_channels: int, num_classes: int, **kwargs: Any) -> nn.Module:
    from geoseg.models.tempcnn import TempCNN

    try:
        return TempCNN(in_channels, num_classes, **kwargs)
    except ValueError as e:
        raise UsageError(f"tempcnn: {e}") from None


#: family -> builder(architecture, in_channels, num_classes, **arch_args)
BUILDERS: dict[str, Callable[..., nn.Module]] = {"geoseg": _build_unet, "smp": _build_smp, "tempcnn": _build_tempcnn}


def build_model(arch: str, in_channels: int, num_classes: int, **arch_args: Any) -> nn.Module:
    """Build a model of the registered architecture ``arch``.

    Args:
        arch: a name in :data:`geoseg.architectures.ARCHITECTURES`.
        in_channels: number of input bands.
        num_classes: number of output classes.
        **arch_args: the architecture's options (its ``defaults`` in the table fill the rest).
    """
    a = get_architecture(arch)
    unknown = set(arch_args) - set(a.defaults)
    if unknown:
        raise CheckpointError(f"unknown options for {arch}: {', '.join(sorted(unknown))}")
    return BUILDERS[a.family](a, in_channels, num_classes, **{**a.defaults, **arch_args})
