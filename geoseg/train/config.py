"""Training configuration: one dataclass, loadable from YAML or TOML, saved in the checkpoint. Torch-free.

Every ``geoseg train`` option has a field here with the same name (dashes become
underscores), so a config file can set anything the command line can. Command-line
values given explicitly override the file; the merged config is stored in the
checkpoint's ``training.config`` so a run can be reproduced.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from geoseg.errors import UsageError
from geoseg.architectures import ARCHITECTURES, PER_PIXEL, size_multiple
from geoseg.architectures import arch_args as complete_arch_args

#: Value of the label tensors where a pixel is not used by the loss or the metrics.
IGNORE_INDEX = 255


@dataclass
class TrainConfig:
    """Everything that defines a training run.

    Attributes:
        images: input rasters. One multi-band file, or several files whose bands are
            stacked in the given order (e.g. one file per band). All must share a grid.
        labels: label raster (class values per pixel), or None.
        vector_labels: polygon file (GPKG, GeoJSON, Shapefile...), or None.
        class_field: attribute of ``vector_labels`` holding the class (name or number).
        output: best-checkpoint path (``.pt``); ``<stem>.last.pt``, ``<stem>.metrics.csv``
            and ``<stem>.curves.png`` are written beside it.
        arch: ``auto`` (chosen from the labels and bands by :mod:`geoseg.train.auto`) or a name in
            :data:`geoseg.architectures.ARCHITECTURES`: ``unet``, the ``smp-*`` decoders, or
            ``tempcnn`` (per-pixel temporal CNN for stacks of many dates; chips can then be small,
            e.g. 8 px).
        sampling: ``auto``, ``pixels`` or ``chips``. ``pixels``: a per-pixel model (with ``context``
            > 1 each pixel also carries its neighbourhood's mean profile) trains on a table of the
            labelled pixels (:mod:`geoseg.train.data.pixels`), each
            class drawn with weight ``pixels ** class_balance``; ``chips``: on chips read
            through torchgeo. ``auto``: pixels for per-pixel models with context 1, else chips.
        class_balance: ``sampling`` pixels: class ``c`` is drawn with weight ``pixels_c ** class_balance``
            (1: as often as it is labelled, 0.5: by the square root, 0: all classes equally). None:
            0.5 for polygons and points, whose class sizes say how much a user drew, and 1 for a
            label raster, whose class sizes are the landscape's (:mod:`geoseg.train.auto`).
        The architecture options below are None for the table's default; one that ``arch``
        does not take is an error.
        base_channels: unet channels of the first level.
        depth: unet number of poolings.
        encoder: smp-* encoder name.
        encoder_depth: smp-* encoder depth.
        encoder_weights: smp-*: a file of pretrained encoder weights (timm, smp or torchgeo
            state dict, ``.pt``/``.pth``/``.safetensors``) to start from; nothing is downloaded.
        bands_per_date: tempcnn: bands per date (the bands are ordered date by date).
        context: tempcnn: odd side in pixels of the neighbourhood whose mean profile the
            model reads beside each pixel's own (1 = the pixel alone; e.g. 7 damps the
            pixel noise of maps whose classes cover many pixels).
        members: tempcnn: networks trained side by side whose probabilities are averaged (an
            ensemble in one checkpoint); None: :data:`geoseg.train.auto.MEMBERS_PIXELS` with
            ``sampling`` pixels, else 1.
        epochs: maximum number of epochs.
        samples_per_epoch: training chips per epoch (default: about the number of
            non-overlapping chips in the training regions, at least 4 batches), or pixels
            per epoch with ``sampling`` pixels (default :data:`geoseg.train.auto.PIXELS_PER_EPOCH`).
        batch_size: chips (or pixels) per step (None: 8 chips, 256 pixels).
        tile_size: chip side in pixels (a multiple of ``2**depth``).
        lr: AdamW learning rate (cosine-decayed over ``epochs``).
        weight_decay: AdamW weight decay.
        class_weights: ``none`` or ``auto`` (inverse square root of training label
            frequencies, normalised to mean 1).
        dice: add a soft Dice loss (over labelled pixels) to the cross entropy.
        augment: ``d4`` (random flips and 90-degree rotations) or ``none``.
        jitter: photometric jitter amplitude (per-band gain and offset in normalised
            units, uniform in ``±jitter``); 0 disables it (None: 0.05 with ``sampling``
            pixels, else 0).
        ema: keep an exponential moving average of the weights with this decay per step
            (e.g. 0.99) and use it for validation and in the checkpoints; 0 disables it.
        band_dropout: probability that a band of a training chip is replaced by its
            mean (0 after normalisation, as nodata is at inference). For time-series
            stacks it teaches the model not to rely on any single date (clouds); 0
            disables it.
        val_split: fraction of polygons (vector labels) or spatial blocks (raster
            labels) held out for validation; 0 disables validation. None: 0.2 on chips (the
            best epoch and early stopping need it), 0 with ``sampling`` pixels (nothing is chosen
            on it there, and few polygons are too precious to hold out; ``cv`` estimates accuracy).
        val_block: side of the spatial blocks in pixels (raster labels; default
            ``max(2 * tile_size, 64)``, 32 with ``sampling`` pixels).
        class_map: ``{source: target}``: rename or merge label values or class-field
            names (``"3": "grass", "4": "grass"``); a target of ``""`` or ``"ignore"`` drops
            the source class (its pixels become unlabelled).
        ignore_values: label-raster values meaning "unlabelled" (the raster's nodata is
            always unlabelled too).
        patience: stop after this many epochs without a better validation macro IoU.
        cv: after training, estimate the model's accuracy by spatial cross-validation with this many
            folds (each trains a model on the other folds' labels; see :mod:`geoseg.train.crossval`),
            stored in the checkpoint; 0 disables it. None: :data:`geoseg.train.auto.CV_VECTOR_PIXELS`
            folds for polygons or points with pixel sampling (no validation split says how good the
            model is there), else 0.
        seed: seed of every random choice (split, sampling, augmentation, weights).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        devices: number of GPUs (more than 1 uses Lightning Fabric's DDP).
        num_workers: DataLoader worker processes; None (auto): none on a CPU (the model step
            dominates there), on a GPU up to 8 per GPU, leaving a core for the main process.
        resume: continue from ``<stem>.last.pt``.
        overwrite: replace existing outputs.
    """

    images: list[str] = field(default_factory=list)
    labels: str | None = None
    vector_labels: str | None = None
    class_field: str | None = None
    output: str = "model.pt"
    arch: str = "auto"
    sampling: str = "auto"
    class_balance: float | None = None
    base_channels: int | None = None
    depth: int | None = None
    encoder: str | None = None
    encoder_depth: int | None = None
    encoder_weights: str | None = None
    bands_per_date: int | None = None
    context: int | None = None
    members: int | None = None
    epochs: int = 20
    samples_per_epoch: int | None = None
    batch_size: int | None = None
    tile_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 1e-4
    class_weights: str = "none"
    dice: bool = False
    augment: str = "d4"
    jitter: float | None = None
    band_dropout: float = 0.0
    ema: float = 0.0
    val_split: float | None = None
    val_block: int | None = None
    class_map: dict[str, str] = field(default_factory=dict)
    ignore_values: list[int] = field(default_factory=lambda: [0])
    patience: int = 10
    cv: int | None = None
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    num_workers: int | None = None
    resume: bool = False
    overwrite: bool = False

    # ------------------------------------------------------------------ checks
    def validate(self) -> "TrainConfig":
        """Raise :class:`UsageError` on the first invalid value; return self."""
        if not self.images:
            raise UsageError("no input image; pass `images` (repeat it to stack single-band files)")
        if (self.labels is None) == (self.vector_labels is None):
            raise UsageError("give exactly one of `labels` (a label raster) or `vector_labels` (polygons)")
        if self.vector_labels is not None and not self.class_field:
            raise UsageError("`vector_labels` needs `class_field`, the attribute holding each polygon's class")
        if self.arch != "auto" and self.arch not in ARCHITECTURES:
            raise UsageError(f"`arch` {self.arch!r}: choose auto or one of {', '.join(ARCHITECTURES)}")
        if self.sampling not in ("auto", "pixels", "chips"):
            raise UsageError(f"`sampling` {self.sampling!r}: choose auto, pixels or chips")
        min_tile = 1 if self.arch in PER_PIXEL or self.arch == "auto" else 16
        args = self._arch_args(warn=True)  # says which options of other architectures are ignored
        context = int(args.get("context", 1))
        if self.sampling == "pixels" and self.arch != "auto" and self.arch not in PER_PIXEL:
            raise UsageError(f"`sampling` pixels trains a per-pixel model (`arch` tempcnn), not `arch` {self.arch}; "
                             "use `sampling` chips")
        checks = [("epochs", self.epochs >= 1), ("batch_size", self.batch_size is None or self.batch_size >= 1),
                  ("tile_size", self.tile_size >= min_tile), ("lr", self.lr > 0), ("patience", self.patience >= 1),
                  ("cv", self.cv is None or self.cv == 0 or self.cv >= 2),
                  ("devices", self.devices >= 1), ("num_workers", self.num_workers is None or self.num_workers >= 0),
                  ("depth", 1 <= args.get("depth", 1) <= 8), ("base_channels", args.get("base_channels", 1) >= 1),
                  ("jitter", self.jitter is None or 0 <= self.jitter < 1),
                  ("class_balance", self.class_balance is None or 0 <= self.class_balance <= 1),
                  ("weight_decay", self.weight_decay >= 0),
                  ("band_dropout", 0 <= self.band_dropout < 1), ("ema", 0 <= self.ema < 1),
                  ("bands_per_date", args.get("bands_per_date", 1) >= 1),
                  ("context", context >= 1 and context % 2 == 1), ("members", args.get("members", 1) >= 1)]
        for name, ok in checks:
            if not ok:
                raise UsageError(f"`{name}` {getattr(self, name)!r} is out of range")
        if self.samples_per_epoch is not None and self.samples_per_epoch < 1:
            raise UsageError("`samples_per_epoch` must be >= 1")
        if self.val_split is not None and not 0 <= self.val_split < 1:
            raise UsageError(f"`val_split` {self.val_split}: use a fraction in [0, 1), e.g. 0.2")
        if self.class_weights not in ("none", "auto"):
            raise UsageError(f"`class_weights` {self.class_weights!r}: choose none or auto")
        if self.augment not in ("none", "d4"):
            raise UsageError(f"`augment` {self.augment!r}: choose d4 or none")
        if self.encoder_weights is not None and "encoder" not in args:
            raise UsageError("`encoder_weights` applies to the smp-* architectures: choose one with `arch` (e.g. "
                             f"smp-unet), not {self.arch}")
        if self.encoder_weights is not None and not Path(self.encoder_weights).is_file():
            raise UsageError(f"`encoder_weights` {self.encoder_weights}: file not found")
        if self.arch == "auto":
            return self  # the rest depends on the architecture: checked again once it is chosen
        if self.val_block is not None and not self.pixels and self.val_block < self.tile_size:
            raise UsageError(f"`val_block` {self.val_block} is smaller than `tile_size` {self.tile_size}")
        if self.tile_size < context:
            raise UsageError(f"`tile_size` {self.tile_size} is smaller than `context` {context}: chips need "
                             f"labels beyond {context // 2} px of their edges; use `tile_size` "
                             f"{max(16, 2 * context)}")
        mult = self.size_multiple
        if self.tile_size % mult:
            raise UsageError(f"`tile_size` {self.tile_size} must be a multiple of {mult} for {self.arch}; "
                             f"use {max(mult, self.tile_size // mult * mult)}")
        return self

    @property
    def arch_args(self) -> dict[str, Any]:
        """The architecture's complete keyword arguments: the table's defaults and the options given."""
        return self._arch_args(warn=False)

    def _arch_args(self, warn: bool) -> dict[str, Any]:
        # a config file may hold options of several architectures: those of others are dropped (with a
        # warning from validate()), except --context, which changes how chips are sampled
        import warnings

        if self.arch == "auto":
            return {}
        if self.context is not None and "context" not in ARCHITECTURES[self.arch].defaults:
            complete_arch_args(self.arch, context=self.context)  # raises: applies to --arch tempcnn only
        with warnings.catch_warnings():
            if not warn:
                warnings.simplefilter("ignore")
            return complete_arch_args(self.arch, strict=False, base_channels=self.base_channels, depth=self.depth,
                                      encoder=self.encoder, encoder_depth=self.encoder_depth,
                                      bands_per_date=self.bands_per_date, context=self.context,
                                      members=self.members)

    @property
    def size_multiple(self) -> int:
        """Chip and tile sides must be multiples of this (the model's pooling factor)."""
        return 1 if self.arch == "auto" else size_multiple(self.arch, self.arch_args)

    @property
    def pixels(self) -> bool:
        """Training on a table of labelled pixels (``sampling`` pixels, or auto with a per-pixel model
        reading the pixel alone), not on chips."""
        if self.sampling != "auto":
            return self.sampling == "pixels"
        return self.arch in PER_PIXEL and int(self.arch_args.get("context", 1)) == 1

    @property
    def block_size(self) -> int:
        """Side of the spatial validation blocks of raster labels: ``val_block``, else two chips (at least
        64 px), or 32 px when training on pixels (no chip has to fit in a block)."""
        return self.val_block or (32 if self.pixels else max(2 * self.tile_size, 64))

    # ------------------------------------------------------------------ paths beside the model
    def sidecar(self, kind: str) -> Path:
        """``last`` -> ``model.last.pt``, ``metrics`` -> ``model.metrics.csv``, ``curves`` -> ``model.curves.png``."""
        p = Path(self.output)
        ext = {"last": ".last.pt", "metrics": ".metrics.csv", "curves": ".curves.png"}[kind]
        return p.with_name(p.stem + ext)

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], *, source: str = "config") -> "TrainConfig":
        """Build from a mapping; unknown keys and wrong types raise :class:`UsageError`."""
        names = {f.name: f for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        for key, value in d.items():
            k = str(key).replace("-", "_")
            if k == "image":
                k = "images"
            if k not in names:
                raise UsageError(f"{source}: unknown option {key!r}; valid options are "
                                 f"{', '.join(sorted(names))}")
            kwargs[k] = _coerce(k, value, source)
        return cls(**kwargs)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> dict[str, Any]:
        """Read a YAML (``.yaml``/``.yml``) or TOML (``.toml``) file into a plain dict of options.

        A TOML file may put the options at top level or under a ``[train]`` table.
        """
        p = Path(path)
        if not p.is_file():
            raise UsageError(f"{p}: config file not found")
        try:
            text = p.read_text(encoding="utf-8")
        except UnicodeDecodeError as e:
            raise UsageError(f"{p}: config is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
        try:
            if p.suffix.lower() == ".toml":
                import tomllib

                data: Any = tomllib.loads(text)
            elif p.suffix.lower() in (".yaml", ".yml", ".json"):
                import yaml

                data = yaml.safe_load(text) if text.strip() else {}
            else:
                raise UsageError(f"{p}: config must be .yaml, .yml or .toml")
        except UsageError:
            raise
        except Exception as e:  # noqa: BLE001 - parser errors of two libraries
            raise UsageError(f"{p}: cannot parse config: {str(e).splitlines()[0][:160]}") from None
        if isinstance(data, dict) and set(data) == {"train"} and isinstance(data["train"], dict):
            data = data["train"]
        if not isinstance(data, dict):
            raise UsageError(f"{p}: config must be a mapping of option names to values")
        cls.from_dict(data, source=str(p))  # type check early
        return {str(k).replace("-", "_"): v for k, v in data.items()}

    @classmethod
    def merge(cls, file_options: Mapping[str, Any] | None, cli_options: Mapping[str, Any]) -> "TrainConfig":
        """File options overridden by command-line options that are not None; validated."""
        d = dict(file_options or {})
        if "image" in d:
            d["images"] = d.pop("image")
        for k, v in cli_options.items():
            if v is None or (k in ("images", "class_map", "ignore_values") and not v):
                continue
            d[k] = v
        return cls.from_dict(d).validate()

    def to_json(self) -> str:
        return json.dumps(self.to_dict())


def _coerce(name: str, value: Any, source: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(TrainConfig)}[name]
    t = str(f.type)
    try:
        if name == "images":
            vals = [value] if isinstance(value, (str, os.PathLike)) else list(value)
            return [str(v) for v in vals]
        if name == "class_map":
            if isinstance(value, str):
                return parse_class_map([value])
            if isinstance(value, (list, tuple)):
                return parse_class_map([str(v) for v in value])
            return {str(k): ("" if v is None else str(v)) for k, v in dict(value).items()}
        if name == "ignore_values":
            ivals: list[Any] = [value] if isinstance(value, (int, str)) else list(value)
            return [int(v) for v in ivals]
        if value is None:
            if "None" in t:
                return None
            raise TypeError("null")
        if t.startswith("bool"):
            if isinstance(value, str):
                if value.lower() in ("true", "yes", "1", "on"):
                    return True
                if value.lower() in ("false", "no", "0", "off"):
                    return False
                raise ValueError(value)
            return bool(value)
        if t.startswith("int"):
            if isinstance(value, float) and not value.is_integer():
                raise ValueError(value)
            return int(value)
        if t.startswith("float"):
            return float(value)
        if t.startswith("str"):
            return str(value)
    except (TypeError, ValueError):
        raise UsageError(f"{source}: option {name!r} has an invalid value {value!r} (expected {t})") from None
    return value


def parse_class_map(items: list[str] | None) -> dict[str, str]:
    """``["3=grass", "4=grass", "0=ignore"]`` or ``["a=b,c=d"]`` -> ``{"3": "grass", ...}``."""
    out: dict[str, str] = {}
    for it in items or []:
        for part in str(it).split(","):
            part = part.strip()
            if not part:
                continue
            if "=" not in part:
                raise UsageError(f"`class_map` entry {part!r} must look like SOURCE=TARGET (e.g. 4=grass)")
            k, v = part.split("=", 1)
            if not k.strip():
                raise UsageError(f"`class_map` entry {part!r} has an empty source")
            out[k.strip()] = v.strip()
    return out
