"""The features stage: 80 ms steps of int16 audio -> one 96-d embedding per stream per step.

The stage math lives here once (framing, openWakeWord's `x/10 + 2`, silence padding);
backends only run the two models. Streams start as if preceded by silence, never by
openWakeWord's random-noise embeddings, so padding alone can never look like a wake word.
"""

from __future__ import annotations

import logging
import threading
import weakref
from dataclasses import dataclass, field

import numpy as np

from .backends.base import FeatureBackend

_LOGGER = logging.getLogger(__name__)

SAMPLE_RATE = 16000
FRAME_SAMPLES = 1280  # one 80 ms step
MS_PER_STEP = FRAME_SAMPLES * 1000 // SAMPLE_RATE  # 80
MEL_HOP_SAMPLES = 160
MEL_WINDOW_SAMPLES = 512
MEL_CONTEXT_SAMPLES = 3 * MEL_HOP_SAMPLES  # openWakeWord re-reads 480 old samples each step
MEL_FRAMES_PER_STEP = 8
MEL_BINS = 32
WINDOW_FRAMES = 76  # mel frames per embedding window
EMBEDDING_DIM = 96
# openWakeWord's first step sees only 1280 samples, so 5 mel frames; 3 silence frames in
# front keep every step at 8 frames and the stride-8 alignment of its windows.
FIRST_STEP_MEL_FRAMES = (FRAME_SAMPLES - MEL_WINDOW_SAMPLES) // MEL_HOP_SAMPLES + 1
# Steps of silence that fill every streaming state (receptive field 76 frames < 10 * 8).
_WARMUP_STEPS = WINDOW_FRAMES // MEL_FRAMES_PER_STEP + 1


def scale_mel(raw: np.ndarray) -> np.ndarray:
    """openWakeWord's fixed transform of the mel model's output (float32 in, float32 out)."""
    return raw / np.float32(10) + np.float32(2)


class StatePool:
    """Every stream's features state in a few shared arrays, one row (slot) per stream.

    A batch gathers and scatters its streams' rows with one numpy call per array instead of one
    per stream and array (15 arrays), which at hundreds of streams cost more than the mel. The
    rows are plain numbers, the same for every backend, so streams still move between them.
    Growing the arrays happens under the lock that gathers and scatters take, so a batch running
    in a worker thread while a stream opens never writes into an array that was replaced."""

    def __init__(self, silence: "SilenceStart", history: int) -> None:
        self._silence = silence
        self._lock = threading.Lock()
        self._free: list[int] = []
        self.context = np.zeros((0, MEL_CONTEXT_SAMPLES), np.int16)
        self.conv = [np.zeros((0, *s.shape), np.float32) for s in silence.conv_states]
        self.embeddings = np.zeros((0, max(history, 1), EMBEDDING_DIM), np.float32)
        self.steps = np.zeros(0, np.int64)

    def allocate(self, history: int) -> int:
        with self._lock:
            if history > self.embeddings.shape[1]:  # older rows are silence: only longer windows read them
                extra = np.broadcast_to(self._silence.embedding, (len(self.steps), history - self.embeddings.shape[1],
                                                                  EMBEDDING_DIM))
                self.embeddings = np.concatenate([extra, self.embeddings], axis=1)
            if not self._free:
                self._grow(max(16, 2 * len(self.steps)))
            slot = self._free.pop()
            self.context[slot] = 0
            for layer, start in zip(self.conv, self._silence.conv_states):
                layer[slot] = start
            self.embeddings[slot] = self._silence.embedding
            self.steps[slot] = 0
            return slot

    def release(self, slot: int) -> None:
        with self._lock:
            self._free.append(slot)

    def _grow(self, capacity: int) -> None:
        old = len(self.steps)

        def grown(array: np.ndarray) -> np.ndarray:
            out = np.zeros((capacity, *array.shape[1:]), array.dtype)
            out[:old] = array
            return out

        self.context, self.steps, self.embeddings = grown(self.context), grown(self.steps), grown(self.embeddings)
        self.conv = [grown(layer) for layer in self.conv]
        self._free.extend(range(capacity - 1, old - 1, -1))

    def gather(self, slots: np.ndarray) -> tuple[np.ndarray, list[np.ndarray]]:
        """(contexts [B, 480], conv states per layer [B, C, 2, F]) of these slots, copied."""
        with self._lock:
            return self.context[slots], [layer[slots] for layer in self.conv]

    def scatter(self, slots: np.ndarray, contexts: np.ndarray, conv: list[np.ndarray]) -> None:
        with self._lock:
            self.context[slots] = contexts
            for layer, rows in zip(self.conv, conv):
                layer[slots] = rows

    def histories(self, slots: np.ndarray, length: int) -> np.ndarray:
        """The last `length` embeddings of these slots, [B, length, 96], copied."""
        with self._lock:
            return self.embeddings[slots, self.embeddings.shape[1] - length :]

    def push(self, slots: np.ndarray, embeddings: np.ndarray) -> None:
        """Append K steps' embeddings [B, K, 96] to these slots' histories."""
        with self._lock:
            steps = embeddings.shape[1]
            if steps >= self.embeddings.shape[1]:
                self.embeddings[slots] = embeddings[:, steps - self.embeddings.shape[1] :]
            else:
                self.embeddings[slots] = np.concatenate([self.embeddings[slots, steps:], embeddings], axis=1)
            self.steps[slots] += steps


