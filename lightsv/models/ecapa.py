"""ECAPA-TDNN (Desplanques et al., Interspeech 2020): SE-Res2 blocks, multi-layer feature
aggregation and channel-wise attentive statistics pooling.

Blocks take `(x[B, C, T], mask=None)` and never store channel counts used in `forward`, so the
transformation module can build narrow copies of them.
"""

from dataclasses import dataclass, field

import torch
from torch import nn

from lightsv.errors import ConfigError
from lightsv.models.pooling import ID_OMITS_DEFAULT, AttentiveStatsPool, frame_mask


@dataclass
class EcapaConfig:
    feat_dim: int = 80
    channels: int = 512
    embed_dim: int = 192
    scale: int = 8
    se_channels: int = 128
    attention_channels: int = 128
    mfa_channels: int = 1536
    # Options that reproduce other toolkits' ECAPA-TDNN exactly (lightsv.importers). Added after models
    # were shipped: at their defaults they stay out of the model id (verifier.model_id), so the ids of
    # existing models and their enrollment stores do not change.
    padding_mode: str = field(default="zeros", metadata=ID_OMITS_DEFAULT)  # "reflect": SpeechBrain's padding
    embed_norm: bool = field(default=True, metadata=ID_OMITS_DEFAULT)  # False: biased linear, no batch norm
    stats_eps: float = field(default=1e-5, metadata=ID_OMITS_DEFAULT)  # attentive statistics' variance floor

    def __post_init__(self) -> None:
        if self.padding_mode not in ("zeros", "reflect"):
            raise ConfigError(f"ecapa_tdnn: padding_mode {self.padding_mode!r}: use 'zeros' or 'reflect'")


class ConvBlock(nn.Module):
    """A TDNN layer: dilated 1-D convolution, ReLU, batch norm."""

    def __init__(
        self, in_channels: int, out_channels: int, kernel_size: int = 1, dilation: int = 1, padding_mode: str = "zeros"
    ):
        super().__init__()
        self.pad = dilation * (kernel_size - 1) // 2
        self.reflect = padding_mode == "reflect" and self.pad > 0
        self.conv = nn.Conv1d(
            in_channels, out_channels, kernel_size, dilation=dilation, padding=0 if self.reflect else self.pad
        )
        self.norm = nn.BatchNorm1d(out_channels)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.reflect:
            x = reflect_pad(x, self.pad, mask)
        y = self.norm(torch.relu(self.conv(x)))
        # batch norm shifts padded frames away from zero; the next convolution would read them
        return y if mask is None else y * mask


def reflect_pad(x: torch.Tensor, pad: int, mask: torch.Tensor | None) -> torch.Tensor:
    """Pad [B, C, T] by `pad` frames each side, mirrored at each row's last valid frame (not at T), so an
    utterance gets the same padding alone or in a padded batch."""
    if mask is None:
        return nn.functional.pad(x, (pad, pad), mode="reflect")
    steps = x.shape[-1]
    last = mask.sum(dim=-1).to(torch.long) - 1  # [B, 1]
    t = torch.arange(-pad, steps + pad, device=x.device)[None, :]
    index = torch.where(t < 0, -t, torch.where(t > last, 2 * last - t, t)).clamp(0, steps - 1)
    return x.gather(2, index.unsqueeze(1).expand(-1, x.shape[1], -1))


