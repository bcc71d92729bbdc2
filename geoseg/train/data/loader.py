"""Datasets, samplers and the DataLoader over them (imports torch)."""

from __future__ import annotations

import os
from functools import partial
from typing import Any, Callable, Sequence

import torch

from geoseg.errors import LabelError
from geoseg.io.gdalcache import block_cache_size, set_block_cache
from geoseg.train.auto import BATCH_CHIPS
from geoseg.train.config import TrainConfig
from geoseg.train.data.batches import BatchMaker
from geoseg.train.data.grid import Box, ImageGrid
from geoseg.train.data.plan import LabelPlan


def build_dataset(grid: ImageGrid, plan: LabelPlan, cfg: TrainConfig, split: str) -> Any:
    """torchgeo IntersectionDataset of the stacked images and the ``split``'s labels."""
    from geoseg.train.datasets import LabelRaster, PolygonLabels, image_with_labels, stack_images

    images = stack_images(list(grid.paths))
    src = plan.train_source if split == "train" else plan.val_source
    assert src is not None
    if plan.kind == "vector":
        assert cfg.class_field is not None
        labels: Any = PolygonLabels(src, cfg.class_field, plan.split["codes"], crs=images.crs, res=images.res)
    else:
        labels = LabelRaster(src, crs=images.crs, res=images.res)
    return image_with_labels(images, labels)


def train_sampler(grid: ImageGrid, plan: LabelPlan, cfg: TrainConfig, generator: torch.Generator) -> Any:
    """Random ``tile_size`` chips over the training regions (area-weighted), all drawn from ``generator``."""
    from geoseg.train.datasets import Regions, SeededRandomGeoSampler

    regions = Regions(plan.train_regions, grid.crs, grid.res)
    n = cfg.samples_per_epoch
    sampler = SeededRandomGeoSampler(regions, size=cfg.tile_size, length=n, generator=generator)
    if len(sampler) == 0 and n is None:
        raise LabelError("no training region is as large as one chip; lower `tile_size`")
    if n is None:
        sampler.length = max(len(sampler), 4 * (cfg.batch_size or BATCH_CHIPS))
    return sampler


def val_sampler(grid: ImageGrid, plan: LabelPlan, cfg: TrainConfig) -> "GridChips":
    """GridGeoSampler chips (stride = chip size) over each validation region in turn.

    torchgeo 0.8's grid does not clamp the last chip, which may hang past a region;
    :class:`BatchMaker` masks every chip to the region it starts in, so each labelled
    validation pixel is counted exactly once.
    """
    return GridChips(grid, plan.val_regions, cfg.tile_size)


class GridChips:
    """One torchgeo ``GridGeoSampler`` per region, chained; keeps chips that start inside their region.

    Regions are grown by a thousandth of a pixel (see :class:`~geoseg.train.datasets.Regions`),
    which can make torchgeo's ceiling formula add a chip starting exactly at the region's
    end; that chip belongs to no pixel of the region and is dropped here.
    """

    def __init__(self, grid: ImageGrid, regions: Sequence[Box], size: int) -> None:
        from torchgeo.samplers import GridGeoSampler

        from geoseg.train.datasets import Regions

        rx, ry = grid.res
        self.chips: list[Any] = []
        for r in regions:
            for q in GridGeoSampler(Regions([r], grid.crs, grid.res), size=size, stride=size):
                cx, cy = q[0].start + 0.5 * rx, q[1].start + 0.5 * ry
                if r[0] <= cx < r[2] and r[1] <= cy < r[3]:
                    self.chips.append(q)

    def __iter__(self) -> Any:
        return iter(self.chips)

    def __len__(self) -> int:
        return len(self.chips)


def auto_workers(device: torch.device, devices: int = 1) -> int:
    """DataLoader workers when none are asked for: 0 on a CPU; on a GPU up to 8 per GPU
    process, leaving one core for each (on the 16-core H200 machine 8 workers kept a small
    U-Net at 0.7-0.98 of its model-only speed, docs/performance.md)."""
    if device.type != "cuda":
        return 0
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    return max(0, min(8, cores // max(devices, 1) - 1))


def make_loader(dataset: Any, sampler: Any, collate: Callable[..., Any], cfg: TrainConfig, *,
                pin_memory: bool = False, ring: bool | None = None) -> Any:
    """DataLoader over the sampler's chips; batches are built (``collate``) in the workers.

    ``pin_memory`` (for CUDA) makes the host-to-device copy of each batch asynchronous and
    about 7x faster than from pageable memory. Workers are persistent (they keep their open
    files, GDAL block caches and polygon trees from one epoch to the next); the epoch that
    seeds augmentation reaches them through :class:`BatchMaker`'s shared-memory epoch. The
    workers split this process's GDAL block cache size (``GDAL_CACHEMAX``) between them, at
    least 64 MB each.

    With workers, an ``on_device`` :class:`BatchMaker` and ``ring`` (default: ``pin_memory``),
    workers build batches in shared-memory slots that the main process copies to the GPU
    from (:mod:`geoseg.train.ring`); the caller finishes each batch before drawing the next.
    """
    from torch.utils.data import DataLoader

    workers = cfg.num_workers or 0  # None: not resolved by the caller (auto_workers), none
    prefetch = 2  # the ring's slot count depends on it
    if (pin_memory if ring is None else ring) and workers > 0 and isinstance(collate, BatchMaker):
        collate.attach_ring(workers, prefetch, cfg.batch_size or BATCH_CHIPS, cfg.tile_size)
    init = None
    if workers > 0:  # the workers share this process's GDAL block cache budget instead of each taking it
        # (GDAL's default is 5 % of the RAM per process: 8 persistent workers could hold 40 % of it as cache)
        init = partial(set_block_cache, max(64 << 20, block_cache_size() // workers))
    return DataLoader(dataset, batch_size=cfg.batch_size or BATCH_CHIPS, sampler=sampler, collate_fn=collate,
                      num_workers=workers, persistent_workers=workers > 0, pin_memory=pin_memory,
                      prefetch_factor=prefetch if workers > 0 else None, in_order=True, worker_init_fn=init)

