"""Transforms that remove what a spoof set's sources differ in besides spoofing: loudness
normalisation, file format (lossless and lossy codec round trips), sample-rate history and duration.

A countermeasure that keys on them learns the data set, not spoofing. They serve twice: as training
augmentation (`ShortcutAugment`, enabled from the trainer's `augment:` section) and as the
invariance check (`INVARIANCE`: score the dev set once per transform; the EER must barely move).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable

import numpy as np
import soundfile as sf
from scipy.signal import resample_poly

from lightsv.audio import SAMPLE_RATE, central_crop

CODECS = {"flac": ("FLAC", "PCM_16"), "opus": ("OGG", "OPUS"), "mp3": ("MP3", "MPEG_LAYER_III")}


def normalise_loudness(wav: np.ndarray, rms_db: float = -26.0) -> np.ndarray:
    """Scale to an RMS level (dBFS) over the louder half of the 20 ms frames, so pauses do not count;
    peaks are kept below full scale."""
    frames = wav[: len(wav) // 320 * 320].reshape(-1, 320) if len(wav) >= 320 else wav[None]
    energy = np.mean(frames.astype(np.float64) ** 2, axis=1)
    loud = energy[energy >= np.median(energy)]
    level = math.sqrt(float(np.mean(loud)) + 1e-12)
    out = wav * (10 ** (rms_db / 20) / level)
    peak = float(np.abs(out).max()) if len(out) else 0.0
    return (out / peak * 0.99 if peak > 0.99 else out).astype(np.float32)


def codec_round_trip(wav: np.ndarray, codec: str, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Encode and decode in memory (libsndfile: FLAC, Ogg Opus, MP3); same length as the input."""
    fmt, subtype = CODECS[codec]
    buf = io.BytesIO()
    sf.write(buf, np.clip(wav, -1.0, 1.0), sample_rate, format=fmt, subtype=subtype)
    buf.seek(0)
    out, _ = sf.read(buf, dtype="float32")
    out = out.mean(axis=1) if out.ndim > 1 else out
    # lossy codecs add encoder delay and padding; keep the input's length
    return np.pad(out, (0, max(0, len(wav) - len(out))))[: len(wav)].astype(np.float32)


def resample_round_trip(wav: np.ndarray, rate: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Resample to `rate` and back (polyphase): another rate-conversion history, and for rates below
    16 kHz a lost top band."""
    g = math.gcd(rate, sample_rate)
    down = resample_poly(wav, rate // g, sample_rate // g)
    return resample_poly(down, sample_rate // g, rate // g)[: len(wav)].astype(np.float32)


# The invariance check: name -> transform of a 16 kHz clip. Crop length 2 s: the shortest dev clips
# are about that long, so every clip ends up with (nearly) the same duration.
INVARIANCE: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "loudness -26 dBFS": normalise_loudness,
    "flac": lambda w: codec_round_trip(w, "flac"),
    "opus": lambda w: codec_round_trip(w, "opus"),
    "mp3": lambda w: codec_round_trip(w, "mp3"),
    "resample 22.05 kHz": lambda w: resample_round_trip(w, 22050),
    "resample 8 kHz": lambda w: resample_round_trip(w, 8000),
    "crop 2 s": lambda w: central_crop(w, 2.0),
}


class ShortcutAugment:
    """Training augmentation against the shortcuts: each crop independently gets a loudness level, a
    codec round trip and a resampling round trip, each with its own probability."""

    RATES = (8000, 11025, 12000, 22050, 24000, 44100, 48000)

    def __init__(self, loudness_prob: float, codec_prob: float, resample_prob: float):
        self.loudness_prob, self.codec_prob, self.resample_prob = loudness_prob, codec_prob, resample_prob

    @property
    def enabled(self) -> bool:
        return max(self.loudness_prob, self.codec_prob, self.resample_prob) > 0

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        draws = rng.random(3)  # one draw per effect, always taken
        if draws[0] < self.resample_prob:
            wav = resample_round_trip(wav, int(rng.choice(self.RATES)))
        if draws[1] < self.codec_prob:
            wav = codec_round_trip(wav, str(rng.choice(list(CODECS))))
        if draws[2] < self.loudness_prob:
            wav = normalise_loudness(wav, float(rng.uniform(-35.0, -16.0)))
        return wav
