"""Models and checkpoints (imports torch)."""

from geoseg.architectures import ARCHITECTURES, arch_defaults
from geoseg.modelmeta import ModelMeta
from geoseg.models.checkpoint import load_checkpoint, read_meta, save_checkpoint
from geoseg.models.registry import build_model, size_multiple

__all__ = ["ARCHITECTURES", "ModelMeta", "arch_defaults", "build_model", "load_checkpoint", "read_meta",
           "save_checkpoint", "size_multiple"]
