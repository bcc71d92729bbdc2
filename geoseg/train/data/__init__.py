"""Training data: grid, label plan and spatial split, batches, loader (imports torch).

Pipeline::

    images (torchgeo RasterDataset, bands stacked) & labels (RasterDataset or VectorDataset)
      -> IntersectionDataset on the first image's grid
      -> RandomGeoSampler over the training regions / GridGeoSampler over the validation region
      -> stack_samples -> :class:`BatchMaker` (class lookup, ignore mask, normalization, augmentation)

One module a stage: :mod:`.grid` (the image grid, normalization statistics),
:mod:`.plan` (class schema, spatial split, regions), :mod:`.batches`
(:class:`BatchMaker`) and :mod:`.loader` (datasets, samplers, the DataLoader).
"""

from __future__ import annotations

from geoseg.train.data.batches import D4, BatchMaker, batch_tensor
from geoseg.train.data.grid import Box, ImageGrid, image_grid, normalization_stats, pool_over_dates
from geoseg.train.data.loader import GridChips, auto_workers, build_dataset, make_loader, train_sampler, val_sampler
from geoseg.train.data.plan import LabelPlan, build_schema, class_weights, plan_labels

__all__ = ["D4", "BatchMaker", "Box", "GridChips", "ImageGrid", "LabelPlan", "auto_workers", "batch_tensor",
           "build_dataset", "build_schema", "class_weights", "image_grid", "make_loader", "normalization_stats",
           "plan_labels", "pool_over_dates", "train_sampler", "val_sampler"]
