"""AMCRN: attentive multi-scale convolutional recurrent network.

The transformation-module paper (Li et al., 2023) evaluates an "AMCRN" without defining it in its
abstract; this is the definition lightsv uses:

1. a convolutional stem (kernel 5) from the filterbank to `channels`;
2. `num_blocks` multi-scale blocks: four parallel dilated convolutions (dilation 1-4, so receptive
   fields of 3, 5, 7 and 9 frames) each producing a quarter of the channels, concatenated, mixed by a
   1x1 convolution, gated by squeeze-excitation attention and added to a residual path;
3. a recurrent layer: forward and backward GRUs over the valid frames of each row (the backward one
   runs on each sequence reversed within its own length, so padding never leaks in), added back to
   its input;
4. attentive statistics pooling and a linear embedding layer.
"""

from dataclasses import dataclass

import torch
from torch import nn

from lightsv.models.ecapa import ConvBlock, SqueezeExcite
from lightsv.models.pooling import AttentiveStatsPool, frame_mask


@dataclass
class AmcrnConfig:
    feat_dim: int = 80
    channels: int = 256
    num_blocks: int = 3
    embed_dim: int = 192
    se_channels: int = 64
    attention_channels: int = 128


class MultiScaleBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, se_channels: int, scales: int = 4):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Conv1d(in_channels, out_channels // scales, 3, dilation=d, padding=d, bias=False)
            for d in range(1, scales + 1)
        )
        self.norm = nn.BatchNorm1d(out_channels)
        self.mix = nn.Conv1d(out_channels, out_channels, 1, bias=False)
        self.mix_norm = nn.BatchNorm1d(out_channels)
        self.se = SqueezeExcite(out_channels, se_channels)
        self.shortcut = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.relu(self.norm(torch.cat([branch(x) for branch in self.branches], dim=1)))
        y = self.se(self.mix_norm(self.mix(y)), mask)
        return torch.relu(y + self.shortcut(x))


def reverse_valid(x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
    """Reverse each row of `x` [B, T, C] within its first `lengths[b]` frames; padding stays in place."""
    steps = torch.arange(x.shape[1], device=x.device)
    if lengths is None:
        index = steps.flip(0).expand(x.shape[0], -1)
    else:
        flipped = lengths[:, None] - 1 - steps[None, :]
        index = torch.where(flipped >= 0, flipped, steps[None, :])
    return torch.gather(x, 1, index.unsqueeze(-1).expand(-1, -1, x.shape[2]))


class Recurrent(nn.Module):
    """Bidirectional GRU over [B, C, T] (hidden C/2 per direction), residual."""

    def __init__(self, channels: int):
        super().__init__()
        self.forward_gru = nn.GRU(channels, channels // 2, batch_first=True)
        self.backward_gru = nn.GRU(channels, channels // 2, batch_first=True)
        self.norm = nn.BatchNorm1d(channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        lengths = None if mask is None else mask.sum(dim=-1).flatten().long()
        seq = x.transpose(1, 2)
        ahead, _ = self.forward_gru(seq)
        back, _ = self.backward_gru(reverse_valid(seq, lengths))
        y = torch.cat([ahead, reverse_valid(back, lengths)], dim=2).transpose(1, 2)
        return x + self.norm(y)


class Amcrn(nn.Module):
    transform_targets = ("stem", r"blocks\.\d+", "recurrent", "pool", "embed")

    def __init__(self, config: AmcrnConfig):
        super().__init__()
        c = config
        self.config = c
        self.feat_dim, self.embed_dim = c.feat_dim, c.embed_dim
        self.stem = ConvBlock(c.feat_dim, c.channels, kernel_size=5)
        self.blocks = nn.ModuleList(MultiScaleBlock(c.channels, c.channels, c.se_channels) for _ in range(c.num_blocks))
        self.recurrent = Recurrent(c.channels)
        self.pool = AttentiveStatsPool(c.channels, c.attention_channels)
        self.pool_norm = nn.BatchNorm1d(2 * c.channels)
        self.embed = nn.Linear(2 * c.channels, c.embed_dim)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = feats.transpose(1, 2)
        mask = frame_mask(lengths, x)
        x = self.stem(x * mask, mask=mask) * mask
        for block in self.blocks:
            x = block(x, mask=mask) * mask
        x = self.recurrent(x, mask=mask) * mask
        return self.embed(self.pool_norm(self.pool(x, mask=mask)))


def amcrn(**options) -> Amcrn:
    return Amcrn(AmcrnConfig(**options))


def amcrn_small(**options) -> Amcrn:
    return Amcrn(AmcrnConfig(**{"channels": 128, "num_blocks": 2, "se_channels": 32, **options}))
