"""Length-aware pooling over time shared by the backbones.

Padded frames must never change an embedding, so every statistic here is taken over the valid
frames only; models zero the padded frames after each block and pass a mask down.
"""

from typing import cast

import torch
from torch import nn

#: Metadata of config fields added after models were shipped: verifier.model_id leaves such a field
#: out while it holds its default, so existing models keep their ids (and enrollment stores).
ID_OMITS_DEFAULT = {"id_omits_default": True}


def frame_mask(lengths: torch.Tensor | None, x: torch.Tensor) -> torch.Tensor:
    """Mask (1 = valid frame) that broadcasts over `x` [B, C, ..., T]: shape [B, 1, ..., T].

    All ones when `lengths` (valid frames per row) is None.
    """
    shape = (x.shape[0],) + (1,) * (x.dim() - 2) + (x.shape[-1],)
    if lengths is None:
        return torch.ones(shape, dtype=x.dtype, device=x.device)
    steps = torch.arange(x.shape[-1], device=x.device)
    return (steps[None, :] < lengths[:, None]).to(x.dtype).reshape(shape)


def masked_mean_std(x: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5):
    """Mean and standard deviation over the last axis, weighted by `mask` (which sums to 1 or counts)."""
    total = mask.sum(dim=-1, keepdim=True).clamp(min=1e-8)
    mean = (x * mask).sum(dim=-1, keepdim=True) / total
    deviation = x - mean
    var = (deviation * deviation * mask).sum(dim=-1, keepdim=True) / total  # a Mul: onnxruntime's Pow is slow
    return mean.squeeze(-1), var.clamp(min=eps).sqrt().squeeze(-1)


class StatsPool(nn.Module):
    """Mean and standard deviation over time: [B, C, T] -> [B, 2C]."""

    def __init__(self, tstp: bool = False):
        super().__init__()
        self.tstp = tstp  # WeSpeaker's TSTP: sqrt(unbiased variance + 1e-7), as torch.var computes it

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(x[:, :1, :]) if mask is None else mask
        if self.tstp:
            count = mask.sum(dim=-1, keepdim=True)
            mean = (x * mask).sum(dim=-1, keepdim=True) / count.clamp(min=1)
            var = ((x - mean).pow(2) * mask).sum(dim=-1, keepdim=True) / (count - 1).clamp(min=1)
            return torch.cat([mean.squeeze(-1), (var + 1e-7).sqrt().squeeze(-1)], dim=1)
        mean, std = masked_mean_std(x, mask)
        return torch.cat([mean, std], dim=1)


class AttentiveStatsPool(nn.Module):
    """Channel-wise attentive statistics pooling with global context (ECAPA-TDNN, Desplanques 2020).

    The attention sees each frame next to the utterance mean and std, so it can weigh frames by how
    typical they are of the whole recording.
    """

    def __init__(self, channels: int, attention_channels: int = 128, eps: float = 1e-5):
        super().__init__()
        self.in_channels = channels  # declared because the first layer sees 3x as many
        self.eps = eps
        self.attention = nn.Sequential(
            nn.Conv1d(channels * 3, attention_channels, kernel_size=1),
            nn.ReLU(),
            nn.BatchNorm1d(attention_channels),
            nn.Tanh(),
            # no bias: a per-channel constant cannot change a softmax over time
            nn.Conv1d(attention_channels, channels, kernel_size=1, bias=False),
        )

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        mask = torch.ones_like(x[:, :1, :]) if mask is None else mask
        mean, std = masked_mean_std(x, mask, self.eps)
        logits = self.attention[1:](self._context(x, mean, std)).masked_fill(mask == 0, float("-inf"))
        weights = torch.softmax(logits, dim=-1)
        mean, std = masked_mean_std(x, weights, self.eps)
        return torch.cat([mean, std], dim=1)

    def _context(self, x: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
        """The first attention layer on [x, mean, std] (mean and std repeated over time), computed as
        W_x x + (W_m mean + W_s std): the same sum without building the 3C-channel input, and the
        constant part once per utterance instead of once per frame."""
        conv, c = cast(nn.Conv1d, self.attention[0]), self.in_channels
        # slices, not split(): under lightsv.edge.fuse the conv is K copies side by side (K groups)
        w_x, w_m, w_s = conv.weight[:, :c], conv.weight[:, c : 2 * c], conv.weight[:, 2 * c :]
        frames = nn.functional.conv1d(x, w_x, conv.bias, groups=conv.groups)
        utterance = nn.functional.conv1d(mean.unsqueeze(-1), w_m, groups=conv.groups)
        return frames + utterance + nn.functional.conv1d(std.unsqueeze(-1), w_s, groups=conv.groups)
