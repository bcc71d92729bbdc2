"""The device stages of inference: raw row bands in, finished output rows out, all in torch.

Per tile row (a :class:`~geoseg.pipeline.read.RowBand` of raw values in the raster's own
type), on the predictor's device: upload (from page-locked memory, asynchronously, on a
GPU), validity, normalization (masked values become 0, the band mean), reflection padding
past the raster's end, cutting into tiles (views), batching across tile rows, the model and
its softmax, blending with the window weights into the :class:`RowBlender` of the rows in
flight, and, for rows no later tile touches, argmax, the class lookup, nodata, and the
uint8 (or float32) probabilities and confidence. Only finished rows go back to the host,
into page-locked buffers, as uint8 classes (plus probabilities if asked for). On a GPU
nothing here waits for the device: the host queues work and the writer thread waits for
each copy's event; on a CPU the same operations run on all cores.

The sums are float32 on every device by default (``accumulate``; on a CPU 1.6x faster stages
than float64: 0.17 -> 0.11 s per 2048² raster); float64 sums are the exactness reference
(tiled = whole-image to 1e-6), and tests bound the difference (classes equal except at
near-ties, probabilities within 1e-5).
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator

import numpy as np
import torch

from geoseg.blend import WeightCache
from geoseg.pipeline.plan import RowJob, RunPlan
from geoseg.pipeline.read import BufferPool, RowBand
from geoseg.pipeline.write import FinishedRows

#: Unsigned types torch handles only partly: moved as their signed twins, widened on the device.
_SIGNED_TWIN = {np.dtype(np.uint16): (np.int16, torch.int32, 0xFFFF),
                np.dtype(np.uint32): (np.int32, torch.int64, 0xFFFFFFFF)}


def tensor_forward(predictor: Any) -> tuple[Callable[[torch.Tensor], torch.Tensor], torch.device, bool]:
    """``(forward, device, fixed_batch)`` for a predictor.

    Predictors with ``forward_tensor`` (:class:`~geoseg.predict.TorchPredictor`,
    :class:`~geoseg.predict.null.NullPredictor`) run on their device; any other object with
    ``predict(numpy) -> numpy`` (:class:`geoseg.pipeline.Predictor`) runs on the CPU.
    ``fixed_batch``: pad the last batch to the full batch size (one shape for cuDNN's
    autotuner and compiled models).
    """
    fwd = getattr(predictor, "forward_tensor", None)
    if fwd is not None:
        dev = torch.device(str(predictor.device))
        return fwd, dev, bool(getattr(predictor, "fixed_batch", dev.type == "cuda"))

    def numpy_forward(x: torch.Tensor) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(predictor.predict(x.numpy()), dtype=np.float32))

    return numpy_forward, torch.device("cpu"), False


def pinned_alloc(nbytes: int) -> tuple[np.ndarray, Any]:
    """A page-locked host buffer for asynchronous device copies: an ordinary allocation locked with
    ``cudaHostRegister`` (as the training ring does), not torch's pinned allocator, which rounds
    every block up to a power of two (a 71 MB row band would hold 128 MB). Unlocked when it goes;
    pageable (slower copies) if locking fails."""
    cudart = torch.cuda.cudart()
    t = torch.empty(nbytes, dtype=torch.uint8)
    if int(cudart.cudaHostRegister(t.data_ptr(), nbytes, 0)) == 0:
        weakref.finalize(t, cudart.cudaHostUnregister, t.data_ptr())
    else:  # the failed call left CUDA's last error set: clear it with a harmless launch
        torch.zeros(1, device="cuda").add_(1)
    return t.numpy(), t


class RowBlender:
    """Weighted sums of probabilities for the rows that tiles still touch, on a device.

    Holds ``(classes, height, width)`` sums, ``(height, width)`` weight sums and validity for
    raster rows ``[base, base + height)`` and columns ``[col0, col0 + width)``. The same
    arithmetic as :class:`geoseg.blend.RowBandAccumulator` (the numpy reference), in torch.
    """

    def __init__(self, num_classes: int, height: int, width: int, col0: int, base: int, device: torch.device,
                 dtype: torch.dtype) -> None:
        self.height, self.width, self.col0, self.base = height, width, col0, base
        self.sums = torch.zeros((num_classes, height, width), dtype=dtype, device=device)
        self.weights = torch.zeros((height, width), dtype=dtype, device=device)
        self.valid = torch.zeros((height, width), dtype=torch.bool, device=device)

    def add(self, probs: torch.Tensor, weights: torch.Tensor, row: int, col: int, valid: torch.Tensor | None
            ) -> None:
        """Add ``probs`` (classes, h, w) times ``weights`` (h, w) with its top-left at raster (row, col)."""
        h, w = weights.shape
        r0, c0 = row - self.base, col - self.col0
        lo, hi = max(0, -c0), min(w, self.width - c0)
        if hi <= lo:
            return
        rs, cs = slice(r0, r0 + h), slice(c0 + lo, c0 + hi)
        wt = weights[:, lo:hi]
        self.sums[:, rs, cs].addcmul_(probs[:, :, lo:hi], wt)  # one pass, no temporary
        self.weights[rs, cs] += wt
        if valid is None:
            self.valid[rs, cs] = True
        else:
            self.valid[rs, cs] |= valid[:, lo:hi]

    def pop(self, upto: int, skip: int = 0, probabilities: bool = False, values: torch.Tensor | None = None,
            nonfinite: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """Finish rows ``[base + skip, upto)``: (class index, probabilities or None, valid); slide down.

        The class is the argmax of the weighted sums (dividing by a positive weight sum keeps the
        order); probabilities are float32 sums / weights. With ``values`` (uint8, one per class) the
        first result is ``values[argmax]`` instead of the index. A pixel whose sums are not finite (a
        model gave NaN or infinite probabilities there, e.g. next to an extreme undeclared fill value)
        is not valid, and is counted into ``nonfinite``.
        """
        n = upto - self.base
        if n < 0 or n > self.height:
            raise ValueError(f"cannot pop to row {upto} from band at {self.base}")
        s, w = self.sums[:, skip:n], self.weights[skip:n]
        covered = w > 0
        idx = _argmax0(s, values)
        probs = (s / torch.where(covered, w, torch.ones_like(w))).float() if probabilities else None
        valid = covered & self.valid[skip:n]
        # the sum of bounded probabilities is finite where each one is: on a CPU the total first (0.05 ms a
        # 3-class 192 x 2048 band, against 0.8 ms per pixel), on a GPU per pixel (no wait for the device)
        if s.is_cuda or not bool(torch.isfinite(s.sum())):
            finite = torch.isfinite(s.sum(dim=0))
            if nonfinite is not None:
                nonfinite += (valid & ~finite).sum()
            valid &= finite
        if n:
            keep = self.height - n
            for t in (self.sums, self.weights, self.valid):
                if keep:
                    # the rows later tiles still add to, to the top; a copy between disjoint rows needs no
                    # temporary (they overlap only when tiles overlap by more than half)
                    rest = t[..., n:, :] if keep <= n else t[..., n:, :].clone()
                    t[..., :keep, :].copy_(rest)
                t[..., keep:, :].zero_()
        self.base = upto
        return idx, probs, valid


def _argmax0(s: torch.Tensor, values: torch.Tensor | None = None) -> torch.Tensor:
    """``s.argmax(dim=0)`` (the first of equal maxima), or ``values[s.argmax(dim=0)]`` with ``values``.

    On a CPU, as uint8 by a running comparison over the classes: ~10x faster there than torch's
    reduction over a leading strided axis, and the lookup of the class value costs nothing. Each
    class's winners take its value by uint8 arithmetic (``out ^= (out ^ v) * more``), not by
    ``masked_fill_``/``where``, which branch per pixel: 0.37 against 0.78 ms for 3 classes on a
    192 x 2048 band of real-looking sums, and against 4.0 ms on noisy ones. On a GPU, and for more
    than 255 classes, torch's own (int64), then the lookup.
    """
    if s.shape[0] > 255 or s.is_cuda:
        idx = s.argmax(dim=0)
        return values[idx] if values is not None else idx
    vals = values.tolist() if values is not None else list(range(s.shape[0]))
    k = s.shape[0]
    if k == 1:
        return torch.full(s.shape[1:], vals[0], dtype=torch.uint8, device=s.device)
    more = torch.gt(s[1], s[0])
    m = more.view(torch.uint8)  # 0 or 1; follows ``more`` as it is rewritten below
    out = m.mul((vals[1] - vals[0]) % 256).add_(vals[0])  # modulo 256: vals[1] where more, else vals[0]
    if k > 2:
        best = torch.maximum(s[0], s[1])
        tmp = torch.empty_like(out)
        for c in range(2, k):
            torch.gt(s[c], best, out=more)
            if c < k - 1:
                torch.maximum(best, s[c], out=best)
            torch.bitwise_xor(out, vals[c], out=tmp).mul_(m)  # out ^ v where more, 0 elsewhere
            out.bitwise_xor_(tmp)
    return out


class StreamRunner:
    """Runs the device stages for the row bands of a :class:`~geoseg.pipeline.plan.RunPlan`.

    Args:
        predictor: see :func:`tensor_forward`.
        plan: the run's plan (grid and jobs).
        mean, std: the model's normalization, per band.
        blend: blend window name (:data:`geoseg.blend.BLEND_WINDOWS`).
        batch_size: tiles per model call.
        lut: uint8 lookup from class index to class value; ``nodata`` for invalid pixels.
        probabilities: also produce probabilities and confidence, ``prob_dtype`` uint8 or float32.
        emit: receives each :class:`~geoseg.pipeline.write.FinishedRows` (the writer's ``put``).
        accumulate: ``auto`` (float32), ``float32`` or ``float64`` (the exactness reference).
        on_batch: called after each batch with (tiles done, pixels finished).
    """

    def __init__(self, predictor: Any, plan: RunPlan, *, mean: Any, std: Any, blend: str, batch_size: int,
                 lut: np.ndarray, nodata: int, probabilities: bool, prob_dtype: str,
                 emit: Callable[[FinishedRows], None], accumulate: str = "auto",
                 on_batch: Callable[[int, int], None] | None = None, out_buffers: int = 12) -> None:
        self.forward, self.device, self.fixed_batch = tensor_forward(predictor)
        self.cuda = self.device.type == "cuda"
        self.plan = plan
        self.grid = plan.grid
        self.k = predictor.meta.num_classes
        self.mean = torch.as_tensor(np.asarray(mean, np.float32), device=self.device)[:, None, None]
        self.std = torch.as_tensor(np.asarray(std, np.float32), device=self.device)[:, None, None]
        self.scale = 1.0 / self.std
        self.shift = -self.mean * self.scale
        self.weights = WeightCache(blend, self.grid.overlap)
        self._wt: dict[tuple[Any, ...], torch.Tensor] = {}
        self._pad_index: dict[tuple[int, int], torch.Tensor] = {}
        # never more tiles a batch than the run has: its buffer is allocated whole (100 000 asked 183 GB)
        self.batch_size = max(1, min(batch_size, plan.tiles))
        self._batch: torch.Tensor | None = None  # CPU: the batch's tiles, written in place (_slot)
        self.lut = torch.as_tensor(np.asarray(lut, np.uint8), device=self.device)
        self.nodata = int(nodata)
        self.want_probs = probabilities
        self.prob_dtype = prob_dtype
        self.emit = emit
        if accumulate == "auto":
            accumulate = "float32"
        self.acc_dtype = {"float32": torch.float32, "float64": torch.float64}[accumulate]
        self.on_batch = on_batch
        self.out_pool = BufferPool(out_buffers, pinned_alloc) if self.cuda else None
        # On a CPU the per-tile stages run on one thread, the model and whole-band operations on all:
        # the reader and writer threads hold cores too, and a small operation split across threads
        # that are not all on a core waits a scheduler time slice for each part (measured: 50 ms
        # instead of 1 ms to blend a tile on 2 cores with a reader thread decoding DEFLATE).
        self.model_threads = torch.get_num_threads()
        if not self.cuda:
            torch.set_num_threads(1)
        self.stream = torch.cuda.current_stream(self.device) if self.cuda else None
        self.blender: RowBlender | None = None
        self.skip_until = 0
        self.pending: list[tuple[RowJob, int, torch.Tensor | None, torch.Tensor | None]] = []
        self.n_data = 0
        self.counts = torch.zeros(256, dtype=torch.int64, device=self.device)
        self.overflow = torch.zeros((), dtype=torch.int64, device=self.device)  # pixels beyond float32
        self.nonfinite = torch.zeros((), dtype=torch.int64, device=self.device)  # NaN/inf from the model
        self.tiles_done = self.tiles_run = self.tiles_skipped = self.pixels_done = 0

    # --- host -> device ---------------------------------------------------------------------------
    def _upload(self, a: np.ndarray) -> torch.Tensor:
        twin = _SIGNED_TWIN.get(a.dtype) if self.cuda else None  # the CPU converts them natively
        t = torch.from_numpy(a.view(twin[0]) if twin else a)
        if self.cuda:
            t = t.to(self.device, non_blocking=True)
        if twin:
            t = t.to(twin[1]).bitwise_and_(twin[2])
        return t

    def _pad_rows_cols(self, x: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """Reflect-pad the last two axes at their ends to ``height`` x ``width`` (as numpy's ``reflect``)."""
        for dim, n in ((-2, height), (-1, width)):
            have = x.shape[dim]
            if have < n:
                idx = self._pad_index.get((have, n))
                if idx is None:
                    idx = torch.as_tensor(np.pad(np.arange(have), (0, n - have), mode="reflect"), device=self.device)
                    self._pad_index[(have, n)] = idx
                x = x.index_select(dim, idx)
        return x

    def push(self, band: RowBand, release: Callable[[Any], None]) -> None:
        """Queue one row band's tiles (``release(event)`` gives its host buffers back)."""
        job = band.job
        with torch.inference_mode():
            raw = self._upload(band.data)
            valid = self._upload(band.valid) if band.valid is not None else None
            if self.cuda:
                ev = torch.cuda.Event()
                ev.record(self.stream)
                release(ev)  # the buffers are free once the copies are done
            width = self.plan.band_width(job)
            if (not self.cuda and raw.dtype != torch.float64 and raw.shape[-2] == self.grid.size
                    and raw.shape[-1] == width):
                self._push_tiles(job, band, raw, valid)  # no padding, no float64 range check: tile by tile
            else:
                self._push_band(job, band, raw, valid, width)
        if not self.cuda:
            release(None)

    def _push_band(self, job: RowJob, band: RowBand, raw: torch.Tensor, valid: torch.Tensor | None,
                   width: int) -> None:
        """The whole band normalized at once, padded past the raster's end, then cut into tiles."""
        with self._all_threads():  # whole-band operations: large enough to split across threads
            # (raw - mean) / std as raw * scale + shift, in a new float32 tensor (never the band's reused
            # buffer); a plain conversion then two in-place passes: 3.5x faster on a CPU than one
            # addcmul that promotes uint16 on the fly
            overflow = None
            if raw.dtype == torch.float64:
                x = ((raw - self.mean) / self.std).float()
                overflow = ~torch.isfinite(x)  # finite in float64, beyond float32's range: not data
                self.overflow += overflow.any(dim=0).sum()
            else:
                x = raw.to(torch.float32, copy=True).mul_(self.scale).add_(self.shift)
            anyvalid = None
            if valid is not None:
                vb = valid != 0
                if overflow is not None:  # the whole pixel is invalid, not only that band's value
                    vb &= ~overflow.any(dim=0, keepdim=True)
                x.masked_fill_(~vb, 0.0)
                anyvalid = vb.any(dim=0)
            del raw, valid
            x = self._pad_rows_cols(x, self.grid.size, width)
        c_lo = job.col_lo
        for j, c in enumerate(job.cols):
            if band.tile_has_data[j]:
                w = min(self.grid.size, self.grid.width - c)
                v = anyvalid[:, c - c_lo: c - c_lo + w] if anyvalid is not None else None
                t = x[:, :, c - c_lo: c - c_lo + self.grid.size]
                if not self.cuda:  # into the batch's own buffer (a GPU stacks the views)
                    t = self._slot().copy_(t)
                self._queue(job, j, t, v)
            else:
                self.pending.append((job, j, None, None))

    def _push_tiles(self, job: RowJob, band: RowBand, raw: torch.Tensor, valid: torch.Tensor | None) -> None:
        """On a CPU, each tile converted, normalized and masked straight into its slot of the batch buffer:
        three passes over 2 MB that stay in the cache, and no band- or batch-sized temporaries, whose
        fresh pages cost more than the arithmetic (0.071 s of stacking and 0.053 s of converting per
        2048² raster, mostly page faults)."""
        size, c_lo = self.grid.size, job.col_lo
        vb = valid != 0 if valid is not None else None
        for j, c in enumerate(job.cols):
            if not band.tile_has_data[j]:
                self.pending.append((job, j, None, None))
                continue
            a = c - c_lo
            slot = self._slot()
            slot.copy_(raw[:, :, a: a + size]).mul_(self.scale).add_(self.shift)
            v = None
            if vb is not None:
                vt = vb[:, :, a: a + size]
                slot.masked_fill_(~vt, 0.0)
                v = vt.any(dim=0)  # the whole tile is inside the raster here
            self._queue(job, j, slot, v)

    def _slot(self) -> torch.Tensor:
        """The next free tile of the batch buffer (CPU): allocated once, reused batch after batch."""
        if self._batch is None:
            self._batch = torch.empty((self.batch_size, self.mean.shape[0], self.grid.size, self.grid.size),
                                      dtype=torch.float32, device=self.device)
        return self._batch[self.n_data]

    def _queue(self, job: RowJob, j: int, tile: torch.Tensor, valid: torch.Tensor | None) -> None:
        self.pending.append((job, j, tile, valid))
        self.n_data += 1
        if self.n_data >= self.batch_size:
            self._run_batch()

    def close(self) -> dict[str, Any]:
        """Run what is queued and finish the last rows; the run's counts."""
        try:
            with torch.inference_mode():
                if self.pending:
                    self._run_batch()
                counts = self.counts.cpu().numpy()
                overflow = int(self.overflow)
                nonfinite = int(self.nonfinite)
        finally:
            self.release()
        return {"total": self.plan.tiles, "run": self.tiles_run, "skipped": self.tiles_skipped,
                "counts": {int(i): int(c) for i, c in enumerate(counts) if c}, "overflow": overflow,
                "nonfinite": nonfinite}

    @contextlib.contextmanager
    def _all_threads(self) -> Iterator[None]:
        """On a CPU, all of torch's threads for the model and whole-band operations (one otherwise)."""
        if self.cuda:
            yield
            return
        torch.set_num_threads(self.model_threads)
        try:
            yield
        finally:
            torch.set_num_threads(1)

    def release(self) -> None:
        """Give torch its threads back (also after an error)."""
        torch.set_num_threads(self.model_threads)

    # --- model and blending -----------------------------------------------------------------------
    def _run_batch(self) -> None:
        tiles = [t for _, _, t, _ in self.pending if t is not None]
        probs = None
        if tiles:
            n = len(tiles)
            with self._all_threads():
                if self._batch is not None:  # CPU: the tiles are already in place (_slot)
                    x = self._batch
                    if self.fixed_batch:
                        x[n:].zero_()
                    else:
                        x = x[:n]
                else:
                    x = torch.stack(tiles)
                    if self.fixed_batch and n < self.batch_size:
                        x = torch.cat([x, x.new_zeros((self.batch_size - n, *x.shape[1:]))])
                if self.cuda:
                    x = x.contiguous(memory_format=torch.channels_last)
                probs = self.forward(x)[:n]
                if probs.shape[1] != self.k:
                    from geoseg.errors import CheckpointError

                    raise CheckpointError(f"the model gave {probs.shape[1]} class probabilities a pixel, but its "
                                          f"metadata lists {self.k} classes; fix the model's class list")
            self.tiles_run += n
        i = 0
        for job, j, t, v in self.pending:
            if t is None:
                self.tiles_skipped += 1
                self._add(job, j, None, None)
            else:
                self._add(job, j, probs[i], v)  # type: ignore[index]
                i += 1
        self.tiles_done += len(self.pending)
        self.pending, self.n_data = [], 0
        if self.on_batch is not None:
            self.on_batch(self.tiles_done, self.pixels_done)

    def _weights(self, job: RowJob, c: int) -> torch.Tensor:
        g = self.grid
        key = (job.row == 0, job.row + g.size >= g.height, c == 0, c + g.size >= g.width)
        w = self._wt.get(key)
        if w is None:
            # in the sums' own type: a float64 window into float32 sums is a mixed-type pass, 7x slower
            w = torch.as_tensor(self.weights.get(g.size, g.size, *key), device=self.device).to(self.acc_dtype)
            self._wt[key] = w
        return w

    def _add(self, job: RowJob, j: int, probs: torch.Tensor | None, valid: torch.Tensor | None) -> None:
        g = self.grid
        a, b = job.strip
        if job.first and j == 0:
            self.blender = RowBlender(self.k, g.band_height, b - a, a, job.row, self.device, self.acc_dtype)
            self.skip_until = job.skip_until
        bl = self.blender
        assert bl is not None
        if bl.base != job.row:
            self._finish_rows(job.strip_index, job.row)
        if probs is not None:
            c = job.cols[j]
            h, w = job.height, min(g.size, g.width - c)
            bl.add(probs[:, :h, :w], self._weights(job, c)[:h, :w], job.row, c, valid)
        if job.last and j == len(job.cols) - 1:
            self._finish_rows(job.strip_index, g.height if job.end is None else job.end)

    def _finish_rows(self, strip_index: int, upto: int) -> None:
        bl = self.blender
        assert bl is not None
        r0 = bl.base
        cut = min(max(0, self.skip_until - r0), upto - r0)
        # one thread: the reader and writer threads hold the other cores (measured no faster on two)
        cls, probs, valid = bl.pop(upto, cut, self.want_probs, self.lut[: self.k], self.nonfinite)
        if upto <= self.skip_until:
            return  # rows an earlier run wrote (resume)
        cls.masked_fill_(~valid, self.nodata)
        self.counts += torch.bincount(cls.flatten(), minlength=256)
        arrays: list[torch.Tensor | None] = [cls[None]]
        if probs is not None:
            stack = torch.cat([probs, probs.amax(dim=0, keepdim=True)])
            if self.prob_dtype == "uint8":
                arrays += [torch.round(stack * 255).to(torch.uint8), valid.to(torch.uint8) * 255]
            else:
                arrays += [stack.masked_fill_(~valid, float("nan")), None]
        self.pixels_done += cls.numel()
        host, ready, done = self._to_host(arrays)
        pairs = [(host[0], None)] + ([(host[1], host[2])] if probs is not None else [])
        self.emit(FinishedRows(r0 + cut, bl.col0, pairs, strip_index, upto, ready, done))  # type: ignore[arg-type]

    def _to_host(self, arrays: list[torch.Tensor | None]
                 ) -> tuple[list[np.ndarray | None], Callable[[], None] | None, Callable[[], None] | None]:
        if not self.cuda:
            return [a.numpy() if a is not None else None for a in arrays], None, None
        assert self.out_pool is not None
        host: list[np.ndarray | None] = []
        tokens = []
        for a in arrays:
            if a is None:
                host.append(None)
                continue
            flat, token = self.out_pool.take(a.numel() * a.element_size())
            h = flat[: a.numel() * a.element_size()].view(_NP[a.dtype]).reshape(tuple(a.shape))
            torch.from_numpy(h).copy_(a, non_blocking=True)
            host.append(h)
            tokens.append(token)
        event = torch.cuda.Event()
        event.record(self.stream)
        pool = self.out_pool

        def done() -> None:
            for t in tokens:
                pool.give(t)

        return host, event.synchronize, done


_NP = {torch.uint8: np.uint8, torch.float32: np.float32}
