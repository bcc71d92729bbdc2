"""Batches: the collate function that turns torchgeo samples into normalized, augmented batches (imports torch).

Unlabelled pixels (no polygon, label values in ``ignore_values``, the label raster's
nodata, classes dropped by ``class_map``) and pixels where any image band is nodata or
not finite get :data:`~geoseg.train.config.IGNORE_INDEX` and count neither in the loss
nor in the metrics. The CPU path (:meth:`BatchMaker.process`) and the device path
(:meth:`BatchMaker.finish`) are held to one plain per-sample reference for every option
(tests/test_train.py, tests/test_gpu.py).
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np
import torch

from geoseg.train.config import IGNORE_INDEX
from geoseg.train.data.grid import Box, ImageGrid

D4 = [(k, f) for f in (False, True) for k in range(4)]


def batch_tensor(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor for a batch; in a DataLoader worker it lies in shared memory.

    A worker's batch goes to the main process through shared memory: a tensor made there
    is sent as it is, any other is copied into shared memory first (what torch's default
    collate avoids the same way).
    """
    if torch.utils.data.get_worker_info() is None:
        return torch.empty(tuple(shape), dtype=dtype)
    proto = torch.empty(0, dtype=dtype)
    storage = proto._typed_storage()._new_shared(int(np.prod(shape)), device=proto.device)
    return proto.new(storage).resize_(*shape)


