"""Batch slots in shared memory: DataLoader workers build batches in place, the main process
copies them to the GPU straight from there.

torch's own path for a worker's batch is a new shared-memory file per tensor, its file
descriptor passed over a socket (a round trip to the worker), mapped and page-faulted in
the main process, then copied once more into pinned memory by the loader's pin thread.
For a 68-band float chip batch (18 MB at 16 x 64²) that cost the main process more time
than the model step on a GPU. Here the slots are mapped once (before the workers fork),
page-locked once in the main process (``cudaHostRegister``, after the fork), and a batch
travels as its slot number.

Slot safety without flags or locks, from how torch's DataLoader schedules (in order, the
default): batch ``i`` goes to worker ``i mod W``; at start each worker gets ``P``
batches (``P`` = ``prefetch_factor``) and each batch handed to the caller dispatches one
more, to the worker that built it. So when worker ``w`` builds its ``j``-th batch, its
``(j - P)``-th has been handed out, and the caller has finished with every earlier one
(:meth:`BatchRing.fetch` copies a batch out before the caller asks for the next). Worker
``w`` writes batch ``j`` into slot ``w * K + j mod K`` with ``K = P + 1``: that slot last held
batch ``j - K``, long copied out. Batches an abandoned iterator discards are never read.
"""

from __future__ import annotations

import os
import weakref
from typing import Any, Sequence

import torch

#: pinned (page-locked) slot memory at most: min(this, a sixteenth of the RAM)
MAX_BYTES = 2 << 30


def ring_bytes(workers: int, prefetch: int, batch: int, chip: Sequence[int], label_dtype: torch.dtype) -> int:
    """Bytes of the slots for ``workers`` x (``prefetch`` + 1) float32 batches of ``chip`` (C,H,W)."""
    c, h, w = chip
    per = batch * c * h * w * 4 + batch * h * w * torch.empty((), dtype=label_dtype).element_size()
    return workers * (prefetch + 1) * per


def ring_budget() -> int:
    """The most slot memory to page-lock on this machine: min(:data:`MAX_BYTES`, RAM / 16,
    half the free space of ``/dev/shm``, where the slots live; a container's small default
    /dev/shm would otherwise end in a bus error when a worker first writes a slot)."""
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not Linux
        ram = 16 * MAX_BYTES
    try:
        st = os.statvfs("/dev/shm")
        shm = st.f_bavail * st.f_frsize // 2
    except OSError:  # pragma: no cover - no /dev/shm
        shm = 0
    return min(MAX_BYTES, ram // 16, shm)


class BatchRing:
    """``workers`` x ``prefetch + 1`` slots of one batch each (float32 images, integer labels).

    Made in the main process before the loader's workers start; each worker keeps its own
    count of the batches it built (see the module's note for why that is safe).
    """

    def __init__(self, workers: int, prefetch: int, batch: int, chip: Sequence[int],
                 label_dtype: torch.dtype = torch.uint8) -> None:
        c, h, w = (int(v) for v in chip)
        self.per_worker = prefetch + 1
        slots = workers * self.per_worker
        self.batch = batch
        self.chip = (c, h, w)
        self.image = torch.empty((slots, batch, c, h, w), dtype=torch.float32).share_memory_()
        self.mask = torch.empty((slots, batch, h, w), dtype=label_dtype).share_memory_()
        self._built = 0  # batches this worker built (each worker has its own copy)
        self._pinned: torch.device | None = None  # the main process: where the slots are page-locked
        self._unpin: Any = None
        self._stream: Any = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_pinned"], state["_stream"], state["_unpin"] = None, None, None
        return state

    def fits(self, images: Sequence[torch.Tensor]) -> bool:
        """Whether these chips (each C,H,W) go into a slot (else they take torch's path)."""
        return len(images) <= self.batch and all(tuple(t.shape) == self.chip for t in images)

    def put(self, worker: int, images: Sequence[torch.Tensor], mask: torch.Tensor) -> dict[str, int]:
        """In a worker: ``images`` (each C,H,W) and ``mask`` (B,H,W class indexes) into this
        worker's next slot; returns what the batch travels as."""
        slot = worker * self.per_worker + self._built % self.per_worker
        self._built += 1
        n = len(images)
        dst = self.image[slot]
        for i, t in enumerate(images):
            dst[i].copy_(t)
        self.mask[slot, :n].copy_(mask)
        return {"slot": slot, "n": n}

    def fetch(self, slot: int, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """In the main process: the batch in ``slot`` on ``device`` (labels as long). The slot
        is free again when this returns."""
        x, y = self.image[slot, :n], self.mask[slot, :n]
        if device.type != "cuda":
            return x.clone(), y.long()
        if self._pinned is None:
            self._pin(device)
        stream = self._stream
        with torch.cuda.stream(stream):  # beside the model's work, not queued behind it
            gx = x.to(device, non_blocking=True)
            gy = y.to(device, non_blocking=True)
        stream.synchronize()  # the host waits for this copy only, then the worker may refill the slot
        current = torch.cuda.current_stream(device)
        gx.record_stream(current)  # allocated on the copy stream, used on the model's
        gy.record_stream(current)
        return gx, gy.long()

    def _pin(self, device: torch.device) -> None:
        # after the workers forked (the driver may keep page-locked ranges out of children)
        cudart = torch.cuda.cudart()
        ptrs = []
        for t in (self.image, self.mask):
            if int(cudart.cudaHostRegister(t.data_ptr(), t.numel() * t.element_size(), 0)) == 0:
                ptrs.append(t.data_ptr())
            else:  # still correct from pageable memory, only slower; the failed call left
                try:  # CUDA's last-error set, which the next kernel launch check would report
                    torch.zeros(1, device=device).add_(1)
                except RuntimeError:
                    pass
        self._pinned = device
        self._stream = torch.cuda.Stream(device)
        # unlocked when the ring goes (before its slots are unmapped), or by release()
        self._unpin = weakref.finalize(self, _unregister, ptrs)

    def release(self) -> None:
        """Unlock the slots' pages now (main process; once the loader is done)."""
        if self._unpin is not None:
            self._unpin()
            self._unpin, self._pinned = None, None


def _unregister(ptrs: list[int]) -> None:
    cudart = torch.cuda.cudart()
    for p in ptrs:
        cudart.cudaHostUnregister(p)
