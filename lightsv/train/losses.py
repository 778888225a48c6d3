"""Training objectives: additive angular margin softmax (ArcFace / AAM) and embedding distillation."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from lightsv.errors import ConfigError


class AAMSoftmax(nn.Module):
    """Additive angular margin softmax (Deng et al., 2019): the target logit is s*cos(theta + m).

    Rows with a negative label (clips without speaker labels) are left out.  `margin` may be changed
    between steps (see `margin_at`).  Without `easy_margin`, where theta + m would pass pi the
    target logit becomes cos(theta) - m*sin(m) instead, which keeps it decreasing in theta.

    `subcenters` K > 1 is sub-center AAM (sub-center ArcFace, Deng et al., ECCV 2020): each class has
    K centres (rows c*K .. c*K+K-1 of `weight`) and a clip is scored against its nearest one, so a
    speaker's recordings that differ (a child's and a reading voice, a codec, a room) need not be pulled
    onto one point, and a mislabelled clip sits on a spare centre instead of dragging the main one.
    """

    def __init__(
        self,
        embed_dim: int,
        num_classes: int,
        margin: float = 0.2,
        scale: float = 30.0,
        easy_margin: bool = False,
        subcenters: int = 1,
    ):
        super().__init__()
        if num_classes < 2:
            raise ConfigError(f"AAM softmax needs at least 2 classes, got {num_classes}")
        if subcenters < 1:
            raise ConfigError(f"AAM softmax needs at least 1 centre per class, got subcenters={subcenters}")
        self.weight = nn.Parameter(torch.empty(num_classes * subcenters, embed_dim))
        nn.init.xavier_normal_(self.weight)
        self.num_classes, self.subcenters = num_classes, subcenters
        self.scale, self.easy_margin = scale, easy_margin
        self.margin = margin

    def cosine(self, emb: torch.Tensor) -> torch.Tensor:
        """[B, classes]: each class's nearest centre."""
        cosine = F.linear(F.normalize(emb), F.normalize(self.weight))
        if self.subcenters > 1:
            cosine = cosine.view(-1, self.num_classes, self.subcenters).amax(dim=2)
        return cosine

    def logits(self, emb: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        cosine = self.cosine(emb).clamp(-1.0, 1.0)
        m = self.margin
        sine = torch.sqrt((1.0 - cosine * cosine).clamp(min=0.0))
        phi = cosine * math.cos(m) - sine * math.sin(m)
        if self.easy_margin:
            phi = torch.where(cosine > 0, phi, cosine)
        else:
            phi = torch.where(cosine > math.cos(math.pi - m), phi, cosine - math.sin(math.pi - m) * m)
        target = F.one_hot(labels, cosine.shape[1]).to(cosine.dtype)
        return self.scale * (target * phi + (1.0 - target) * cosine)

    def forward(self, emb: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean loss over labelled rows, their top-1 accuracy); both 0 when no row is labelled."""
        keep = labels >= 0
        if not bool(keep.any()):
            # a zero that still touches the weights, so DDP sees every parameter used
            zero = self.weight.sum() * 0.0 + emb.sum() * 0.0
            return zero, zero.detach()
        emb, labels = emb[keep], labels[keep]
        logits = self.logits(emb, labels)
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            plain = self.cosine(emb)
            accuracy = (plain.argmax(dim=1) == labels).float().mean()
        return loss, accuracy


def margin_at(epoch: float, margin: float, warmup: tuple[float, float] = (0.0, 0.0)) -> float:
    """Margin after `epoch` (fractional) epochs: 0 before warmup[0], rising linearly to `margin` at warmup[1].

    A margin from the first step slows early training (WeSpeaker ramps it the same way).
    """
    start, end = warmup
    if end <= start or epoch >= end:
        return margin
    if epoch <= start:
        return 0.0
    return margin * (epoch - start) / (end - start)


class DistillLoss(nn.Module):
    """Mean cosine distance between a projection of the student embedding and the teacher's embedding.

    projection: "linear" (a learnt map, dropped after training), "none" (the embedding itself, which
    then lives in the teacher's space; needs equal sizes) or "auto" (none when the sizes agree).
    `weight` per row (0 for rows without a teacher target) weighs the mean.
    """

    def __init__(self, embed_dim: int, teacher_dim: int, projection: str = "auto"):
        super().__init__()
        if projection == "auto":
            projection = "none" if embed_dim == teacher_dim else "linear"
        if projection == "none" and embed_dim != teacher_dim:
            raise ConfigError(
                f"distillation without projection needs embed_dim == teacher dim ({teacher_dim}), got {embed_dim}"
            )
        if projection not in ("none", "linear"):
            raise ConfigError(f"unknown distillation projection {projection!r}; use auto, none or linear")
        self.project = nn.Linear(embed_dim, teacher_dim) if projection == "linear" else nn.Identity()

    def forward(self, emb: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        distance = 1.0 - F.cosine_similarity(self.project(emb), target, dim=1, eps=1e-8)
        if weight is None:
            return distance.mean()
        return (distance * weight).sum() / weight.sum().clamp(min=1.0)
