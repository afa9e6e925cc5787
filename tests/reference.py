"""Helpers that run the real openWakeWord 0.6.0 package and this engine on the same audio."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np

from wyoming_oww_rk3588.features import FRAME_SAMPLES
from wyoming_oww_rk3588.models.registry import BUILTIN_DIR, normalize_name

# Copies of ../shared/audio (openWakeWord's test clips, Apache-2.0; see audio/SOURCE.md).
AUDIO_DIR = Path(__file__).parent / "audio"

#: DESIGN.md's exactness contract, absolute score difference.
CPU_TOLERANCE = 1e-4
# A window holds only the stream's own audio from step (head window + 9): the embedding of
# step k covers mel frames 8k-79 .. 8k-4, all the stream's own from k = 10.
FIRST_OWN_EMBEDDING_STEP = 10


def first_exact_step(window: int) -> int:
    return window + FIRST_OWN_EMBEDDING_STEP - 1


def load_wav(name: str) -> np.ndarray:
    with wave.open(str(AUDIO_DIR / name)) as handle:
        assert handle.getframerate() == 16000 and handle.getsampwidth() == 2 and handle.getnchannels() == 1
        return np.frombuffer(handle.readframes(handle.getnframes()), np.int16).copy()


def padded(clip: np.ndarray, before_s: float = 1.0, after_s: float = 1.5) -> np.ndarray:
    audio = np.concatenate([np.zeros(int(before_s * 16000), np.int16), clip, np.zeros(int(after_s * 16000), np.int16)])
    return audio[: len(audio) // FRAME_SAMPLES * FRAME_SAMPLES]


def oww_model(stems: list[str], **options):
    """openWakeWord 0.6.0 on the ONNX framework with the very files this package ships;
    `options` are its optional stages (vad_threshold, enable_speex_noise_suppression, ...)."""
    import openwakeword
    from openwakeword.model import Model

    # Its VAD loads silero_vad.onnx from the package's resources folder, which the PyPI wheel
    # leaves empty (models are downloaded there): point it at the same file, shipped here.
    vad_class = openwakeword.VAD
    openwakeword.VAD = lambda: vad_class(model_path=str(BUILTIN_DIR / "silero_vad.onnx"))
    try:
        return Model(
            wakeword_models=[str(BUILTIN_DIR / f"{stem}.onnx") for stem in stems],
            inference_framework="onnx",
            melspec_model_path=str(BUILTIN_DIR / "melspectrogram.onnx"),
            embedding_model_path=str(BUILTIN_DIR / "embedding_model.onnx"),
            **options,
        )
    finally:
        openwakeword.VAD = vad_class


def _label(key: str) -> str:
    """openWakeWord names path-loaded models by file stem, and timer classes by column."""
    import openwakeword

    timer = openwakeword.model_class_mappings["timer"]
    if key in timer:
        return timer[key]
    return normalize_name(key)


def oww_scores(audio: np.ndarray, stems: list[str], **options) -> list[dict[str, float]]:
    """Per-step scores from openWakeWord fed 1280-sample chunks, keyed by our labels."""
    model = oww_model(stems, **options)
    return [
        {_label(k): float(v) for k, v in model.predict(audio[i : i + FRAME_SAMPLES]).items()}
        for i in range(0, len(audio) - FRAME_SAMPLES + 1, FRAME_SAMPLES)
    ]


def engine_scores(engine, audios: list[np.ndarray], names: list[str]) -> list[list[dict[str, float]]]:
    """Per-step scores of several streams advanced together through one engine."""
    models = [(n, engine.registry.resolve(n)) for n in names]
    streams = [engine.open_stream(models) for _ in audios]
    out: list[list[dict[str, float]]] = [[] for _ in audios]
    steps = max(len(a) for a in audios) // FRAME_SAMPLES
    for step in range(steps):
        live = []
        for i, (stream, audio) in enumerate(zip(streams, audios)):
            chunk = audio[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES]
            if len(chunk) == FRAME_SAMPLES:
                stream.add_samples(chunk)
                live.append(i)
        engine.process([streams[i] for i in live])
        for i in live:
            out[i].append(dict(streams[i].scores))
    return out



def engine_detections(engine, audios: list[np.ndarray], names: list[str]) -> list[tuple[int, str, int]]:
    """(stream index, label, step) of every detection, several streams advanced together."""
    models = [(n, engine.registry.resolve(n)) for n in names]
    streams = [engine.open_stream(models) for _ in audios]
    index = {id(stream): i for i, stream in enumerate(streams)}
    found = []
    for step in range(max(len(a) for a in audios) // FRAME_SAMPLES):
        live = []
        for stream, audio in zip(streams, audios):
            chunk = audio[step * FRAME_SAMPLES : (step + 1) * FRAME_SAMPLES]
            if len(chunk) == FRAME_SAMPLES:
                stream.add_samples(chunk)
                live.append(stream)
        found += [(index[id(s)], d.label, d.step) for s, d in engine.process(live)]
    return found

NOISES = ("white", "rumble", "hum", "babble")


def noisy(name: str, noise: str, seed: int = 0, before_s: float = 2.5, after_s: float = 2.0) -> np.ndarray:
    """A clip of tests/audio, padded, with seeded noise under all of it (padding included):
    white, low rumble, mains hum, or babble (other clips reversed), at levels where the wake
    word still scores, so VAD gates and noise suppression both have work to do."""
    clip = padded(load_wav(name), before_s, after_s).astype(np.float64)
    rng = np.random.default_rng(seed)
    n, t = len(clip), np.arange(len(clip)) / 16000
    if noise == "white":
        x = rng.normal(0, 600, n)
    elif noise == "rumble":
        x = np.cumsum(rng.normal(0, 60, n))
        x -= np.convolve(x, np.ones(400) / 400, mode="same")  # keep it wandering around 0
    elif noise == "hum":
        x = sum(500 / k * np.sin(2 * np.pi * 50 * k * t + rng.uniform(0, 6.3)) for k in (1, 2, 3, 5))
        x += rng.normal(0, 150, n)
    elif noise == "babble":
        others = [load_wav(p.name)[::-1] for p in sorted(AUDIO_DIR.glob("*.wav")) if p.name != name]
        x = np.resize(np.concatenate(others), n).astype(np.float64) * 0.25
    else:
        raise ValueError(noise)
    return np.clip(clip + x, -32768, 32767).astype(np.int16)


def generated(kind: str, seconds: float = 5.0, seed: int = 0) -> np.ndarray:
    """Generated int16 audio: silence, white noise, tones, or a speech-like harmonic signal."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000) // 1280 * 1280
    t = np.arange(n) / 16000
    if kind == "silence":
        x = np.zeros(n)
    elif kind == "noise":
        x = rng.normal(0, 3000, n)
    elif kind == "tones":
        x = 8000 * np.sin(2 * np.pi * 440 * t) + 4000 * np.sin(2 * np.pi * (300 + 900 * t) * t)
    elif kind == "speechlike":
        # Harmonics of a gliding pitch, syllable-rate amplitude envelope, plus breath noise.
        pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
        phase = 2 * np.pi * np.cumsum(pitch) / 16000
        voiced = sum(np.sin(k * phase) / k for k in range(1, 15))
        envelope = np.clip(np.sin(2 * np.pi * 3.5 * t), 0, None) ** 2
        x = 9000 * voiced * envelope + rng.normal(0, 300, n)
    else:
        raise ValueError(kind)
    return np.clip(x, -32768, 32767).astype(np.int16)