class Res2Conv(nn.Module):
    """Res2Net hierarchy: chunk i is convolved after adding chunk i-1's output, growing the receptive field."""

    def __init__(self, channels: int, kernel_size: int, dilation: int, scale: int, padding_mode: str = "zeros"):
        super().__init__()
        self.scale = scale  # a number of chunks, not channels: narrow copies keep it
        width = channels // scale
        self.convs = nn.ModuleList(
            ConvBlock(width, width, kernel_size, dilation, padding_mode) for _ in range(scale - 1)
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        chunks = torch.chunk(x, self.scale, dim=1)
        outputs, y = [], None
        for i, conv in enumerate(self.convs):
            y = conv(chunks[i] if y is None else y + chunks[i], mask=mask)
            outputs.append(y)
        return torch.cat(outputs + [chunks[-1]], dim=1)


class SqueezeExcite(nn.Module):
    """Channel gates from the utterance mean over valid frames."""

    def __init__(self, channels: int, bottleneck: int):
        super().__init__()
        self.reduce = nn.Conv1d(channels, bottleneck, 1)
        self.expand = nn.Conv1d(bottleneck, channels, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(x[:, :1, :]) if mask is None else mask
        s = (x * mask).sum(-1, keepdim=True) / mask.sum(-1, keepdim=True).clamp(min=1)
        return x * torch.sigmoid(self.expand(torch.relu(self.reduce(s))))


class SERes2Block(nn.Module):
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        dilation: int,
        scale: int,
        se_channels: int,
        padding_mode: str = "zeros",
    ):
        super().__init__()
        self.conv_in = ConvBlock(in_channels, out_channels, 1)
        self.res2 = Res2Conv(out_channels, kernel_size, dilation, scale, padding_mode)
        self.conv_out = ConvBlock(out_channels, out_channels, 1)
        self.se = SqueezeExcite(out_channels, se_channels)
        self.shortcut = nn.Conv1d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv_out(self.res2(self.conv_in(x, mask=mask), mask=mask), mask=mask)
        return self.se(y, mask) + self.shortcut(x)


class EcapaTdnn(nn.Module):
    # Blocks the transformation module wraps by default: every convolutional stage, the aggregation
    # layer (the largest single layer), the attentive pooling and the embedding projection.
    transform_targets = (r"layer[1-4]", "mfa", "pool", "embed")

    def __init__(self, config: EcapaConfig):
        super().__init__()
        c = config
        self.config = c
        self.feat_dim, self.embed_dim = c.feat_dim, c.embed_dim
        self.layer1 = ConvBlock(c.feat_dim, c.channels, 5, 1, c.padding_mode)
        self.layer2 = SERes2Block(c.channels, c.channels, 3, 2, c.scale, c.se_channels, c.padding_mode)
        self.layer3 = SERes2Block(c.channels, c.channels, 3, 3, c.scale, c.se_channels, c.padding_mode)
        self.layer4 = SERes2Block(c.channels, c.channels, 3, 4, c.scale, c.se_channels, c.padding_mode)
        self.mfa = ConvBlock(3 * c.channels, c.mfa_channels, 1)
        self.pool = AttentiveStatsPool(c.mfa_channels, c.attention_channels, eps=c.stats_eps)
        self.pool_norm = nn.BatchNorm1d(2 * c.mfa_channels)
        # with embed_norm the batch norm recentres the embedding, so the linear layer needs no bias
        self.embed = nn.Linear(2 * c.mfa_channels, c.embed_dim, bias=not c.embed_norm)
        self.embed_norm: nn.Module = nn.BatchNorm1d(c.embed_dim) if c.embed_norm else nn.Identity()

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.forward_with_frames(feats, lengths)[0]

    def forward_with_frames(self, feats: torch.Tensor, lengths: torch.Tensor | None = None):
        """(embedding [B, D], frame features of the last three SE-Res2 stages [B, 3C, T], frame mask
        [B, 1, T]): the forward pass, keeping what a side network on this trunk reads (lightsv.spoof)."""
        x = feats.transpose(1, 2)
        mask = frame_mask(lengths, x)
        out1 = self.layer1(x * mask, mask=mask) * mask
        out2 = self.layer2(out1, mask=mask) * mask
        out3 = self.layer3(out2, mask=mask) * mask
        out4 = self.layer4(out3, mask=mask) * mask
        frames = torch.cat([out2, out3, out4], dim=1)
        x = self.mfa(frames, mask=mask) * mask
        x = self.pool_norm(self.pool(x, mask=mask))
        return self.embed_norm(self.embed(x)), frames, mask


def ecapa_tdnn(**options) -> EcapaTdnn:
    return EcapaTdnn(EcapaConfig(**{"channels": 512, **options}))


def ecapa_tdnn_1024(**options) -> EcapaTdnn:
    return EcapaTdnn(EcapaConfig(**{"channels": 1024, **options}))


def ecapa_tdnn_small(**options) -> EcapaTdnn:
    """A 256-channel ECAPA-TDNN sized for phones (about 2M parameters)."""
    return EcapaTdnn(EcapaConfig(**{"channels": 256, "mfa_channels": 768, **options}))
