"""The demo model shipped inside the package (docs/demo_model.md): ``geoseg infer``'s default. Torch-free."""

from __future__ import annotations

from pathlib import Path

#: a small U-Net trained on sample_data/field.tif (package data: found from a wheel as from a checkout)
DEMO_MODEL = Path(__file__).resolve().with_name("demo_model.pt")
