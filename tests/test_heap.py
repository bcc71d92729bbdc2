"""geoseg.io.heap: the C heap kept mapped while streaming, and trimmed only when it creeps."""

from __future__ import annotations

import geoseg.io.heap as heap


class _FakeLibc:
    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def mallopt(self, param: int, value: int) -> int:
        self.calls.append(("mallopt", param, value))
        return 1

    def malloc_trim(self, pad: int) -> int:
        self.calls.append(("trim",))
        return 1


def test_streaming_heap_is_set_once_and_restored_after_the_last_use(monkeypatch):
    lib = _FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", lib)
    with heap.streaming_heap():
        with heap.streaming_heap():  # nested (or a second thread): no second setting
            pass
        assert lib.calls == [("mallopt", heap._M_MMAP_MAX, 0), ("mallopt", heap._M_TRIM_THRESHOLD, 2**31 - 1)]
    restored = [c for c in lib.calls[2:] if c[0] == "mallopt"]
    assert restored == [("mallopt", p, v) for p, v in heap._AFTER]
    assert ("mallopt", heap._M_MMAP_MAX, 65536) in restored  # large blocks may be mapped again
    assert lib.calls[-1] == ("trim",)


def test_heap_trimmer_trims_only_when_the_resident_size_creeps(monkeypatch):
    lib = _FakeLibc()
    monkeypatch.setattr(heap, "_LIBC", lib)
    mb = 2**20
    # band after band: the first working set appears (one trim; from then on it is the mark), stays
    # (the next batch needs it again: no trim), creeps past it by more than the slack (trim), then stays
    sizes = iter([500 * mb, 900 * mb, 905 * mb, 900 * mb, 1000 * mb, 950 * mb, 960 * mb])
    monkeypatch.setattr(heap, "resident_bytes", lambda: next(sizes))
    trim = heap.HeapTrimmer(64 * mb)
    trims = []
    for _ in range(7):
        before = len(lib.calls)
        trim()
        trims.append(len(lib.calls) > before)
    assert trims == [False, True, False, False, True, False, False]
