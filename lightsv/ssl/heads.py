"""Light back-ends for a frame-level encoder: `forward(frames[B, T, D], mask[B, T]) -> [B, out]`."""

from __future__ import annotations

import torch
from torch import nn


def _masked_softmax(scores: torch.Tensor, mask: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=dim)


class AttentiveHead(nn.Module):
    """Attentive pooling over valid frames, then a linear layer."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int):
        super().__init__()
        self.score = nn.Sequential(nn.Linear(in_dim, hidden), nn.Tanh(), nn.Linear(hidden, 1))
        self.out = nn.Linear(in_dim, out_dim)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = _masked_softmax(self.score(frames).squeeze(-1), mask, dim=1)
        return self.out((weights.unsqueeze(-1) * frames).sum(dim=1))


class GraphAttention(nn.Module):
    """One graph-attention layer over fully connected nodes, as AASIST's (Jung et al. 2022): edge
    weights from the element-wise product of node pairs, an attended and a direct projection."""

    def __init__(self, dim: int, out_dim: int):
        super().__init__()
        self.edge = nn.Linear(dim, out_dim)
        self.edge_weight = nn.Linear(out_dim, 1, bias=False)
        self.with_att, self.without_att = nn.Linear(dim, out_dim), nn.Linear(dim, out_dim)
        self.norm, self.act = nn.LayerNorm(out_dim), nn.SELU()

    def forward(self, nodes: torch.Tensor) -> torch.Tensor:  # [B, N, D]
        pairs = nodes.unsqueeze(2) * nodes.unsqueeze(1)  # [B, N, N, D]
        att = torch.softmax(self.edge_weight(torch.tanh(self.edge(pairs))).squeeze(-1), dim=-1)
        return self.act(self.norm(self.with_att(att @ nodes) + self.without_att(nodes)))


class GraphHead(nn.Module):
    """A small graph-attention back-end in the spirit of AASIST: frames are max-pooled into `nodes`
    temporal nodes, two graph-attention layers mix them, a max and mean readout feeds a linear layer."""

    def __init__(self, in_dim: int, hidden: int, out_dim: int, nodes: int = 16):
        super().__init__()
        self.nodes = nodes
        self.proj = nn.Linear(in_dim, hidden)
        self.layers = nn.Sequential(GraphAttention(hidden, hidden), GraphAttention(hidden, hidden))
        self.out = nn.Linear(2 * hidden, out_dim)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(frames).masked_fill(~mask.unsqueeze(-1), float("-inf"))
        # each node is the max over one stretch of the valid frames; padding never wins a max
        nodes = nn.functional.adaptive_max_pool1d(x.transpose(1, 2), self.nodes).transpose(1, 2)
        nodes = torch.nan_to_num(nodes, neginf=0.0)  # a stretch entirely of padding
        nodes = self.layers(nodes)
        return self.out(torch.cat([nodes.max(dim=1).values, nodes.mean(dim=1)], dim=-1))


HEADS = {"attentive": AttentiveHead, "graph": GraphHead}
