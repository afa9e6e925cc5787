"""Host-side memory for the OpenCL backend: page-locked staging for uploads and a ring of
page-locked output arrays, so large batches move at DMA speed without page faults.

Returned arrays are never changed behind a caller's back: an output buffer is reused only once
no Python object (array or view) refers to it any more; otherwise a fresh one is allocated.
"""

from __future__ import annotations

import os
import sys
from concurrent.futures import ThreadPoolExecutor

import numpy as np

#: Copies above this size are split across threads (numpy releases the GIL while copying).
_PARALLEL_BYTES = 16 << 20
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(1, min(8, (os.cpu_count() or 2) // 2)), thread_name_prefix="opencl-copy")
    return _POOL


def pack(arrays: list[np.ndarray], out: np.ndarray) -> None:
    """Copy `arrays` (any shapes) one after another into the flat float32 `out`."""
    jobs, offset = [], 0
    for array in arrays:
        flat = np.asarray(array).reshape(-1)
        jobs.append((out[offset : offset + flat.size], flat))
        offset += flat.size
    if out[:offset].nbytes < _PARALLEL_BYTES:
        for dst, src in jobs:
            np.copyto(dst, src, casting="same_kind")
        return
    parts = []
    for dst, src in jobs:  # ~4 MB pieces
        step = max(1 << 20, -(-src.size // 64))
        parts += [(dst[i : i + step], src[i : i + step]) for i in range(0, src.size, step)]
    list(_pool().map(lambda job: np.copyto(job[0], job[1], casting="same_kind"), parts))


class PinnedArrays:
    """Page-locked float32 host arrays from the OpenCL driver (ALLOC_HOST_PTR, mapped once),
    falling back to ordinary pre-touched memory where mapping is not offered."""

    def __init__(self, cl, context, queue) -> None:
        self._cl, self._context, self._queue = cl, context, queue
        self._ranges: list[tuple[int, int]] = []  # [start, end) addresses of page-locked arrays

    def holds(self, array: np.ndarray) -> bool:
        """True when `array` is contiguous float32 inside one of these page-locked arrays (say,
        states this backend returned and the caller passed back): it can be DMA'd as it is."""
        if not (isinstance(array, np.ndarray) and array.dtype == np.float32 and array.flags.c_contiguous):
            return False
        start = array.__array_interface__["data"][0]
        return any(lo <= start and start + array.nbytes <= hi for lo, hi in self._ranges)

    def new(self, floats: int) -> np.ndarray:
        cl, floats = self._cl, max(int(floats), 1)
        try:
            buf = cl.Buffer(self._context, cl.mem_flags.READ_WRITE | cl.mem_flags.ALLOC_HOST_PTR, 4 * floats)
            array, _ = cl.enqueue_map_buffer(self._queue, buf, cl.map_flags.READ | cl.map_flags.WRITE, 0,
                                             (floats,), np.float32)
        except cl.Error:
            array = np.empty(floats, np.float32)
        else:
            start = array.__array_interface__["data"][0]
            self._ranges.append((start, start + array.nbytes))
        array[:: 1024] = 0  # fault every page in now, not during a step
        return array


class OutputRing:
    """A few reusable output arrays of `floats` each; `take()` gives one nobody references."""

    def __init__(self, pinned: PinnedArrays, floats: int, slots: int = 3) -> None:
        self._arrays = [pinned.new(floats) for _ in range(slots)]
        self._baseline = [self._references(i) for i in range(slots)]

    def _references(self, i: int) -> tuple[int, int]:
        # A view refers to the array or, numpy collapsing view chains, to the array's own base
        # (the driver's mapping): more references than the ring's own mean a caller holds it.
        return sys.getrefcount(self._arrays[i]), sys.getrefcount(self._arrays[i].base)

    def take(self, floats: int) -> np.ndarray:
        for i in range(len(self._arrays)):
            now, baseline = self._references(i), self._baseline[i]
            if floats <= self._arrays[i].size and now[0] <= baseline[0] and now[1] <= baseline[1]:
                return self._arrays[i][:floats]
        return np.empty(floats, np.float32)  # every buffer is still held by a caller
