"""The table of architectures geoseg builds: one entry each, torch-free.

Everything that depends on an architecture reads it from here: the registry that builds the
networks (:mod:`geoseg.models.registry`), ``geoseg model init``, ``geoseg train``'s configuration,
the CLI's ``--arch`` choices and help, tile-size checks (:func:`size_multiple`), overlap defaults
and docs/models.md. Adding an architecture is one :class:`Architecture` here plus, for a new
family, one builder in the registry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from geoseg.errors import UsageError

#: Default tile side in pixels.
DEFAULT_TILE_SIZE = 256
#: Default overlap in pixels between neighbouring tiles. About the U-Net's
#: receptive-field radius, so that blended seams match a whole-image pass.
DEFAULT_OVERLAP = 64
#: The encoder smp architectures get when none is named: small, fast on a CPU, and with
#: published pretrained weights for many band sets (timm, torchgeo).
DEFAULT_ENCODER = "resnet18"


@dataclass(frozen=True)
class Architecture:
    """One architecture.

    Attributes:
        name: the registry name (``--arch``).
        family: which builder makes it: ``geoseg`` (ours), ``smp`` (segmentation-models-pytorch)
            or ``tempcnn``.
        summary: one line for ``--help`` and the docs.
        defaults: its keyword arguments and their defaults (what a checkpoint's ``arch_args`` holds).
        smp_class: the segmentation-models-pytorch class (family ``smp``).
        torchgeo: the model name torchgeo's ``SemanticSegmentationTask`` uses for it, if any.
        per_pixel: classifies each pixel from its own values (no spatial receptive field).
        tile_context: a pixel's class depends on the whole tile (global pooling or attention),
            so tiled results differ from a whole-image pass by more than rounding; the others are
            local: tiles with enough overlap reproduce a whole-image pass.
        output_stride: with family ``smp``, the encoder's output stride, which tile sides must
            be a multiple of (None: ``2 ** encoder_depth``).
        encoder_depths: the encoder depths this decoder supports.
    """

    name: str
    family: str
    summary: str
    defaults: Mapping[str, Any] = field(default_factory=dict)
    smp_class: str | None = None
    torchgeo: str | None = None
    per_pixel: bool = False
    tile_context: bool = False
    output_stride: int | None = None
    encoder_depths: tuple[int, ...] = (5,)

    def size_multiple(self, args: Mapping[str, Any] | None = None) -> int:
        """Tile sides must be multiples of this."""
        a = {**self.defaults, **(args or {})}
        if self.family == "geoseg":
            return int(2 ** int(a["depth"]))
        if self.family == "smp":
            full = int(2 ** int(a["encoder_depth"]))
            return min(full, self.output_stride) if self.output_stride else full
        return 1


def _smp(name: str, cls: str, summary: str, *, torchgeo: str | None = None, tile_context: bool = False,
         output_stride: int | None = None, encoder_depth: int = 5,
         encoder_depths: tuple[int, ...] = (5,)) -> Architecture:
    return Architecture(name, "smp", summary,
                        {"encoder": DEFAULT_ENCODER, "encoder_weights": None, "encoder_depth": encoder_depth},
                        smp_class=cls, torchgeo=torchgeo, tile_context=tile_context, output_stride=output_stride,
                        encoder_depths=encoder_depths)


#: name -> architecture, in the order ``--help`` lists them.
ARCHITECTURES: dict[str, Architecture] = {a.name: a for a in (
    Architecture("unet", "geoseg", "geoseg's own compact U-Net (base_channels, depth)",
                 {"base_channels": 16, "depth": 3}),
    _smp("smp-unet", "Unet", "U-Net with an smp encoder (Fields of The World's architecture)", torchgeo="unet"),
    _smp("smp-unetplusplus", "UnetPlusPlus", "UNet++: nested dense skip connections"),
    _smp("smp-manet", "MAnet", "MA-Net: multi-scale attention (position attention sees the whole tile)",
         tile_context=True),
    _smp("smp-linknet", "Linknet", "LinkNet: light decoder adding encoder features"),
    _smp("smp-fpn", "FPN", "Feature Pyramid Network", encoder_depths=(3, 4, 5)),
    _smp("smp-pspnet", "PSPNet", "Pyramid Scene Parsing: pooled context over the whole tile", tile_context=True,
         encoder_depth=3, encoder_depths=(3, 4, 5)),
    _smp("smp-deeplabv3", "DeepLabV3", "DeepLabV3: atrous convolutions and image pooling (output stride 8)",
         tile_context=True, output_stride=8),
    _smp("smp-deeplabv3plus", "DeepLabV3Plus", "DeepLabV3+: DeepLabV3 with a decoder (output stride 16)",
         torchgeo="deeplabv3+", tile_context=True, output_stride=16),
    _smp("smp-upernet", "UPerNet", "UPerNet: pyramid pooling with an FPN", torchgeo="upernet", tile_context=True),
    _smp("smp-segformer", "Segformer", "SegFormer's all-MLP decoder (global with a MiT encoder)",
         torchgeo="segformer", tile_context=True),
    Architecture("tempcnn", "tempcnn",
                 "per-pixel temporal CNN for stacks of many dates (bands_per_date, context, members)",
                 {"bands_per_date": 1, "hidden": 64, "kernel": 5, "fc": 256, "dropout": 0.2, "context": 1,
                  "members": 1},
                 per_pixel=True),
)}

#: Names of the architectures that classify each pixel on its own.
PER_PIXEL = frozenset(a.name for a in ARCHITECTURES.values() if a.per_pixel)


def get_architecture(name: str) -> Architecture:
    """The table entry for ``name``; a :class:`UsageError` listing the choices otherwise."""
    try:
        return ARCHITECTURES[name]
    except (KeyError, TypeError):
        raise UsageError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}") from None


def arch_defaults(name: str) -> dict[str, Any]:
    """A copy of ``name``'s keyword arguments and their defaults."""
    return dict(get_architecture(name).defaults)


def _owners(option: str) -> str:
    """Which architectures take ``option``, in words."""
    names = [a.name for a in ARCHITECTURES.values() if option in a.defaults]
    if len(names) > 1 and all(ARCHITECTURES[n].family == "smp" for n in names):
        return "the smp-* architectures"
    return "`arch` " + " or ".join(names) + (" only" if len(names) == 1 else "")


def arch_args(name: str, *, strict: bool = True, **given: Any) -> dict[str, Any]:
    """``name``'s complete keyword arguments: its defaults updated by the ``given`` ones that are not None.

    An option given (not None) that ``name`` does not take is a :class:`UsageError` when ``strict``;
    otherwise (a training config shared between architectures) it is dropped with a warning.

    Raises:
        UsageError: such an option (``strict``), or an encoder depth the decoder does not support.
    """
    import warnings

    arch = get_architecture(name)
    chosen = {k: v for k, v in given.items() if v is not None}
    for k in sorted(set(chosen) - set(arch.defaults)):
        text = f"`{k}` {chosen[k]} applies to {_owners(k)}, not `arch` {name}"
        if strict:
            raise UsageError(text)
        warnings.warn(f"{text}; ignored", UserWarning, stacklevel=3)
        del chosen[k]
    args = {**arch.defaults, **chosen}
    if arch.family == "smp" and int(args["encoder_depth"]) not in arch.encoder_depths:
        raise UsageError(f"`arch` {name} supports `encoder_depth` {' or '.join(map(str, arch.encoder_depths))}, "
                         f"not {args['encoder_depth']}")
    return args


def size_multiple(name: str, args: Mapping[str, Any] | None = None) -> int:
    """Tile sides must be multiples of this for architecture ``name`` with keyword arguments ``args``."""
    return get_architecture(name).size_multiple(args) if name in ARCHITECTURES else 1


def default_overlap(name: str, tile: int, args: Mapping[str, Any] | None = None) -> int:
    """Overlap a trained model recommends: its receptive field for per-pixel models (none
    for a pixel alone, ``context - 1`` for a tempcnn reading a neighbourhood), else up to 64 px."""
    if name in PER_PIXEL:
        return min(int((args or {}).get("context", 1)) - 1, tile // 4)
    return min(DEFAULT_OVERLAP, tile // 4)


def from_torchgeo(model: str) -> Architecture | None:
    """The architecture torchgeo's ``SemanticSegmentationTask`` calls ``model``, if geoseg has it."""
    return next((a for a in ARCHITECTURES.values() if a.torchgeo == model), None)

