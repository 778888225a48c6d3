"""Thin ResNet for speaker verification (as in WeSpeaker / VoxCeleb baselines): 2-D residual stages
over (frequency, time), statistics pooling over time, a linear embedding layer."""

from dataclasses import dataclass, field

import torch
from torch import nn

from lightsv.errors import ConfigError
from lightsv.models.pooling import ID_OMITS_DEFAULT, StatsPool, frame_mask


@dataclass
class ResNetConfig:
    feat_dim: int = 80
    embed_dim: int = 256
    base_width: int = 32
    layers: tuple[int, ...] = (3, 4, 6, 3)
    # or "tstp": WeSpeaker's, sqrt(unbiased variance + 1e-7) (lightsv.importers); added after models were
    # shipped, so its default stays out of the model id
    pooling: str = field(default="stats", metadata=ID_OMITS_DEFAULT)

    def __post_init__(self) -> None:
        if self.pooling not in ("stats", "tstp"):
            raise ConfigError(f"resnet: pooling {self.pooling!r}: use 'stats' or 'tstp'")


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.norm2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = torch.relu(self.norm1(self.conv1(x)))
        if mask is not None:  # keep padded frames at zero for conv2; output frame t sits on input frame stride*t
            y = y * mask[..., :: self.conv1.stride[1]]
        return torch.relu(self.norm2(self.conv2(y)) + self.shortcut(x))


class ResNet(nn.Module):
    # Every residual block and the embedding layer (a quarter of ResNet34's parameters); the one-channel
    # stem cannot be split.
    transform_targets = (r"blocks\.\d+", "embed")

    def __init__(self, config: ResNetConfig):
        super().__init__()
        c = config
        self.config = c
        self.feat_dim, self.embed_dim = c.feat_dim, c.embed_dim
        self.stem = nn.Sequential(
            nn.Conv2d(1, c.base_width, 3, padding=1, bias=False), nn.BatchNorm2d(c.base_width), nn.ReLU()
        )
        blocks, strides, channels = [], [], c.base_width
        for stage, depth in enumerate(c.layers):
            width = c.base_width * 2**stage
            for i in range(depth):
                stride = 2 if stage > 0 and i == 0 else 1
                blocks.append(BasicBlock(channels, width, stride))
                strides.append(stride)
                channels = width
        self.blocks = nn.ModuleList(blocks)
        self.strides = strides
        freq = c.feat_dim
        for s in strides:
            freq = (freq + s - 1) // s
        self.pool = StatsPool(tstp=c.pooling == "tstp")
        self.embed = nn.Linear(2 * channels * freq, c.embed_dim)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = feats.transpose(1, 2).unsqueeze(1)
        mask = frame_mask(lengths, x)
        x = self.stem(x * mask) * mask
        for block, stride in zip(self.blocks, self.strides, strict=True):
            x = block(x, mask=mask)
            if lengths is not None and stride > 1:
                # a stride-2 convolution with padding 1 keeps ceil(T / 2) frames
                lengths = torch.div(lengths + stride - 1, stride, rounding_mode="floor")
            mask = frame_mask(lengths, x)
            x = x * mask
        x = x.flatten(1, 2)
        return self.embed(self.pool(x, mask=frame_mask(lengths, x)))


def resnet34(**options) -> ResNet:
    return ResNet(ResNetConfig(**{"base_width": 32, "layers": (3, 4, 6, 3), **options}))


def resnet18(**options) -> ResNet:
    """The smaller factory: ResNet18 depth at half width (base 16), about 1M parameters."""
    return ResNet(ResNetConfig(**{"base_width": 16, "layers": (2, 2, 2, 2), **options}))
