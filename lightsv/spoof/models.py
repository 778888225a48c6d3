"""Countermeasures that share the speaker model's trunk.

`SideCM` keeps a speaker ECAPA-TDNN (by default the shipped one) frozen and learns a small side
network on the frame-level features of its three SE-Res2 stages (ladder side-tuning, Sung et al.
2022): the trunk's weights and outputs are untouched, so one forward pass of the trunk gives the
speaker embedding and, through the side network, the countermeasure's score. Only the side network
trains; the trunk stays in eval mode (its BatchNorm statistics are the speaker model's).

The trunk's weights are stored in the CM's checkpoint (self-contained: the file loads without the
speaker checkpoint it came from); `trunk_id` records which speaker model it is, so a verifier can
tell when the CM and its speaker model share the trunk and run it once.

`ensemble` joins side networks trained apart on one trunk into one countermeasure whose logit is
their mean: the trunk still runs once, and each member adds only its side network's work.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from lightsv.errors import CheckpointError, ConfigError
from lightsv.models.ecapa import EcapaTdnn
from lightsv.models.pooling import AttentiveStatsPool


@dataclass
class SideCMConfig:
    feat_dim: int = 80
    trunk: str = "default"  # speaker checkpoint whose trunk is shared; "default": the shipped model
    trunk_model: str = ""  # filled when built: the trunk's registered name, config and tuners,
    trunk_config: dict | None = None  # so a saved CM rebuilds its trunk without the trunk's file
    trunk_tuners: list | None = None
    trunk_id: str = ""
    channels: int = 64
    dilations: tuple[int, ...] = (2, 3)
    attention_channels: int = 32
    members: int = 1  # side networks whose logits are averaged (made by `ensemble`)


class SideNet(nn.Module):
    """1x1 projection of the tapped stages, dilated residual convolutions, attentive statistics
    pooling and one logit (bona fide)."""

    def __init__(self, in_channels: int, channels: int, dilations: tuple[int, ...], attention_channels: int):
        super().__init__()
        self.proj = nn.Sequential(nn.Conv1d(in_channels, channels, 1), nn.ReLU(), nn.BatchNorm1d(channels))
        self.convs = nn.ModuleList(
            nn.Sequential(nn.Conv1d(channels, channels, 3, padding=d, dilation=d), nn.ReLU(), nn.BatchNorm1d(channels))
            for d in dilations
        )
        self.pool = AttentiveStatsPool(channels, attention_channels)
        self.out = nn.Linear(2 * channels, 1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.proj(frames) * mask
        for conv in self.convs:
            x = (x + conv(x)) * mask
        return self.out(self.pool(x, mask=mask))


class SideEnsemble(nn.Module):
    """Side networks on the same tapped features; the mean of their logits."""

    def __init__(self, members: list[SideNet]):
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.stack([m(frames, mask) for m in self.members]).mean(dim=0)


class SideCM(nn.Module):
    """Countermeasure on a frozen speaker trunk: `forward(feats, lengths) -> [B, 1]` logit of bona
    fide; `joint(feats, lengths) -> (speaker embedding, logit)` in one pass of the trunk."""

    def __init__(self, config: SideCMConfig):
        super().__init__()
        self.config = config
        self.feat_dim, self.embed_dim = config.feat_dim, 1
        trunk = _build_trunk(config)
        if not isinstance(trunk, EcapaTdnn):
            raise ConfigError(f"SideCM needs an ECAPA-TDNN trunk, got {type(trunk).__name__}")
        self.trunk = trunk
        if config.members < 1:
            raise ConfigError(f"SideCM members must be at least 1, got {config.members}")
        channels = 3 * self.trunk.config.channels

        def side() -> SideNet:
            return SideNet(channels, config.channels, tuple(config.dilations), config.attention_channels)

        self.side: nn.Module = side() if config.members == 1 else SideEnsemble([side() for _ in range(config.members)])
        self.prepare_training()

    def prepare_training(self) -> None:
        for p in self.trunk.parameters():
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> SideCM:
        super().train(mode)
        self.trunk.train(False)  # the shared trunk keeps the speaker model's behaviour
        return self

    def joint(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():  # nothing flows back into the frozen trunk
            emb, frames, mask = self.trunk.forward_with_frames(feats, lengths)
        return emb, self.side(frames, mask)

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.joint(feats, lengths)[1]


def _build_trunk(config: SideCMConfig) -> nn.Module:
    from lightsv.checkpoint import load_model, read_checkpoint
    from lightsv.models import build_model
    from lightsv.tuners import replay

    if config.trunk_config is not None:  # rebuilt from a saved CM: its state dict brings the weights
        trunk = build_model(config.trunk_model, **config.trunk_config)
        return replay(trunk, config.trunk_tuners or [])
    from lightsv.verifier import DEFAULT_MODEL, model_id

    path = DEFAULT_MODEL if config.trunk == "default" else config.trunk
    trunk = load_model(path)
    checkpoint = read_checkpoint(path)
    config.trunk_model, config.trunk_config = checkpoint["model"], dict(checkpoint["config"])
    config.trunk_tuners = list(checkpoint.get("tuners", []))
    config.trunk_id = model_id(trunk)
    return trunk


def ensemble(paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write to `out` one countermeasure whose logit is the mean of those of the single side networks
    at `paths`, all trained on the same trunk (same speaker model id) and filterbank; CheckpointError
    names one that is not. The result keeps the first one's training config and records `members`."""
    from lightsv.checkpoint import load_model, save_model
    from lightsv.models import build_model
    from lightsv.verifier import _features

    if len(paths) < 2:
        raise CheckpointError(f"an ensemble needs at least two countermeasures, got {len(paths)}")
    loaded = [load_model(p, return_extra=True) for p in paths]
    first, extra = loaded[0]
    for path, (model, more) in zip(paths, loaded, strict=True):
        if not isinstance(model, SideCM) or model.config.members != 1:
            raise CheckpointError(f"{path}: not a single side-network countermeasure (spoof_side)")
        if model.config.trunk_id != first.config.trunk_id:
            raise CheckpointError(f"{path}: its trunk differs from {paths[0]}'s; members must share one trunk")
        if _features(more, str(path)) != _features(extra, str(paths[0])):
            raise CheckpointError(f"{path}: its filterbank differs from {paths[0]}'s")
    joined = build_model("spoof_side", **dataclasses.asdict(dataclasses.replace(first.config, members=len(paths))))
    assert isinstance(joined, SideCM) and isinstance(joined.side, SideEnsemble)
    joined.trunk.load_state_dict(first.trunk.state_dict())
    for member, (model, _) in zip(joined.side.members, loaded, strict=True):
        member.load_state_dict(model.side.state_dict())
    keep = {k: v for k, v in extra.items() if k in ("training_config", "features")}
    return save_model(joined.eval(), out, members=[str(p) for p in paths], **keep)


def spoof_side(**options) -> SideCM:
    return SideCM(SideCMConfig(**options))
