"""Log-mel filterbank front-ends in plain torch ops, so they export with the model graph.

Two styles (``FbankConfig.style``): ``kaldi`` (lightsv's own and WeSpeaker's: torchaudio's
``compliance.kaldi.fbank`` on int16-scaled samples) and ``speechbrain`` (SpeechBrain's
``lobes.features.Fbank``: centred frames, a periodic window, HTK mels with SpeechBrain's triangles,
decibels clipped 80 dB below each utterance's peak), so imported models see the features they were
trained on.

Per-frame DC removal, pre-emphasis, the window and the real DFT are all linear in the raw frame, so
they are folded into one fixed matrix applied as a strided conv1d; the rest is power, a mel matmul
and a log.  No torch.stft, no loops over frames and no data-dependent control flow, so the module
traces to ONNX/ExecuTorch with a dynamic number of samples.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lightsv.errors import AudioError, ConfigError

# WeSpeaker scales [-1, 1] audio to the int16 range before Kaldi fbank; the features depend on it.
_INT16_SCALE = 32768.0
STYLES = ("kaldi", "speechbrain")


@dataclass
class FbankConfig:
    sample_rate: int = 16000
    n_mels: int = 80
    frame_length_ms: float = 25.0
    frame_shift_ms: float = 10.0
    n_fft: int = 512
    preemphasis: float = 0.97
    remove_dc: bool = True
    window: str = "povey"  # or "hamming", "hann"
    low_freq: float = 20.0
    high_freq: float = 0.0  # 0 -> Nyquist; negative -> offset below Nyquist (as Kaldi)
    mean_norm: bool = True
    log_floor: float = 1.1920929e-07  # Kaldi's float epsilon (speechbrain style: its amin, 1e-10)
    style: str = "kaldi"  # or "speechbrain" (see the module docstring)
    top_db: float = 80.0  # speechbrain style: values below the utterance's peak minus this are raised to it
    # kaldi style: samples scaled to the int16 range first (Kaldi, WeSpeaker, lightsv); 3D-Speaker feeds
    # [-1, 1] floats, which moves every log-mel but also where the log floor bites
    int16_scale: bool = True

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ConfigError(f"fbank: unknown style {self.style!r} (use {' or '.join(map(repr, STYLES))})")
        if self.style == "speechbrain" and self.win_length != self.n_fft:
            # torch.stft would centre a shorter window inside n_fft; no SpeechBrain recipe does that
            raise ConfigError(
                f"fbank: speechbrain style needs frame length ({self.win_length}) == n_fft ({self.n_fft})"
            )

    @property
    def win_length(self) -> int:
        # Same truncation as Kaldi/torchaudio, so frame counts agree exactly.
        return int(self.sample_rate * self.frame_length_ms * 0.001)

    @property
    def hop_length(self) -> int:
        return int(self.sample_rate * self.frame_shift_ms * 0.001)

    @property
    def centered(self) -> bool:
        # SpeechBrain's STFT pads n_fft/2 zeros on both sides (torch.stft center=True), Kaldi snips edges
        return self.style == "speechbrain"

    @property
    def n_bins(self) -> int:
        # Kaldi's bank stops below Nyquist; SpeechBrain's spans all n_fft/2 + 1 one-sided bins
        return self.n_fft // 2 + (1 if self.style == "speechbrain" else 0)

    def frame_count(self, num_samples):
        """Frames made from ``num_samples``: Kaldi's snip_edges=True or SpeechBrain's centred frames;
        int or tensor, 0 if too short."""
        if self.centered:
            if isinstance(num_samples, torch.Tensor):
                return torch.div(num_samples, self.hop_length, rounding_mode="floor") + 1
            return 1 + int(num_samples) // self.hop_length
        if isinstance(num_samples, torch.Tensor):
            n = torch.div(num_samples - self.win_length, self.hop_length, rounding_mode="floor") + 1
            return n.clamp(min=0)
        return max(0, 1 + (int(num_samples) - self.win_length) // self.hop_length)


class Fbank(nn.Module):
    """``forward(wav[B, N] in [-1, 1], lengths[B] samples) -> (log-mels[B, T, n_mels], frames[B])``.

    Rows are zero-padded to N; mean normalisation then uses only each row's valid frames and padded
    frames come out as zeros.  Eager calls with N < one frame raise AudioError; traced graphs skip that
    check, and torch.export needs a sample Dim with min >= 2 frames (560 at 16 kHz).
    """

    dft: torch.Tensor  # buffers
    mel: torch.Tensor

    def __init__(self, config: FbankConfig | None = None):
        super().__init__()
        self.config = c = config or FbankConfig()
        self.win_length, self.hop_length = c.win_length, c.hop_length
        if not (self.hop_length > 0 and 0 < self.win_length <= c.n_fft):
            raise ConfigError(
                f"fbank: need 0 < frame length ({self.win_length}) <= n_fft ({c.n_fft})"
                f" and a positive frame shift ({self.hop_length})"
            )
        bank = mel_banks(c)  # [n_bins, n_mels]
        # Bins no triangle touches (DC, outside low/high_freq) are dropped from the DFT entirely.
        used = np.flatnonzero(bank.any(axis=1))
        dft = _frame_matrix(c, used)
        self.register_buffer("dft", torch.from_numpy(dft).float().unsqueeze(1), persistent=False)
        self.register_buffer("mel", torch.from_numpy(bank[used]).float(), persistent=False)

    def frame_count(self, num_samples):
        return self.config.frame_count(num_samples)

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        if wav.dim() != 2:
            raise AudioError(f"fbank input: expected [batch, samples], got shape {tuple(wav.shape)}")
        tracing = torch.jit.is_tracing() or torch.compiler.is_compiling()
        if not tracing and wav.shape[1] < self.win_length:
            raise AudioError(
                f"fbank input: {wav.shape[1]} samples is shorter than one frame ({self.win_length} samples)"
            )
        if self.config.centered:
            pad = self.config.n_fft // 2
            wav = nn.functional.pad(wav, (pad, pad))
        spec = nn.functional.conv1d(wav.to(self.dft.dtype).unsqueeze(1), self.dft, stride=self.hop_length)
        re, im = spec.chunk(2, dim=1)
        power = (re * re + im * im).transpose(1, 2)  # [B, T, bins]
        return finish(power @ self.mel, wav, lengths, self.config)


def finish(energies: torch.Tensor, wav: torch.Tensor, lengths: torch.Tensor | None, c: FbankConfig):
    """Mel energies [B, T, n_mels] -> (log-mels with padded frames zeroed, frames[B]): the log of the
    style, then per-utterance mean normalisation over valid frames. Shared by both in-graph front-ends."""
    num_frames = energies.shape[1]
    if lengths is None:
        frame_lengths = torch.full((wav.shape[0],), num_frames, dtype=torch.long, device=wav.device)
        mask = None
    else:
        frame_lengths = c.frame_count(lengths.to(torch.long)).clamp(max=num_frames)
        valid = torch.arange(num_frames, device=wav.device)[None, :] < frame_lengths[:, None]
        mask = valid.unsqueeze(-1).to(energies.dtype)
    if c.style == "speechbrain":
        # 10 log10 of the power, floored at amin, then clipped top_db below the utterance's loudest value
        feats = torch.log(torch.clamp(energies, min=c.log_floor)) * (10.0 / math.log(10.0))
        peaks = feats if mask is None else feats.masked_fill(mask == 0, float("-inf"))
        feats = torch.maximum(feats, peaks.amax(dim=(1, 2), keepdim=True) - c.top_db)
    else:
        feats = torch.log(torch.clamp(energies, min=c.log_floor))
    if mask is None:
        if c.mean_norm:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return feats, frame_lengths
    if c.mean_norm:
        count = frame_lengths.clamp(min=1).to(feats.dtype)[:, None, None]
        feats = feats - (feats * mask).sum(dim=1, keepdim=True) / count
    return feats * mask, frame_lengths


def mel_scale(freq):
    return 1127.0 * np.log(1.0 + np.asarray(freq, dtype=np.float64) / 700.0)


def mel_banks(c: FbankConfig) -> np.ndarray:
    """The style's triangular filters on the one-sided FFT bins: [c.n_bins, n_mels].

    Kaldi: linear in mel (1127 ln(1 + f/700)), bins 0..n_fft/2-1. SpeechBrain: centres evenly spaced in
    HTK mel (2595 log10(1 + f/700)), triangles built in Hz, each as wide on both sides as the gap below
    its centre (its Filterbank's `band`), bins 0..n_fft/2.
    """
    nyquist = 0.5 * c.sample_rate
    high = c.high_freq + nyquist if c.high_freq <= 0 else c.high_freq
    if not 0 <= c.low_freq < high <= nyquist:
        raise ConfigError(f"fbank: need 0 <= low_freq ({c.low_freq}) < high_freq ({high}) <= {nyquist}")
    if c.style == "speechbrain":
        mel = np.linspace(2595 * np.log10(1 + c.low_freq / 700), 2595 * np.log10(1 + high / 700), c.n_mels + 2)
        hz = 700 * (10 ** (mel / 2595) - 1)
        band, central = (hz[1:] - hz[:-1])[:-1], hz[1:-1]
        freqs = np.linspace(0, c.sample_rate // 2, c.n_bins)[:, None]
        slope = (freqs - central) / band
        return np.maximum(0.0, np.minimum(slope + 1.0, 1.0 - slope))
    mel_lo, mel_hi = mel_scale(c.low_freq), mel_scale(high)
    delta = (mel_hi - mel_lo) / (c.n_mels + 1)
    left = mel_lo + delta * np.arange(c.n_mels)
    center, right = left + delta, left + 2 * delta
    mel = mel_scale(np.arange(c.n_bins) * c.sample_rate / c.n_fft)[:, None]
    up, down = (mel - left) / (center - left), (right - mel) / (right - center)
    return np.where((mel > left) & (mel < right), np.minimum(up, down), 0.0)


def _window(c: FbankConfig, n: int) -> np.ndarray:
    # Kaldi's windows are symmetric (divide by n - 1); torch's, which SpeechBrain uses, are periodic (by n).
    period = n if c.style == "speechbrain" else n - 1
    hann = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(n) / period)
    if c.window == "povey":
        return hann**0.85
    if c.window == "hann":
        return hann
    if c.window == "hamming":
        return 0.54 - 0.46 * np.cos(2 * math.pi * np.arange(n) / period)
    raise ConfigError(f"fbank: unknown window {c.window!r} (use 'povey', 'hamming' or 'hann')")


def _frame_matrix(c: FbankConfig, bins: np.ndarray) -> np.ndarray:
    """[2 * len(bins), win] real then imaginary DFT rows of scale -> DC removal -> pre-emphasis -> window."""
    n = c.win_length
    op = np.eye(n) * input_scale(c)
    if c.remove_dc:
        op = op - op.mean(axis=0, keepdims=True)
    shifted = np.vstack([op[:1], op[:-1]])  # Kaldi pre-emphasises the first sample against itself
    op = (op - c.preemphasis * shifted) * _window(c, n)[:, None]
    phase = 2 * math.pi * np.outer(bins, np.arange(n)) / c.n_fft
    return np.vstack([np.cos(phase) @ op, -np.sin(phase) @ op])


def input_scale(c: FbankConfig) -> float:
    """What samples in [-1, 1] are multiplied by first: Kaldi-style front-ends read int16 values."""
    return _INT16_SCALE if c.style == "kaldi" and c.int16_scale else 1.0


class Waveform(nn.Module):
    """The input of waveform models (wav2vec2): ``forward(wav[B, N], lengths) -> (wav[B, N, 1], lengths)``."""

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor | None = None):
        if wav.dim() != 2:
            raise AudioError(f"waveform input: expected [batch, samples], got shape {tuple(wav.shape)}")
        if lengths is None:
            lengths = torch.full((wav.shape[0],), wav.shape[1], dtype=torch.long, device=wav.device)
        return wav.unsqueeze(-1), lengths


def features_for(model: nn.Module, config: FbankConfig) -> nn.Module:
    """The front-end a model reads: the waveform for models with `input_kind = "wav"`, else `Fbank`."""
    return Waveform() if getattr(model, "input_kind", "fbank") == "wav" else Fbank(config)