class BatchMaker:
    """Collate function: torchgeo samples -> ``{"image": float (B,C,H,W), "mask": long (B,H,W)}``.

    Steps: stack the samples; look mask values up as class indexes (unknown -> ignore);
    ignore pixels where any band is nodata or not finite, and pixels outside the
    chip's own region when ``clip`` is set, and pixels within ``margin`` of a chip edge
    that is not an edge of the image (for models that read a neighbourhood); normalize
    with the training mean/std (nodata becomes 0, the band mean, as in inference); augment
    (D4, photometric jitter, band dropout).

    With ``on_device`` (training on a GPU) the workers only stack the chips and make the
    labels; :meth:`finish` does validity, normalization and augmentation on the GPU, where
    they are nearly free, instead of in the workers, where they were about 40 % of the
    CPU time of a 68-band chip.
    """

    def __init__(self, grid: ImageGrid, lut: np.ndarray, mean: Sequence[float], std: Sequence[float], *,
                 regions: Sequence[Box] = (), clip: bool = False, augment: str = "none", jitter: float = 0.0,
                 band_dropout: float = 0.0, seed: int = 0, margin: int = 0, on_device: bool = False) -> None:
        self.grid = grid
        #: workers send raw chips with their labels; :meth:`finish` does the rest where the model is
        self.on_device = on_device
        self._on: dict[torch.device, tuple[Any, ...]] = {}  # constants moved to a device
        self._perms: dict[tuple[torch.device, int], torch.Tensor] = {}  # D4 pixel permutations (finish)
        self._ring: Any = None  # BatchRing: shared-memory batch slots (attach_ring)
        self.margin = margin
        self.lut = torch.as_tensor(lut, dtype=torch.long)
        self.mean = torch.tensor(mean, dtype=torch.float32)[None, :, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[None, :, None, None]
        nd = np.asarray(grid.nodata, dtype=np.float64)
        self.nodata = torch.tensor(nd, dtype=torch.float32)[None, :, None, None]
        has = ~np.isnan(nd)
        #: bands compared with their nodata value: True (all), an index list, or None (none)
        self._nodata_bands: Any = True if has.all() else (torch.from_numpy(np.flatnonzero(has)) if has.any() else None)
        self.regions = np.asarray(regions, dtype=np.float64).reshape(-1, 4)
        self.clip = clip
        self.augment = augment
        self.jitter = jitter
        self.band_dropout = band_dropout
        self.seed = seed
        # in shared memory: persistent DataLoader workers see the epoch the main process sets
        self._epoch = torch.zeros(1, dtype=torch.long).share_memory_()
        self._rng: np.random.Generator | None = None
        self._rng_key: tuple[int, int] | None = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_on"], state["_perms"] = {}, {}  # workers never finish batches: no device tensors for them
        return state

    @property
    def epoch(self) -> int:
        """The epoch augmentation draws are seeded with."""
        return int(self._epoch[0])

    def set_epoch(self, epoch: int) -> None:
        """Reseed augmentation for ``epoch`` (resumed runs repeat the same draws); call it
        before iterating the epoch's loader."""
        self._epoch[0] = epoch
        self._rng = None

    def _generator(self) -> np.random.Generator:
        info = torch.utils.data.get_worker_info()
        wid = info.id if info is not None else -1
        epoch = self.epoch
        key = (epoch, wid)
        if self._rng is None or self._rng_key != key:
            self._rng = np.random.default_rng([self.seed, epoch, wid + 1, 7])
            self._rng_key = key
        return self._rng

    def _region_mask(self, bounds: Any, h: int, w: int) -> torch.Tensor:
        x, y = bounds[0], bounds[1]
        rx, ry = (x.stop - x.start) / w, (y.stop - y.start) / h
        xs = x.start + (np.arange(w) + 0.5) * rx
        ys = y.stop - (np.arange(h) + 0.5) * ry  # row 0 is the top
        cx, cy = x.start + 0.5 * rx, y.start + 0.5 * ry
        r = self.regions
        own = np.flatnonzero((r[:, 0] <= cx) & (cx < r[:, 2]) & (r[:, 1] <= cy) & (cy < r[:, 3]))
        if own.size == 0:
            return torch.zeros(h, w, dtype=torch.bool)
        b = r[own[0]]
        m = ((ys >= b[1]) & (ys < b[3]))[:, None] & ((xs >= b[0]) & (xs < b[2]))[None, :]
        return torch.from_numpy(m)

    def _mask_margins(self, y: torch.Tensor, bounds: Sequence[Any] | None) -> None:
        r = self.margin
        left, bottom, right, top = self.grid.bounds
        rx, ry = self.grid.res
        for i in range(len(y)):
            # chip edges lying on the image's edges keep their labels (inference cuts there too)
            if bounds is not None:
                bx, by = bounds[i][0], bounds[i][1]
                at = (by.stop >= top - ry / 2, by.start <= bottom + ry / 2, bx.start <= left + rx / 2,
                      bx.stop >= right - rx / 2)
            else:
                at = (False, False, False, False)
            if not at[0]:
                y[i, :r] = IGNORE_INDEX
            if not at[1]:
                y[i, -r:] = IGNORE_INDEX
            if not at[2]:
                y[i, :, :r] = IGNORE_INDEX
            if not at[3]:
                y[i, :, -r:] = IGNORE_INDEX

    def __call__(self, samples: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        images = [s["image"] for s in samples]
        masks = [s["mask"] for s in samples]
        bounds = [s["bounds"] for s in samples] if "bounds" in samples[0] else None
        if not self.on_device:
            return self.process(torch.stack(images), torch.stack(masks), bounds)
        # the model's device does the rest (finish): send the raw chips, straight from shared memory
        info = torch.utils.data.get_worker_info()
        ring = self._ring
        if ring is not None and info is not None and ring.fits(images):
            return ring.put(info.id, images, self._labels(torch.stack(masks), bounds, torch.empty))
        shape = (len(images), *images[0].shape)
        image = torch.stack([t.float() for t in images], out=batch_tensor(shape, torch.float32))
        return {"image": image, "mask": self._labels(torch.stack(masks), bounds, batch_tensor)}

    def process(self, image: torch.Tensor, mask: torch.Tensor, bounds: Sequence[Any] | None = None
                ) -> dict[str, torch.Tensor]:
        """The batch of ``image`` (B,C,H,W) and ``mask`` ((B,H,W) or (B,1,H,W)); inputs are not modified.

        Each step is one pass over the batch where it can be (this runs for every chip in
        the loader's workers and bounds their throughput): validity from one ``isfinite``
        pass and one nodata comparison, normalization into a new tensor, invalid pixels
        zeroed in place, and each D4 transform applied as a strided numpy view copied once.
        """
        x = image.float()
        d4 = self.augment == "d4"  # then the D4 copy is the output, else x and y are (see batch_tensor)
        y = self._labels(mask, bounds, torch.empty if d4 else batch_tensor)
        invalid = self._invalid(x)
        y[invalid] = IGNORE_INDEX
        x = torch.sub(x, self.mean, out=torch.empty_like(x) if d4 else batch_tensor(x.shape, x.dtype))
        x.div_(self.std)
        bad = invalid.nonzero(as_tuple=True)
        if bad[0].numel():
            x.permute(0, 2, 3, 1)[bad] = 0.0  # nodata and non-finite pixels: 0, the band mean
        over = (~torch.isfinite(x.sum(dim=1))).nonzero(as_tuple=True)
        if over[0].numel():  # finite values that overflow float32 when normalized
            xp = x.permute(0, 2, 3, 1)
            xp[over] = torch.nan_to_num(xp[over], nan=0.0, posinf=0.0, neginf=0.0)
        if self._augments:
            x, y = self._augment(x, y)
        return {"image": x.contiguous(), "mask": y.contiguous()}

    def finish(self, batch: dict[str, Any], device: torch.device | str | None = None) -> dict[str, torch.Tensor]:
        """Second half of an ``on_device`` batch, on the device its tensors are on (the GPU):
        validity, normalization and augmentation, as :meth:`process` does on the CPU.

        Plain batched torch operations: on a GPU they cost next to nothing and need no
        host synchronisation. ``batch`` is consumed (its mask is modified in place). A batch
        that came as a ring slot (:meth:`attach_ring`) is copied to ``device`` first; finish
        it before drawing the next batch, as the slot is then refilled.
        """
        if "slot" in batch:
            if device is None:
                raise ValueError("finish: a ring batch needs the device to copy it to")
            x, y = self._ring.fetch(batch["slot"], batch["n"], torch.device(device))
        else:
            x, y = batch["image"], batch["mask"]
        dev = x.device

        def put(a: np.ndarray) -> torch.Tensor:
            # a pageable host-to-device copy would wait for the GPU's queued work: pin, copy async
            t = torch.from_numpy(np.ascontiguousarray(a))
            return t.pin_memory().to(dev, non_blocking=True) if dev.type == "cuda" else t

        if dev not in self._on:  # the constants once per device
            nd_idx = self._nodata_bands
            self._on[dev] = (self.mean.to(dev), self.std.to(dev), self.nodata.to(dev),
                             nd_idx.to(dev) if isinstance(nd_idx, torch.Tensor) else nd_idx)
        mean, std, nodata, nd = self._on[dev]
        invalid = ~torch.isfinite(x).all(dim=1)
        if nd is not None:
            if nd is True:
                invalid |= (x == nodata).any(dim=1)
            else:
                invalid |= (x[:, nd] == nodata[:, nd]).any(dim=1)
        y.masked_fill_(invalid, IGNORE_INDEX)
        x = (x - mean) / std
        x = torch.nan_to_num(x.masked_fill_(invalid[:, None], 0.0), nan=0.0, posinf=0.0, neginf=0.0)
        if self._augments:
            t, gain, off, drop = self._draws(x.shape[0], x.shape[1])
            if t is not None:
                x, y = self._d4_gather(x, y, put(t))
            if gain is not None and off is not None:
                x.mul_(put(gain)[:, :, None, None])
                x.add_(put(off)[:, :, None, None])
            if drop is not None:
                x.masked_fill_(put(drop)[:, :, None, None], 0.0)
        return {"image": x.contiguous(), "mask": y.contiguous()}

    def _d4_gather(self, x: torch.Tensor, y: torch.Tensor, codes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Sample ``i`` of ``x`` (B,C,H,W) and ``y`` (B,H,W) transformed by D4 element ``codes[i]``:
        one gather each, through the 8 pixel permutations of a square chip (kept per device
        and size), instead of a few kernels per transform; the host only sends the codes.
        """
        b, c, h, w = x.shape
        if h != w:
            raise ValueError(f"D4 augmentation needs square chips, got {h}x{w}")
        key = (x.device, h)
        perms = self._perms.get(key)
        if perms is None:
            idx = torch.arange(h * w, device=x.device).view(h, w)
            perms = torch.stack([torch.rot90(idx.flip(-1) if flip else idx, k, (-2, -1)).reshape(-1)
                                 for k, flip in D4])
            self._perms[key] = perms
        src = perms[codes]  # (B, H*W): output pixel j of sample i reads input pixel src[i, j]
        xo = torch.gather(x.reshape(b, c, h * w), 2, src[:, None, :].expand(b, c, h * w)).view(b, c, h, w)
        yo = torch.gather(y.reshape(b, h * w), 1, src).view(b, h, w)
        return xo, yo

    def attach_ring(self, workers: int, prefetch: int, batch: int, tile: int) -> bool:
        """Workers build ``on_device`` batches in shared-memory slots (:mod:`geoseg.train.ring`)
        instead of torch's per-batch shared memory; call before the loader's workers start.
        False (nothing attached) when the slots would exceed :func:`~geoseg.train.ring.ring_budget`."""
        from geoseg.train.ring import BatchRing, ring_budget, ring_bytes

        chip = (len(self.grid.band_names), tile, tile)
        label = torch.uint8 if self.lut.numel() == 0 or int(self.lut.max()) <= 255 else torch.long
        if not self.on_device or ring_bytes(workers, prefetch, batch, chip, label) > ring_budget():
            return False
        self._ring = BatchRing(workers, prefetch, batch, chip, label)
        return True

    def release(self) -> None:
        """Unlock the ring's pages, if any (they are unlocked when it goes anyway)."""
        if self._ring is not None:
            self._ring.release()

    @property
    def _augments(self) -> bool:
        return self.augment == "d4" or self.jitter > 0 or self.band_dropout > 0

    def _labels(self, mask: torch.Tensor, bounds: Sequence[Any] | None, alloc: Callable[..., torch.Tensor]
                ) -> torch.Tensor:
        """(B,H,W) class indexes: looked up, clipped to the chip's region, margins left out."""
        if mask.ndim == 4:
            mask = mask[:, 0]
        m = mask.long()
        lut = self.lut
        y = alloc(tuple(m.shape), dtype=torch.long).fill_(IGNORE_INDEX)
        inr = (m >= 0) & (m < len(lut))
        y[inr] = lut[m[inr]]
        if self.clip and bounds is not None:
            h, w = y.shape[-2:]
            for i, b in enumerate(bounds):
                y[i][~self._region_mask(b, h, w)] = IGNORE_INDEX
        if self.margin > 0:
            self._mask_margins(y, bounds)
        return y

    def _invalid(self, x: torch.Tensor) -> torch.Tensor:
        """(B,H,W) True where any band is not finite or equals its nodata value (CPU)."""
        # a pixel's band sum is finite unless a band is (or, for absurd values, the sum
        # overflows): test every band only at pixels whose sum is not finite
        invalid = ~torch.isfinite(x.sum(dim=1))
        cand = invalid.nonzero(as_tuple=True)
        if cand[0].numel():
            invalid[cand] = ~torch.isfinite(x.permute(0, 2, 3, 1)[cand]).all(dim=1)
        nd = self._nodata_bands
        if nd is not None:  # numpy reduces over the band axis several times faster here
            xa, ref = x.numpy(), self.nodata.numpy()
            if nd is not True:
                xa, ref = xa[:, nd.numpy()], ref[:, nd.numpy()]
            invalid |= torch.from_numpy((xa == ref).any(axis=1))
        return invalid

    def _draws(self, n: int, bands: int) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray | None,
                                                 np.ndarray | None]:
        """Per sample, in this order: D4 code, jitter gains and offsets, dropped bands."""
        rng = self._generator()
        d4 = self.augment == "d4"
        t = np.zeros(n, dtype=np.int64) if d4 else None
        gain = np.empty((n, bands), dtype=np.float32) if self.jitter > 0 else None
        off = np.empty((n, bands), dtype=np.float32) if self.jitter > 0 else None
        drop = np.empty((n, bands), dtype=bool) if self.band_dropout > 0 else None
        for i in range(n):
            if t is not None:
                t[i] = rng.integers(8)
            if gain is not None and off is not None:
                gain[i] = rng.uniform(1 - self.jitter, 1 + self.jitter, bands)
                off[i] = rng.uniform(-self.jitter, self.jitter, bands)
            if drop is not None:
                drop[i] = rng.random(bands) < self.band_dropout
        return t, gain, off, drop

    def _augment(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """D4 transform, photometric jitter and band dropout (CPU: numpy views, one copy)."""
        t, gain, off, drop = self._draws(x.shape[0], x.shape[1])
        xa, ya = x.numpy(), y.numpy()
        xo, yo = (batch_tensor(x.shape, x.dtype).numpy(), batch_tensor(y.shape, y.dtype).numpy()) if t is not None \
            else (xa, ya)
        for i in range(xa.shape[0]):
            if t is not None:
                k, flip = D4[int(t[i])]
                xi, yi = xa[i], ya[i]
                if flip:
                    xi, yi = xi[..., ::-1], yi[..., ::-1]
                if k:  # same convention as torch.rot90(t, k, (-2, -1))
                    xi, yi = np.rot90(xi, k, axes=(-2, -1)), np.rot90(yi, k, axes=(-2, -1))
                xo[i], yo[i] = xi, yi
            xi = xo[i]
            if gain is not None and off is not None:
                xi *= gain[i][:, None, None]
                xi += off[i][:, None, None]
            if drop is not None:
                xi[drop[i]] = 0.0  # dropped bands: 0, the band mean
        return torch.from_numpy(xo), torch.from_numpy(yo)