class FeatureState:
    """One stream's features state: its row of the pipeline's StatePool, freed with this object.
    The properties read (and write) that row: plain arrays, the same for every backend."""

    __slots__ = ("pool", "slot", "history", "__weakref__")

    def __init__(self, pool: StatePool, history: int) -> None:
        self.pool, self.history = pool, max(history, 1)
        self.slot = pool.allocate(self.history)
        weakref.finalize(self, pool.release, self.slot)

    @property
    def context(self) -> np.ndarray:  # [480] int16: the previous step's last samples
        return self.pool.context[self.slot]

    @property
    def conv_states(self) -> list[np.ndarray]:  # per time-conv layer [C, 2, F]
        return [layer[self.slot] for layer in self.pool.conv]

    @property
    def embeddings(self) -> np.ndarray:  # [history, 96], newest last
        return self.pool.embeddings[self.slot, -self.history :]

    @property
    def steps(self) -> int:  # 80 ms steps processed
        return int(self.pool.steps[self.slot])

    def window(self, length: int) -> np.ndarray:
        return self.embeddings[-length:]


@dataclass
class SilenceStart:
    """What a stream's buffers hold before its first sample: the model's view of silence."""

    mel_frame: np.ndarray  # [32], scaled
    conv_states: list[np.ndarray] = field(default_factory=list)
    embedding: np.ndarray = field(default_factory=lambda: np.zeros(EMBEDDING_DIM, np.float32))


def silence_start(backend: FeatureBackend) -> SilenceStart:
    """Run the models on digital silence until every state depends on silence only."""
    zeros = np.zeros((1, FRAME_SAMPLES + MEL_CONTEXT_SAMPLES), np.float32)
    mel_frame = scale_mel(backend.melspectrogram(zeros))[0, -1]
    states = [np.zeros((1, *shape), np.float32) for shape in backend.layout.state_shapes]
    steps = np.broadcast_to(mel_frame, (1, MEL_FRAMES_PER_STEP, MEL_BINS)).astype(np.float32)
    embedding = None
    for _ in range(_WARMUP_STEPS):
        embedding, states = backend.embed_step(steps, states)
    return SilenceStart(mel_frame=mel_frame, conv_states=[s[0].copy() for s in states], embedding=embedding[0].copy())


