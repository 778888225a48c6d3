"""`SSLModel`: a transformers encoder (wav2vec2 or AST) and a light head, as a lightsv model."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from lightsv.errors import AudioError, ConfigError
from lightsv.peft.tuning import freeze, frozen_train
from lightsv.ssl import frontends
from lightsv.ssl.heads import HEADS
from lightsv.tuners import replace_module

# lightsv's Fbank scales audio to the int16 range (as Kaldi); AST was trained on torchaudio's Kaldi
# fbank of [-1, 1] audio, i.e. log-mels 2 ln(32768) lower, then normalised with AudioSet's mean and
# twice its standard deviation (transformers' ASTFeatureExtractor defaults).
_INT16_LOG_POWER = 2 * math.log(32768.0)
AST_MEAN, AST_STD = -4.2677393, 4.5689974
FINETUNE = ("tuners", "full")


@dataclass
class SSLConfig:
    size: str = "wav2vec2_tiny"  # a named size of lightsv.ssl.SIZES (random weights) ...
    pretrained: str | None = None  # ... or a local transformers checkpoint directory
    encoder: dict[str, Any] = field(
        default_factory=dict
    )  # filled at build: a checkpoint rebuilds without the directory
    head: str = "attentive"  # or "graph"
    head_dim: int = 128
    out_dim: int = 1  # 1: a countermeasure score (logit of bona fide); more: an embedding
    finetune: str = "tuners"  # "tuners": the encoder is frozen, tuners and head train; "full": everything trains
    feat_dim: int = 128  # log-mel bins of an AST input (a wav2vec2 input is the waveform)


class SSLModel(nn.Module):
    """`forward(feats[B, T, F], lengths=None) -> [B, out_dim]`.

    wav2vec2 reads the waveform (`feats` [B, N, 1], lengths in samples); AST reads 128-bin log-mels
    at its 10 ms stride (`feats` [B, T, 128] from lightsv's Fbank with `window: hann`, `mean_norm:
    false`), with its position embeddings interpolated along time when the input is not as long as
    the checkpoint's `max_length`.
    """

    ssl: Any  # transformers Wav2Vec2Model or ASTModel

    def __init__(self, config: SSLConfig):
        super().__init__()
        if config.head not in HEADS:
            raise ConfigError(f"unknown head {config.head!r}; choose one of {', '.join(HEADS)}")
        if config.finetune not in FINETUNE:
            raise ConfigError(f"finetune must be one of {', '.join(FINETUNE)}, got {config.finetune!r}")
        if config.encoder:
            family, encoder = frontends.from_config(config.encoder.get("model_type", ""), config.encoder)
        elif config.pretrained:
            family, encoder = frontends.from_pretrained(config.pretrained)
        else:
            family, encoder = frontends.from_size(config.size)
        encoder_config = encoder.config.to_dict()
        if family is frontends.AST and encoder_config["num_mel_bins"] != config.feat_dim:
            raise ConfigError(
                f"{config.size}: AST reads {encoder_config['num_mel_bins']} mel bins, features have {config.feat_dim}"
            )
        # the checkpoint must rebuild this encoder without the directory it may have come from
        self.config = dataclasses.replace(config, pretrained=None, encoder=_plain(encoder_config))
        self.family, self.input_kind = family, family.input_kind
        if family is frontends.AST:
            replace_module(encoder, "embeddings", FittedPositions(encoder.embeddings, encoder.config))
        self.ssl = encoder
        width = encoder.config.hidden_size
        self.head = HEADS[config.head](width, config.head_dim, config.out_dim)
        self.embed_dim = config.out_dim
        self.tuner_sites = family.sites("ssl")
        self.adapter_sites = family.adapter_sites("ssl")

    def prepare_training(self) -> None:
        """Called once tuners are attached: with `finetune: tuners` only tuners and head train."""
        if self.config.finetune == "tuners":
            freeze(self, keep=["head"])
        else:
            for param in self.parameters():
                param.requires_grad_(True)

    def train(self, mode: bool = True) -> SSLModel:
        super().train(mode)
        if self.config.finetune == "tuners":
            frozen_train(self.ssl, mode)
        return self

    def forward(self, feats: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if self.input_kind == "wav":
            frames, mask = self._wav2vec2(feats, lengths)
        else:
            frames, mask = self._ast(feats)
        return self.head(frames, mask)

    def _wav2vec2(self, feats: torch.Tensor, lengths: torch.Tensor | None):
        if feats.dim() != 3 or feats.shape[-1] != 1:
            raise AudioError(f"wav2vec2 input: expected a waveform [batch, samples, 1], got {tuple(feats.shape)}")
        wav = feats[..., 0]
        n = wav.shape[1]
        lengths = torch.full((wav.shape[0],), n, device=wav.device) if lengths is None else lengths.to(wav.device)
        valid = torch.arange(n, device=wav.device)[None] < lengths[:, None]
        # zero mean, unit variance over each utterance's valid samples (wav2vec2's feature extractor)
        count = lengths.clamp(min=1)[:, None].to(wav.dtype)
        mean = (wav * valid).sum(1, keepdim=True) / count
        var = (((wav - mean) * valid) ** 2).sum(1, keepdim=True) / count
        wav = (wav - mean) / torch.sqrt(var + 1e-7) * valid
        # no attention mask: padded batches only occur at evaluation, which scores one clip at a time
        frames = self.ssl(wav).last_hidden_state
        out_lengths = self.ssl._get_feat_extract_output_lengths(lengths).clamp(min=1, max=frames.shape[1])
        mask = torch.arange(frames.shape[1], device=wav.device)[None] < out_lengths[:, None]
        return frames, mask

    def _ast(self, feats: torch.Tensor):
        cfg = self.ssl.config
        if feats.dim() != 3 or feats.shape[-1] != cfg.num_mel_bins:
            raise AudioError(
                f"AST input: expected log-mels [batch, frames, {cfg.num_mel_bins}], got {tuple(feats.shape)}"
            )
        if feats.shape[1] < cfg.patch_size:
            raise AudioError(f"AST input: {feats.shape[1]} frames is shorter than one patch ({cfg.patch_size})")
        x = (feats - _INT16_LOG_POWER - AST_MEAN) / (2 * AST_STD)
        frames = self.ssl(x).last_hidden_state
        return frames, torch.ones(frames.shape[:2], dtype=torch.bool, device=frames.device)


class FittedPositions(nn.Module):
    """AST's embeddings with the position grid interpolated along time to the input's patch count
    (bilinear, as AST itself does from ImageNet's grid to AudioSet's), not cut or dropped; an input
    of the checkpoint's `max_length` uses the grid unchanged."""

    base_layer: Any  # transformers ASTEmbeddings

    def __init__(self, base_layer: Any, config: Any):
        super().__init__()
        self.base_layer = base_layer
        self.patch, self.stride = config.patch_size, config.time_stride
        self.grid = base_layer.get_shape(config)  # (frequency, time) patches of the checkpoint

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.base_layer
        patches = emb.patch_embeddings(x)
        batch = x.shape[0]
        tokens = torch.cat([emb.cls_token.expand(batch, -1, -1), emb.distillation_token.expand(batch, -1, -1)], dim=1)
        return emb.dropout(torch.cat([tokens, patches], dim=1) + self.positions(x.shape[1]))

    def positions(self, frames: int) -> torch.Tensor:
        table = self.base_layer.position_embeddings
        freq, time = self.grid
        new_time = (frames - self.patch) // self.stride + 1
        if new_time == time:
            return table
        grid = table[:, 2:].reshape(1, freq, time, -1).permute(0, 3, 1, 2)  # [1, D, F, T]
        grid = nn.functional.interpolate(grid, size=(freq, new_time), mode="bilinear", align_corners=False)
        return torch.cat([table[:, :2], grid.permute(0, 2, 3, 1).reshape(1, freq * new_time, -1)], dim=1)


def _plain(value: Any) -> Any:
    """Plain Python data (weights-only checkpoints hold nothing else)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def ssl(**options: Any) -> SSLModel:
    return SSLModel(SSLConfig(**options))
