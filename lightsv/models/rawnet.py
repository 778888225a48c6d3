"""A small countermeasure that reads the raw waveform (RawNet2-style, Tak et al. 2021).

1. learnable band-pass filters (SincNet, Ravanelli & Bengio 2018): each filter is a windowed
   difference of two low-pass sincs, parameterised by its low cut-off and its band width, both in
   Hz and initialised on the mel scale; the absolute value of the filtered signal, max pooling;
2. residual blocks of two 3-tap convolutions, each followed by max pooling;
3. attentive statistics pooling over the valid frames and one linear layer.

It learns its own filterbank, so it sees what a log-mel front-end discards (phase, fine spectral
detail), which is where vocoder artefacts live. ``input_kind = "wav"``: the trainer and the
countermeasure feed it [B, N, 1] samples in [-1, 1] with lengths in samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from lightsv.errors import AudioError, ConfigError
from lightsv.models.pooling import AttentiveStatsPool, frame_mask


@dataclass
class RawNetConfig:
    feat_dim: int = 80  # unused (the model reads the waveform); the trainer passes the filterbank's size
    sample_rate: int = 16000
    sinc_filters: int = 20
    sinc_kernel: int = 129
    channels: tuple[int, ...] = (32, 64, 64)
    pool: int = 3  # max pooling after the filters and after each block
    attention_channels: int = 32
    embed_dim: int = 1


def _mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz) / 700.0)


def _hz(mel):
    return 700.0 * (10 ** (np.asarray(mel) / 2595.0) - 1.0)


class SincConv(nn.Module):
    """[B, 1, N] -> [B, filters, N]: band-pass filters with learnable edges (odd kernel, 'same' padding)."""

    MIN_LOW, MIN_BAND = 50.0, 50.0
    taps: torch.Tensor  # buffers
    window: torch.Tensor

    def __init__(self, filters: int, kernel: int, sample_rate: int):
        super().__init__()
        if kernel % 2 == 0 or filters < 1:
            raise ConfigError(f"sinc filters need an odd kernel and at least one filter, got {filters} x {kernel}")
        self.sample_rate = sample_rate
        edges = _hz(np.linspace(_mel(30.0), _mel(sample_rate / 2 - self.MIN_LOW - self.MIN_BAND), filters + 1))
        self.low = nn.Parameter(torch.tensor(edges[:-1], dtype=torch.float32))
        self.band = nn.Parameter(torch.tensor(np.diff(edges), dtype=torch.float32))
        self.radius = half = (kernel - 1) // 2
        self.register_buffer("taps", torch.arange(-half, half + 1, dtype=torch.float32), persistent=False)
        self.register_buffer("window", torch.hamming_window(kernel, periodic=False), persistent=False)

    def filters(self) -> torch.Tensor:
        nyquist = self.sample_rate / 2
        low = self.MIN_LOW + self.low.abs()
        high = torch.clamp(low + self.MIN_BAND + self.band.abs(), self.MIN_LOW, nyquist)

        def low_pass(cut: torch.Tensor) -> torch.Tensor:  # ideal low-pass at `cut` Hz, sampled
            rate = 2 * cut[:, None] / self.sample_rate
            return rate * torch.sinc(rate * self.taps[None, :])

        band = (low_pass(high) - low_pass(low)) * self.window
        # SincNet's scaling: each filter's centre tap is 1 (narrow bands pass with more gain; the
        # BatchNorm after the pooling evens the channels out)
        return band / (2 * (high - low)[:, None] / self.sample_rate)

    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        return nn.functional.conv1d(wav, self.filters().unsqueeze(1), padding=self.radius)


class ResBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.norm1 = nn.BatchNorm1d(in_channels)
        self.conv1 = nn.Conv1d(in_channels, out_channels, 3, padding=1)
        self.norm2 = nn.BatchNorm1d(out_channels)
        self.conv2 = nn.Conv1d(out_channels, out_channels, 3, padding=1)
        self.shortcut = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # masked after each normalisation: BatchNorm moves padded zeros, and the next conv would read them
        y = self.conv1(nn.functional.leaky_relu(self.norm1(x), 0.3) * mask)
        y = self.conv2(nn.functional.leaky_relu(self.norm2(y), 0.3) * mask)
        return (y + self.shortcut(x)) * mask


class RawNet(nn.Module):
    input_kind = "wav"

    def __init__(self, config: RawNetConfig):
        super().__init__()
        c = self.config = config
        self.feat_dim = 1  # what forward reads per time step: one sample
        if not c.channels or c.pool < 1:
            raise ConfigError(f"rawnet: needs at least one block and pool >= 1, got {c.channels} and {c.pool}")
        self.embed_dim = c.embed_dim
        self.sinc = SincConv(c.sinc_filters, c.sinc_kernel, c.sample_rate)
        self.sinc_norm = nn.BatchNorm1d(c.sinc_filters)
        widths = (c.sinc_filters, *c.channels)
        self.blocks = nn.ModuleList(ResBlock(a, b) for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.pool = AttentiveStatsPool(widths[-1], c.attention_channels)
        self.pool_norm = nn.BatchNorm1d(2 * widths[-1])
        self.out = nn.Linear(2 * widths[-1], c.embed_dim)

    def _downsample(self, x: torch.Tensor, lengths: torch.Tensor | None):
        x = nn.functional.max_pool1d(x, self.config.pool)
        lengths = None if lengths is None else torch.div(lengths, self.config.pool, rounding_mode="floor")
        return x, lengths, frame_mask(lengths, x)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """``feats`` [B, N, 1]: samples; ``lengths`` [B]: valid samples per row."""
        wav = feats.transpose(1, 2)
        shortest = self.config.pool ** (1 + len(self.blocks))  # one frame left after every pooling
        if not (torch.jit.is_tracing() or torch.compiler.is_compiling()):
            if wav.shape[-1] < shortest or (lengths is not None and int(lengths.min()) < shortest):
                raise AudioError(f"rawnet input: needs at least {shortest} samples per clip")
        x = self.sinc(wav * frame_mask(lengths, wav)).abs()
        x, lengths, mask = self._downsample(x, lengths)
        x = nn.functional.leaky_relu(self.sinc_norm(x), 0.3) * mask
        for block in self.blocks:
            x, lengths, mask = self._downsample(block(x, mask), lengths)
        return self.out(self.pool_norm(self.pool(x, mask=mask)))


def rawnet(**options) -> RawNet:
    if "channels" in options:
        options["channels"] = tuple(options["channels"])
    return RawNet(RawNetConfig(**options))


__all__ = ["RawNet", "RawNetConfig", "SincConv", "rawnet"]