class FeaturePipeline:
    """Turns ready 80 ms frames of many streams into embeddings, one batch per model.

    A failing accelerator backend is replaced by `fallback` (the CPU) for every stream, and
    the step is recomputed there from the same, untouched states: no frame is lost. With a
    `route` (backends/route.py) each batch goes to the backend that is faster at its size,
    `backend` or one of `alternates`: the states are plain numbers, the same for every backend.
    """

    def __init__(self, backend: FeatureBackend, fallback_factory=None, alternates=(), route=None) -> None:
        self.backend = backend
        self._fallback_factory = fallback_factory
        self.alternates = {b.name: b for b in alternates if b.name != backend.name}
        self.route = route
        self.silence = silence_start(backend)
        self.pool = StatePool(self.silence, 1)

    @property
    def name(self) -> str:
        """The backend, or `small+large` when small batches go to one and large to another."""
        if self.route is None or self.route.crossover() is None:
            return self.backend.name
        return f"{self.route.pick(1)}+{self.route.pick(self.route.crossover())}"

    def _pick(self, batch: int) -> FeatureBackend:
        if self.route is None:
            return self.backend
        name = self.route.pick(batch)
        return self.backend if name == self.backend.name else self.alternates.get(name, self.backend)

    def new_state(self, history: int) -> FeatureState:
        """A stream that starts from silence, keeping its newest `history` embeddings."""
        return FeatureState(self.pool, history)

    @staticmethod
    def _call(backend: FeatureBackend, method: str, *args):
        if method == "features_step" and not hasattr(backend, method):  # optional
            audio, states = args
            return backend.embed_step(scale_mel(backend.melspectrogram(audio)), states)
        return getattr(backend, method)(*args)

    def _run(self, backend: FeatureBackend, method: str, *args):
        try:
            return self._call(backend, method, *args)
        except Exception as err:  # noqa: BLE001 - any accelerator failure moves work to CPU
            if backend.name == "cpu" or (self._fallback_factory is None and "cpu" not in self.alternates):
                raise
            _LOGGER.error(
                "Features backend %s failed (%s); moving all streams to the CPU backend",
                backend.name, err,
            )
            cpu = self.alternates.pop("cpu", None) or self._fallback_factory()
            failed, self.backend, self.route, self.alternates = self.backend, cpu, None, {}
            try:
                failed.close()
            except Exception:  # noqa: BLE001 - the failed device may not close cleanly
                pass
            return self._call(cpu, method, *args)

    def mel_steps(self, states: list[FeatureState], frames: np.ndarray, contexts: np.ndarray | None = None,
                  backend: FeatureBackend | None = None) -> np.ndarray:
        """frames [B, 1280] int16 -> scaled mel [B, 8, 32] (per stream, per step clipping).

        `contexts` [B, 480]: the samples before each frame (default: the streams' own); a
        stream on its first step (`steps == 0`) has none and starts from silence instead."""
        batch = len(states)
        backend = backend or self._pick(batch)
        if contexts is None:
            contexts = np.stack([s.context for s in states])
        mel = np.empty((batch, MEL_FRAMES_PER_STEP, MEL_BINS), np.float32)
        first = self.pool.steps[_slots(states)] == 0
        if (~first).any():
            rows = np.flatnonzero(~first)
            audio = np.concatenate([contexts[rows], frames[rows]], axis=1)
            mel[rows] = scale_mel(self._run(backend, "melspectrogram", audio.astype(np.float32)))
        if first.any():
            rows = np.flatnonzero(first)
            fresh = scale_mel(self._run(backend, "melspectrogram", frames[rows].astype(np.float32)))
            mel[rows, : MEL_FRAMES_PER_STEP - FIRST_STEP_MEL_FRAMES] = self.silence.mel_frame
            mel[rows, MEL_FRAMES_PER_STEP - FIRST_STEP_MEL_FRAMES :] = fresh
        return mel

    def step(self, states: list[FeatureState], frames: np.ndarray) -> np.ndarray:
        """Advance every stream by one 80 ms frame; returns the new embeddings [B, 96]."""
        embeddings = self.advance(states, frames[:, None])[:, 0]
        self.push(states, embeddings)
        return embeddings

    @property
    def multi_step(self) -> bool:
        """Whether `advance` over K steps can cost less than K single steps (on some backend in use)."""
        return any(getattr(b, "embed_steps", None) is not None for b in (self.backend, *self.alternates.values()))

    def advance(self, states: list[FeatureState], frames: np.ndarray) -> np.ndarray:
        """Run K consecutive frames [B, K, 1280] of every stream through the models; returns
        embeddings [B, K, 96]. Moves the conv states and audio context on; the embedding
        history and step count move with `push`, after the heads have scored the windows that
        end at each of the K steps (from `histories` and these embeddings)."""
        steps = frames.shape[1]
        slots = _slots(states)
        backend = self._pick(len(states))
        contexts, gathered = self.pool.gather(slots)
        if steps > 1 and getattr(backend, "embed_steps", None) is not None:
            # All K steps' audio as one mel batch (each step clipped on its own), one model call;
            # a stream on its first step has no context, and its first step goes on its own.
            if self.pool.steps[slots].all():
                mel = self._mel_of_steps(frames, contexts, backend)
            else:
                later = self._mel_of_steps(frames[:, 1:], frames[:, 0, -MEL_CONTEXT_SAMPLES:], backend)
                mel = np.concatenate([self.mel_steps(states, frames[:, 0], contexts, backend), later], axis=1)
            embeddings, gathered = self._run(backend, "embed_steps", mel, gathered)
        else:
            out = []
            fused = getattr(backend, "features_step", None) is not None
            for k in range(steps):
                context = contexts if k == 0 else frames[:, k - 1, -MEL_CONTEXT_SAMPLES:]
                if fused and (k > 0 or self.pool.steps[slots].all()):
                    # A backend that offers it runs mel, scaling and embedding in one device round trip.
                    audio = np.concatenate([context, frames[:, k]], axis=1).astype(np.float32)
                    embedding, gathered = self._run(backend, "features_step", audio, gathered)
                else:
                    mel = (self.mel_steps(states, frames[:, 0], context, backend) if k == 0
                           else self._mel_of_steps(frames[:, k : k + 1], context, backend))
                    embedding, gathered = self._run(backend, "embed_step", mel, gathered)
                out.append(embedding)
            embeddings = np.stack(out, axis=1)
        self.pool.scatter(slots, frames[:, -1, -MEL_CONTEXT_SAMPLES:], gathered)
        return embeddings

    def _mel_of_steps(self, frames: np.ndarray, contexts: np.ndarray, backend: FeatureBackend) -> np.ndarray:
        """Scaled mel [B, 8K, 32] of K consecutive frames [B, K, 1280] whose first follows
        `contexts` [B, 480], in one call: each step's context is the previous frame's tail, and
        each row is clipped on its own."""
        batch, steps = frames.shape[:2]
        tails = np.concatenate([contexts[:, None], frames[:, :-1, -MEL_CONTEXT_SAMPLES:]], axis=1)
        audio = np.concatenate([tails, frames], axis=2).reshape(batch * steps, -1)
        mel = self._run(backend, "melspectrogram", audio.astype(np.float32))
        return scale_mel(mel).reshape(batch, steps * MEL_FRAMES_PER_STEP, MEL_BINS)

    def push(self, states: list[FeatureState], embeddings: np.ndarray) -> None:
        """Append K steps' embeddings [B, K, 96] (or one step's, [B, 96]) to the streams' histories."""
        self.pool.push(_slots(states), embeddings if embeddings.ndim == 3 else embeddings[:, None])

    def histories(self, states: list[FeatureState]) -> np.ndarray:
        """The streams' embedding histories [B, H, 96] (H: the longest they keep), copied."""
        return self.pool.histories(_slots(states), max(s.history for s in states))


def _slots(states: list[FeatureState]) -> np.ndarray:
    return np.fromiter((s.slot for s in states), np.intp, len(states))
