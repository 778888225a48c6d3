"""On-the-fly waveform augmentation for training crops: noise, babble, reverberation, speed, gain,
band-limiting and codec-like distortion, each applied with its own probability.

Without user noise or RIR folders the noise is generated (coloured noise, or babble from other
training clips) and the RIRs are synthetic (exponentially decaying noise), so a recipe runs with
nothing beyond its speech.  All randomness comes from the generator passed in, one per crop.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import soundfile as sf
from scipy.signal import butter, fftconvolve, resample_poly, sosfilt

from lightsv.audio import SAMPLE_RATE, load
from lightsv.errors import ConfigError


@dataclass
class AugmentConfig:
    noise_prob: float = 0.0
    noise_dirs: list[str] = field(default_factory=list)  # empty: coloured noise is generated
    noise_snr: tuple[float, float] = (0.0, 15.0)
    babble_prob: float = 0.0  # babble from other training clips
    babble_speakers: tuple[int, int] = (3, 6)
    babble_snr: tuple[float, float] = (13.0, 20.0)
    reverb_prob: float = 0.0
    rir_dirs: list[str] = field(default_factory=list)  # empty: synthetic RIRs
    rt60: tuple[float, float] = (0.2, 0.8)  # seconds, synthetic RIRs
    speed_prob: float = 0.0
    speeds: tuple[float, ...] = (0.9, 1.1)
    speed_as_new_speakers: bool = True
    gain_prob: float = 0.0
    gain_db: tuple[float, float] = (-6.0, 6.0)
    bandlimit_prob: float = 0.0
    codec_prob: float = 0.0
    # against spoof-set shortcuts (lightsv.spoof.shortcuts): loudness normalisation to a random level,
    # FLAC / Opus / MP3 round trips, resampling round trips
    loudness_prob: float = 0.0
    lossy_codec_prob: float = 0.0
    resample_prob: float = 0.0
    # SpecAugment (Park et al. 2019) on the filterbank, without time warping (spec_augment below)
    spec_prob: float = 0.0
    spec_freq_masks: int = 1
    spec_freq_width: int = 8  # channels, at most
    spec_time_masks: int = 1
    spec_time_width: int = 10  # frames, at most

    def check(self) -> None:
        for name in (
            "noise_prob",
            "babble_prob",
            "reverb_prob",
            "speed_prob",
            "gain_prob",
            "bandlimit_prob",
            "codec_prob",
            "loudness_prob",
            "lossy_codec_prob",
            "resample_prob",
            "spec_prob",
        ):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(f"augment.{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("spec_freq_masks", "spec_freq_width", "spec_time_masks", "spec_time_width"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 1000:
                raise ConfigError(f"augment.{name} must be a whole number in [0, 1000], got {value!r}")
        # ranges [low, high]: finite, in order and within what the augmentation can make
        for name, lowest, highest in (
            ("noise_snr", -30.0, 60.0),
            ("babble_snr", -30.0, 60.0),
            ("rt60", 0.01, 5.0),
            ("gain_db", -40.0, 40.0),
        ):
            low, high = getattr(self, name)
            if not lowest <= low <= high <= highest:
                raise ConfigError(
                    f"augment.{name} must be a range [low, high] within [{lowest:g}, {highest:g}], got {[low, high]}"
                )
        if not all(0.5 <= s <= 2.0 and s != 1.0 for s in self.speeds):
            raise ConfigError(f"augment.speeds must be factors in [0.5, 2] other than 1.0, got {list(self.speeds)}")
        if self.babble_speakers[0] < 1 or self.babble_speakers[1] < self.babble_speakers[0]:
            raise ConfigError("augment.babble_speakers must be a range [low, high] with 1 <= low <= high")


def _ratio(factor: float) -> tuple[int, int]:
    num = round(factor * 100)
    g = math.gcd(num, 100)
    return num // g, 100 // g


def change_speed(wav: np.ndarray, factor: float, length: int) -> np.ndarray:
    """Play `wav` `factor` times faster (pitch moves with it, as Kaldi's speed perturbation), then
    trim or zero-pad to `length` samples."""
    up, down = _ratio(factor)
    out = resample_poly(wav, down, up).astype(np.float32)  # fewer samples = faster
    if len(out) >= length:
        return out[:length]
    return np.pad(out, (0, length - len(out)))


def _power(x: np.ndarray) -> float:
    return float(np.mean(x.astype(np.float64) ** 2)) + 1e-10


def add_at_snr(wav: np.ndarray, noise: np.ndarray, snr_db: float) -> np.ndarray:
    scale = math.sqrt(_power(wav) / (_power(noise) * 10.0 ** (snr_db / 10.0)))
    return wav + scale * noise


def coloured_noise(n: int, rng: np.random.Generator, exponent: float) -> np.ndarray:
    """Gaussian noise with power spectrum 1/f^exponent (0 white, 1 pink, 2 brown), unit power."""
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n)
    freqs[0] = freqs[1] if n > 1 else 1.0
    noise = np.fft.irfft(spectrum / freqs ** (exponent / 2.0), n)
    return (noise / math.sqrt(_power(noise))).astype(np.float32)


def synthetic_rir(rng: np.random.Generator, rt60: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Direct path plus exponentially decaying noise tail (60 dB down at `rt60`), unit energy."""
    n = int(rt60 * sample_rate)
    t = np.arange(n) / sample_rate
    tail = rng.standard_normal(n) * np.exp(-6.9078 * t / rt60)  # ln(1000) = 60 dB of amplitude
    delay = int(rng.integers(int(0.002 * sample_rate), int(0.01 * sample_rate)))  # first reflections after
    tail[:delay] = 0.0
    rir = tail * 10 ** (rng.uniform(-12.0, 0.0) / 20.0)  # direct-to-reverberant ratio varies
    rir[0] = 1.0
    return (rir / np.sqrt(np.sum(rir**2))).astype(np.float32)


@lru_cache(maxsize=64)
def _sos(kind: str, cutoff: float | tuple[float, float], order: int = 4):
    return butter(order, cutoff, btype=kind, fs=SAMPLE_RATE, output="sos")


def band_limit(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Telephone band (300-3400 Hz), a random low-pass, or a random high-pass."""
    choice = rng.integers(3)
    if choice == 0:
        sos = _sos("bandpass", (300.0, 3400.0))
    elif choice == 1:
        sos = _sos("lowpass", float(rng.choice([2000, 3000, 4000, 5000, 6000])))
    else:
        sos = _sos("highpass", float(rng.choice([100, 200, 300, 400])))
    return sosfilt(sos, wav).astype(np.float32)


def codec(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """mu-law 8-bit (G.711-like), 8 kHz round trip, or coarse 8-bit linear quantisation."""
    choice = rng.integers(3)
    if choice == 0:
        peak = max(float(np.abs(wav).max()), 1e-6)
        x = np.clip(wav / peak, -1.0, 1.0)
        mu = 255.0
        coded = np.round((np.sign(x) * np.log1p(mu * np.abs(x)) / math.log1p(mu) + 1) / 2 * mu)
        y = coded / mu * 2 - 1
        return (np.sign(y) * np.expm1(np.abs(y) * math.log1p(mu)) / mu * peak).astype(np.float32)
    if choice == 1:
        return resample_poly(resample_poly(wav, 1, 2), 2, 1)[: len(wav)].astype(np.float32)
    peak = max(float(np.abs(wav).max()), 1e-6)
    return (np.round(wav / peak * 127.0) / 127.0 * peak).astype(np.float32)


class Augmenter:
    """`augmenter(wav, rng) -> wav` (same length, float32); `augmenter.speed(rng) -> (index, factor)`.

    `babble(rng, n)` returns n samples of another random training crop; without it babble is off.
    """

    def __init__(self, config: AugmentConfig, babble: Callable[[np.random.Generator, int], np.ndarray] | None = None):
        config.check()
        self.config, self.babble = config, babble
        from lightsv.data import find_audio

        self.noises = [p for d in config.noise_dirs for p in find_audio(d)]
        self.rir_files = [p for d in config.rir_dirs for p in find_audio(d)]
        for name, dirs, files in (
            ("noise_dirs", config.noise_dirs, self.noises),
            ("rir_dirs", config.rir_dirs, self.rir_files),
        ):
            if dirs and not files:
                raise ConfigError(f"augment.{name}: no audio files in {dirs}")
        self._rirs: dict[str, np.ndarray] = {}
        from lightsv.spoof.shortcuts import ShortcutAugment

        self.shortcuts = ShortcutAugment(config.loudness_prob, config.lossy_codec_prob, config.resample_prob)

    @property
    def enabled(self) -> bool:
        c = self.config
        return (
            any(
                p > 0 for p in (c.noise_prob, c.babble_prob, c.reverb_prob, c.gain_prob, c.bandlimit_prob, c.codec_prob)
            )
            or self.shortcuts.enabled
        )

    def speed(self, rng: np.random.Generator) -> tuple[int, float]:
        """(1-based index into `speeds`, or 0 for unchanged; factor)."""
        c = self.config
        if c.speed_prob <= 0 or not c.speeds or rng.random() >= c.speed_prob:
            return 0, 1.0
        i = int(rng.integers(len(c.speeds)))
        return (i + 1 if c.speed_as_new_speakers else 0), float(c.speeds[i])

    def __call__(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        c = self.config
        n = len(wav)
        out = wav.astype(np.float32, copy=True)
        # one draw per effect, always taken, so enabling one effect does not reshuffle the others
        draws = rng.random(6)
        if draws[0] < c.reverb_prob:
            out = self._reverb(out, rng)
        if draws[1] < c.noise_prob:
            out = add_at_snr(out, self._noise(rng, n), rng.uniform(*c.noise_snr))
        if draws[2] < c.babble_prob and self.babble is not None:
            talkers = int(rng.integers(c.babble_speakers[0], c.babble_speakers[1] + 1))
            babble = np.sum([self.babble(rng, n) for _ in range(talkers)], axis=0)
            out = add_at_snr(out, babble, rng.uniform(*c.babble_snr))
        if draws[3] < c.bandlimit_prob:
            out = band_limit(out, rng)
        if draws[4] < c.codec_prob:
            out = codec(out, rng)
        if draws[5] < c.gain_prob:
            out = out * np.float32(10 ** (rng.uniform(*c.gain_db) / 20.0))
        if self.shortcuts.enabled:  # drawn after the others, so configs without it keep their streams
            out = self.shortcuts(out, rng)
        return out.astype(np.float32, copy=False)

    def _noise(self, rng: np.random.Generator, n: int) -> np.ndarray:
        if not self.noises:
            return coloured_noise(n, rng, float(rng.choice([0.0, 1.0, 2.0])))
        path = self.noises[int(rng.integers(len(self.noises)))]
        total = sf.info(path).frames
        # read only the slice needed: noise corpora are too big to hold in memory
        start = int(rng.integers(max(1, total - n + 1)))
        noise, rate = sf.read(path, start=start, frames=n, dtype="float32", always_2d=True)
        noise = noise.mean(axis=1)
        if rate != SAMPLE_RATE:
            noise = resample_poly(noise, SAMPLE_RATE, rate).astype(np.float32)
        return np.resize(noise, n) if len(noise) else coloured_noise(n, rng, 0.0)

    def _reverb(self, wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.rir_files:
            path = self.rir_files[int(rng.integers(len(self.rir_files)))]
            rir = self._rirs.get(path)
            if rir is None:
                rir = load(path, min_seconds=0.0)
                rir = rir[int(np.argmax(np.abs(rir))) :]  # start at the direct path, so speech stays aligned
                self._rirs[path] = rir = rir / np.sqrt(np.sum(rir**2) + 1e-10)
        else:
            rir = synthetic_rir(rng, rng.uniform(*self.config.rt60))
        out = fftconvolve(wav, rir)[: len(wav)]
        return (out * math.sqrt(_power(wav) / _power(out))).astype(np.float32)


def spec_augment(feats, c: AugmentConfig, generator):
    """SpecAugment's masks on a batch of mean-normalised filterbanks [B, T, F] (a new tensor): each crop,
    with probability ``spec_prob``, gets ``spec_freq_masks`` bands of 1..``spec_freq_width`` channels and
    ``spec_time_masks`` spans of 1..``spec_time_width`` frames set to 0, its mean. Masks are drawn from
    ``generator`` (the trainer seeds it per batch, so a resumed run draws the same ones)."""
    import torch

    out = feats.clone()
    batch, frames, channels = out.shape
    chosen = torch.rand(batch, generator=generator) < c.spec_prob
    for b in torch.nonzero(chosen).flatten().tolist():
        for count, width, size, axis in (
            (c.spec_freq_masks, c.spec_freq_width, channels, 2),
            (c.spec_time_masks, c.spec_time_width, frames, 1),
        ):
            for _ in range(count):
                w = int(torch.randint(1, max(1, min(width, size)) + 1, (1,), generator=generator)) if width else 0
                start = int(torch.randint(0, size - w + 1, (1,), generator=generator))
                if axis == 2:
                    out[b, :, start : start + w] = 0.0
                else:
                    out[b, start : start + w, :] = 0.0
    return out
