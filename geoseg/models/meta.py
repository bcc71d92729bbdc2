"""Self-describing model metadata (torch-free).

Everything inference needs besides the weights: architecture and its arguments,
input bands and their normalization, the class schema, the recommended tile size
and overlap, and how the model was made. Stored as JSON inside the checkpoint.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from typing import Any

from geoseg.architectures import DEFAULT_OVERLAP, DEFAULT_TILE_SIZE, size_multiple
from geoseg.classes import ClassSchema
from geoseg.errors import CheckpointError

#: identifies geoseg checkpoints
FORMAT = "geoseg-checkpoint"
#: bumped when the layout changes incompatibly
FORMAT_VERSION = 1


@dataclass
class ModelMeta:
    """Metadata stored in a checkpoint beside the weights.

    Attributes:
        arch: registry name, a key of :data:`geoseg.architectures.ARCHITECTURES`.
        arch_args: keyword arguments of the architecture.
        bands: names of the input bands, in model order.
        mean: per-band mean subtracted before the model (input units).
        std: per-band standard deviation divided after the mean.
        schema: output classes and nodata value.
        tile_size: recommended tile side (pixels).
        overlap: recommended overlap (pixels).
        training: free-form record of how the model was made (command, config, metrics).
    """

    arch: str
    arch_args: dict[str, Any]
    bands: list[str]
    mean: list[float]
    std: list[float]
    schema: ClassSchema
    tile_size: int = DEFAULT_TILE_SIZE
    overlap: int = DEFAULT_OVERLAP
    training: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.bands)
        if n < 1:
            raise CheckpointError("model metadata lists no input bands")
        if len(self.mean) != n or len(self.std) != n:
            raise CheckpointError(f"normalization has {len(self.mean)} means and {len(self.std)} stds for {n} bands")
        if not all(math.isfinite(s) and s > 0 for s in self.std):  # NaN fails "<= 0" too: ask for what is valid
            raise CheckpointError(f"normalization std must be a finite number > 0 for every band, got {self.std}")
        if not all(math.isfinite(m) for m in self.mean):
            raise CheckpointError(f"normalization mean must be finite for every band, got {self.mean}")

    @property
    def num_bands(self) -> int:
        return len(self.bands)

    @property
    def num_classes(self) -> int:
        return len(self.schema)

    @property
    def size_multiple(self) -> int:
        """Tile sides must be multiples of this for the architecture."""
        return size_multiple(self.arch, self.arch_args)

    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "arch": self.arch,
            "arch_args": self.arch_args,
            "bands": list(self.bands),
            "normalization": {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]},
            "classes": self.schema.to_dict(),
            "tile_size": int(self.tile_size),
            "overlap": int(self.overlap),
            "training": self.training,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelMeta":
        if d.get("format") != FORMAT:
            raise CheckpointError("not a geoseg checkpoint (format marker missing)")
        version = d.get("format_version")
        if isinstance(version, bool) or not isinstance(version, int) or version < 1:
            raise CheckpointError(f"checkpoint format_version {version!r} is not a version number (1 to "
                                  f"{FORMAT_VERSION}); the file was not written by geoseg or was edited")
        if version > FORMAT_VERSION:
            raise CheckpointError(f"checkpoint format {version} is newer than this geoseg "
                                  f"supports ({FORMAT_VERSION}); upgrade geoseg")
        try:
            return cls(
                arch=str(d["arch"]),
                arch_args=dict(d.get("arch_args", {})),
                bands=[str(b) for b in d["bands"]],
                mean=[float(v) for v in d["normalization"]["mean"]],
                std=[float(v) for v in d["normalization"]["std"]],
                schema=ClassSchema.from_dict(d["classes"]),
                tile_size=int(d.get("tile_size", DEFAULT_TILE_SIZE)),
                overlap=int(d.get("overlap", DEFAULT_OVERLAP)),
                training=dict(d.get("training", {})),
            )
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, CheckpointError):
                raise
            raise CheckpointError(f"checkpoint metadata is incomplete or malformed ({e})") from None

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_json(cls, text: str) -> "ModelMeta":
        try:
            d = json.loads(text)
        except (TypeError, ValueError):
            raise CheckpointError("checkpoint metadata is not valid JSON") from None
        if not isinstance(d, dict):
            raise CheckpointError("checkpoint metadata is not a JSON object")
        return cls.from_dict(d)


def peek_meta(path: str | os.PathLike[str]) -> "ModelMeta | None":
    """A checkpoint's metadata read without torch (``geoseg model info`` of a 1 MB file took 1.7 GB,
    most of it torch), or None when this quick path cannot tell: the caller then loads it with
    :func:`geoseg.models.read_meta`, which also gives the precise errors.

    The torch archive's pickle is read by an unpickler that knows only ``OrderedDict`` and stands
    in a placeholder for every ``torch`` name and tensor storage: nothing in the file is run.
    """
    import collections
    import pickle
    import zipfile

    class _Peek(pickle.Unpickler):
        def find_class(self, module: str, name: str) -> Any:
            if (module, name) == ("collections", "OrderedDict"):
                return collections.OrderedDict
            if module == "torch" or module.startswith("torch."):
                return _placeholder
            raise pickle.UnpicklingError(f"{module}.{name}")

        def persistent_load(self, pid: Any) -> None:
            return None

    try:
        with zipfile.ZipFile(path) as z:
            name = next((n for n in z.namelist() if n.endswith("/data.pkl") or n == "data.pkl"), None)
            if name is None:
                return None
            with z.open(name) as f:
                payload = _Peek(f).load()
        return ModelMeta.from_json(payload["geoseg_meta"])
    except Exception:  # noqa: BLE001 - anything unusual: the torch loader decides and explains
        return None


def _placeholder(*args: Any, **kwargs: Any) -> None:
    return None