# Signals of every kind, for exactness on any audio (not only speech) -------------------------

SIGNAL_SECONDS = 6.0  # the timer's windows hold only the stream's own audio from 3.44 s
FULL_SCALE = 32767
DFT_BIN_HZ = 16000 / 512  # the mel model's STFT bins


def _int16(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), -32768, 32767).astype(np.int16)


def _chirp(t: np.ndarray, f0: float, f1: float, method: str) -> np.ndarray:
    """sin of the phase of a sweep f0 -> f1 over t[-1] seconds, linear or exponential in frequency."""
    span = t[-1] + 1 / 16000
    if method == "linear":
        phase = f0 * t + (f1 - f0) / (2 * span) * t**2
    else:
        k = (f1 / f0) ** (1 / span)
        phase = f0 * (k**t - 1) / np.log(k)
    return np.sin(2 * np.pi * phase)


def _pink(rng: np.random.Generator, n: int) -> np.ndarray:
    spectrum = np.fft.rfft(rng.normal(0, 1, n))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0
    x = np.fft.irfft(spectrum, n)
    return x / x.std()


def signal_kinds(seconds: float = SIGNAL_SECONDS) -> dict[str, dict[str, np.ndarray]]:
    """kind -> {name: int16 audio}: sweeps over the whole band, tones on and between STFT bins,
    square waves, clipped full scale, DC offsets, impulse trains, a lone click, white and pink
    noise, and the clips from 1 % to 300 % gain (clipped). Seeded: the same audio every call."""
    n = int(seconds * 16000) // FRAME_SAMPLES * FRAME_SAMPLES
    t = np.arange(n) / 16000
    rng = np.random.default_rng(12)
    amplitudes = (100, 1000, 8000, FULL_SCALE)
    kinds: dict[str, dict[str, np.ndarray]] = {}
    for method in ("linear", "exponential"):
        kinds[f"chirp_{method}"] = {f"{a}": _int16(a * _chirp(t, 20, 7900, method)) for a in amplitudes}
    # The case that showed the problem: low noise, then a 3 s sweep 100 -> 2600 Hz at 8000.
    low = rng.normal(0, 30, n)
    sweep = 8000 * _chirp(np.arange(3 * 16000) / 16000, 100, 2600, "linear")
    kinds["chirp_linear"]["after_noise"] = _int16(np.concatenate([low[: 2 * 16000], sweep, low[: n - 5 * 16000]]))
    for name, offset in (("tone_bin_centre", 0.0), ("tone_between_bins", 0.5)):
        kinds[name] = {
            f"{(k + offset) * DFT_BIN_HZ:g}Hz_{a}": _int16(a * np.sin(2 * np.pi * (k + offset) * DFT_BIN_HZ * t + 0.3))
            for k, a in ((5, FULL_SCALE), (16, 8000), (100, 8000), (200, 1000))
        }
    kinds["square"] = {
        f"{f}Hz_{a}": _int16(a * np.sign(np.sin(2 * np.pi * f * t + 0.1)))
        for f, a in ((200, 8000), (1000, FULL_SCALE), (3100, 4000))
    }
    speech = generated("speechlike", seconds, seed=5).astype(np.float64)
    kinds["clipped_full_scale"] = {
        "speechlike_x8": _int16(speech * 8),
        "alexa_x20": _int16(np.resize(padded(load_wav("alexa_test.wav"), 1.5, 2.0), n) * 20.0),
        "sine_x4": _int16(4 * FULL_SCALE * np.sin(2 * np.pi * 440 * t)),
    }
    kinds["dc_offset"] = {
        "constant_20000": np.full(n, 20000, np.int16),
        "noise_plus_5000": _int16(5000 + rng.normal(0, 100, n)),
        "tone_minus_12000": _int16(-12000 + 4000 * np.sin(2 * np.pi * 440 * t)),
    }
    impulses = {}
    for hz, a in ((100, FULL_SCALE), (3, 20000), (1000, 8000)):
        x = np.zeros(n)
        x[:: int(16000 / hz)] = a
        impulses[f"{hz}Hz_{a}"] = _int16(x)
    kinds["impulse_train"] = impulses
    click = np.zeros(n)
    click[int(4.1 * 16000)] = FULL_SCALE
    kinds["click"] = {
        "in_silence": _int16(click),
        "in_low_noise": _int16(click + rng.normal(0, 3, n)),
        "negative_burst": _int16(-32768.0 * (np.arange(n) // 8 == int(4.1 * 16000) // 8)),
    }
    kinds["noise"] = {
        "white_100": _int16(rng.normal(0, 100, n)),
        "white_10000": _int16(rng.normal(0, 10000, n)),
        "pink_3000": _int16(3000 * _pink(rng, n)),
        "pink_30": _int16(30 * _pink(rng, n)),
    }
    clips = {}
    for clip in ("alexa_test.wav", "hey_mycroft_test.wav", "hey_jane.wav"):
        audio = np.resize(padded(load_wav(clip), 2.5, 2.0), n).astype(np.float64)
        for gain in (0.01, 0.1, 1.0, 3.0):
            clips[f"{clip[:-4]}_x{gain:g}"] = _int16(audio * gain)
    kinds["clips_at_gains"] = clips
    return kinds


#: Every built-in head that openWakeWord 0.6.0 runs from an ONNX file.
BUILTIN_ONNX_HEADS = ["alexa", "hey_jarvis", "hey_mycroft", "hey_rhasspy", "okay_nabu", "timer", "weather"]


def score_differences(ours: list[dict], ref: list[dict], registry, heads: list[str]) -> dict[str, float]:
    """label -> max |ours - openWakeWord| over every step whose windows hold only the stream's audio."""
    assert len(ours) == len(ref)
    out = {}
    for name in heads:
        info = registry.resolve(name)
        start = first_exact_step(info.window) - 1  # 0-based index of the first exact step
        for label in info.labels:
            out[label] = max(abs(a[label] - b[label]) for a, b in zip(ours[start:], ref[start:]))
    return out
