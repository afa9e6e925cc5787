"""Device buffers and bound kernels for one layer stack and batch capacity, and running a batch
through them: one upload, one kernel per layer, one download; large batches in a few chunks
whose uploads, kernels and downloads overlap (three in-order queues tied by events).
"""

from __future__ import annotations

import numpy as np

from . import opencl_kernels as K
from .opencl_host import OutputRing, pack

#: Streams per pipelined chunk at least; smaller batches go in one piece on one queue.
CHUNK_MIN = 2048
CHUNKS_MAX = 8
#: States already in page-locked memory are DMA'd as they are (one copy per segment) only when
#: the block is at least this large; smaller ones are packed and go in one copy, since each copy
#: is a command of its own on the queue (~10 us on an H100) and packing 38 KB a stream is cheap.
DIRECT_MIN_BYTES = 2 << 20


class Plan:
    """Buffers for up to `capacity` streams. Per chunk of n streams the input block is
    [mel rows | state_0 | state_1 | ...] and the output block [embeddings | new state_0 | ...],
    each segment [n, ...]; blocks sit one after another, so nothing is shared between chunks."""

    def __init__(self, owner, layers: list[K.ConvLayer], program, prefix: str, capacity: int):
        cl, ctx = owner._cl, owner.context
        self.layers, self.capacity, self.prefix = layers, capacity, prefix
        self.tilings = owner._tilings[prefix]
        self.in_sizes = [layers[0].in_size] + [lay.state_size for lay in layers if lay.stateful]
        self.out_sizes = [K.EMBEDDING_DIM] + self.in_sizes[1:]
        self.in_floats, self.out_floats = sum(self.in_sizes), sum(self.out_sizes)
        act_floats = max(layer.out_size for layer in layers[:-1])
        flags = cl.mem_flags
        # READ_WRITE: the fused features step writes the scaled mel straight into the input block.
        self.in_buf = cl.Buffer(ctx, flags.READ_WRITE, 4 * capacity * self.in_floats)
        self.out_buf = cl.Buffer(ctx, flags.READ_WRITE, 4 * capacity * self.out_floats)
        self.act = [cl.Buffer(ctx, flags.READ_WRITE, owner._store_bytes * capacity * act_floats) for _ in range(2)]
        self.staging = owner._pinned.new(capacity * self.in_floats)
        self.outputs = OutputRing(owner._pinned, capacity * self.out_floats, slots=2)
        self.kernels = [cl.Kernel(program, f"{prefix}{i}") for i in range(len(layers))]
        self.weights = owner._weights
        self.bound = None
        self._launches: dict[int, list] = {}

    def bind(self, batch: int, start: int = 0) -> None:
        """Set every kernel's arguments for the chunk of `batch` streams from stream `start`."""
        if self.bound == (batch, start):
            return
        x_in, x_out = start * self.in_floats, start * self.out_floats
        s_in, s_out = x_in + batch * self.in_sizes[0], x_out + batch * self.out_sizes[0]
        last = len(self.layers) - 1
        for i, (layer, kernel) in enumerate(zip(self.layers, self.kernels)):
            weight, bias = self.weights[i]
            x = self.in_buf if i == 0 else self.act[(i - 1) % 2]
            y = self.out_buf if i == last else self.act[i % 2]
            kernel.set_args(
                np.int32(batch), x, np.int32(x_in if i == 0 else 0), self.in_buf, np.int32(s_in), self.out_buf,
                np.int32(s_out), weight, bias, y, np.int32(x_out if i == last else 0),
            )
            if layer.stateful:
                s_in += batch * layer.state_size
                s_out += batch * layer.state_size
        self.bound = (batch, start)

    def launches(self, batch: int) -> list:
        """[(kernel, global size, work-group size)] per layer for `batch` streams (cached)."""
        if batch not in self._launches:
            out = []
            for layer, tiling, kernel in zip(self.layers, self.tilings, self.kernels):
                rows = batch * layer.tout * layer.fout
                groups = -(-rows // tiling.rows)
                out.append((kernel, (groups * tiling.work_group,), (tiling.work_group,)))
            if len(self._launches) > 8:
                self._launches.clear()
            self._launches[batch] = out
        return self._launches[batch]


def _upload(owner, plan: Plan, queue, inputs: list[np.ndarray], start: int, stop: int) -> list:
    """Copy rows [start, stop) of every input segment into the chunk's input block. Segments
    already in page-locked memory (states this backend returned) go by DMA as they are; the
    rest are packed into the page-locked staging area first."""
    cl, n = owner._cl, stop - start
    rows = [a[start:stop] for a in inputs]
    base = start * plan.in_floats
    direct = [n * plan.in_floats * 4 >= DIRECT_MIN_BYTES and owner._pinned.holds(r) for r in rows]
    if not any(direct):  # one packed block, one DMA
        block = plan.staging[base : base + n * plan.in_floats]
        pack(rows, block)
        return [cl.enqueue_copy(queue, plan.in_buf, block, dst_offset=4 * base, is_blocking=False)]
    events, offset = [], base
    for segment, size, pinned in zip(rows, plan.in_sizes, direct):
        source = segment if pinned else plan.staging[offset : offset + n * size]
        if not pinned:
            pack([segment], source)
        events.append(cl.enqueue_copy(queue, plan.in_buf, source, dst_offset=4 * offset, is_blocking=False))
        offset += n * size
    return events


def one_piece(batch: int) -> bool:
    """True when `batch` streams run in one piece on one queue (no pipelined chunks)."""
    return batch < 2 * CHUNK_MIN


def _enqueue_layers(owner, plan: Plan, batch: int, count: int = 0) -> None:
    """Every layer's kernel on the main queue, flushing every `owner.flush_every` kernels
    (counting `count` kernels already enqueued) so the device starts while the rest follow."""
    launch, queue, every = owner._launch, owner.queue, owner.flush_every
    for i, (kernel, size, group) in enumerate(plan.launches(batch), count):
        launch(kernel, size, group)
        if every and i % every == 0:
            queue.flush()  # start the device now, not at the final read


def run_features(owner, plan: Plan, batch: int, audio: np.ndarray, states: list[np.ndarray], mel_kernel,
                 mel_group: int, mel_host: np.ndarray) -> np.ndarray:
    """melspectrogram -> x/10 + 2 -> embedding step in one device round trip: the scaling mel
    kernel (`mel_kernel`, arguments but the input and output already set) writes the mel
    segment of the plan's input block, the states are uploaded behind it, the layers run, and
    one blocking read returns the flat output (as `run`); the scaled mel goes to `mel_host`
    on the way (non-blocking, same queue) for the caller's finiteness check."""
    cl, queue = owner._cl, owner.queue
    result = plan.outputs.take(batch * plan.out_floats)
    mel_floats = batch * plan.in_sizes[0]
    audio_buf, staging = owner._audio_io(audio.size)
    np.copyto(staging[: audio.size], audio.reshape(-1))
    cl.enqueue_copy(queue, audio_buf, staging[: audio.size], is_blocking=False)
    owner._bind_scaled_mel(audio_buf, plan.in_buf, audio.shape[1])
    owner._launch(mel_kernel, (batch * mel_group,), (mel_group,))
    queue.flush()
    offset = mel_floats
    pinned = [batch * plan.in_floats * 4 >= DIRECT_MIN_BYTES and owner._pinned.holds(s) for s in states]
    if not any(pinned):  # one packed block, one DMA
        block = plan.staging[offset : offset + batch * (plan.in_floats - plan.in_sizes[0])]
        pack(states, block)
        cl.enqueue_copy(queue, plan.in_buf, block, dst_offset=4 * offset, is_blocking=False)
    else:
        for state, size, direct in zip(states, plan.in_sizes[1:], pinned):
            source = state if direct else plan.staging[offset : offset + batch * size]
            if not direct:
                pack([state], source)
            cl.enqueue_copy(queue, plan.in_buf, source, dst_offset=4 * offset, is_blocking=False)
            offset += batch * size
    plan.bind(batch)
    _enqueue_layers(owner, plan, batch, 1)
    cl.enqueue_copy(queue, mel_host, plan.in_buf, is_blocking=False)
    cl.enqueue_copy(queue, result, plan.out_buf, is_blocking=True)
    return result


def run(owner, plan: Plan, batch: int, inputs: list[np.ndarray]) -> np.ndarray:
    """Run `batch` streams (inputs: one [batch, ...] array per input segment) and return the flat
    output [seg_0 of all streams | seg_1 | ...] in a page-locked array nobody else holds."""
    cl = owner._cl
    result = plan.outputs.take(batch * plan.out_floats)
    chunks = max(1, min(CHUNKS_MAX, batch // CHUNK_MIN))
    if chunks == 1:  # one in-order queue: the least latency
        plan.bind(batch)
        _upload(owner, plan, owner.queue, inputs, 0, batch)
        _enqueue_layers(owner, plan, batch)
        cl.enqueue_copy(owner.queue, result, plan.out_buf, is_blocking=True)
        return result
    downloads = []
    edges = np.linspace(0, batch, chunks + 1).astype(int)
    for start, stop in zip(edges[:-1], edges[1:]):
        n = int(stop - start)
        wait = _upload(owner, plan, owner.queue_up, inputs, int(start), int(stop))  # packing overlaps DMA
        plan.bind(n, int(start))
        for kernel, size, group in plan.launches(n):
            done = owner._launch(kernel, size, group, wait_for=wait)
            wait = None
        device, host = 4 * int(start) * plan.out_floats, 0
        for size in plan.out_sizes:  # each segment of the chunk to its rows of the result
            rows = result[host + int(start) * size : host + int(stop) * size]
            downloads.append(cl.enqueue_copy(owner.queue_down, rows, plan.out_buf, src_offset=device,
                                             is_blocking=False, wait_for=[done]))
            device, host = device + 4 * n * size, host + batch * size
    cl.wait_for_events(downloads)
    return result
