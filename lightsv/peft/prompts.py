"""Deep prompt tuning and prefix tuning: learned tokens that every layer attends to.

Prompt tuning (deep, as VPT-deep): each wrapped layer gets `length` learned tokens prepended to its
input and dropped from its output, so every layer has its own prompts. Prefix tuning (Li and Liang,
2021): each wrapped self-attention gets `length` learned keys and values prepended, so attention also
looks at them; the sequence itself keeps its length.

Neither is an identity at initialisation, whatever the initial values: the real tokens' attention
weights are a softmax over the real and the added positions, so any added position takes some
weight away from the real ones (only keys of minus infinity would take none, and those could not
learn). Both start small (std 0.02) so the change starts small.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from lightsv.errors import ConfigError
from lightsv.peft.tuning import Tuner, resolve_targets
from lightsv.tuners import inject, register

INIT_STD = 0.02


def _length(length: int) -> int:
    if not isinstance(length, int) or isinstance(length, bool) or length < 1:
        raise ConfigError(f"prompt/prefix length must be a positive integer, got {length!r}")
    return length


def _width(module: nn.Module, name: str) -> int:
    for m in module.modules():
        if isinstance(m, nn.LayerNorm):
            return int(m.normalized_shape[-1])
        if isinstance(m, nn.Linear):
            return m.in_features
    raise ConfigError(f"{name}: cannot tell the width of {type(module).__name__} (no layer norm or linear layer)")


def _extend_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    # an additive [B, 1, Tq, Tk] mask: the prompts are visible to and see every position
    if mask is None or mask.dim() != 4:
        if mask is not None:
            raise ConfigError(f"prompt tuning handles additive [B, 1, T, T] attention masks, got {tuple(mask.shape)}")
        return None
    return nn.functional.pad(mask, (length, 0, length, 0))


class Prompted(Tuner):
    """A transformer layer whose input carries `length` learned tokens in front."""

    def __init__(self, base_layer: nn.Module, length: int, dim: int):
        super().__init__()
        self.base_layer = base_layer
        self.prompts = nn.Parameter(torch.randn(length, dim) * INIT_STD)

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs):
        n = self.prompts.shape[0]
        x = torch.cat([self.prompts.expand(hidden_states.shape[0], -1, -1), hidden_states], dim=1)
        if "attention_mask" in kwargs:
            kwargs["attention_mask"] = _extend_mask(kwargs["attention_mask"], n)
        out = self.base_layer(x, *args, **kwargs)
        if isinstance(out, tuple):
            return (out[0][:, n:], *out[1:])
        return out[:, n:]


class Prefixed(Tuner):
    base_layer: Any  # a transformers attention module: q_proj, k_proj, v_proj, scaling, ...

    """A self-attention module whose keys and values have `length` learned positions in front.

    transformers' attention modules size keys by the query's length, so the prefix cannot be added by
    wrapping the key and value projections; this wrapper runs the base module's own projections and
    attends with torch's scaled_dot_product_attention instead (checked against the base in the tests).
    """

    def __init__(self, base_layer: Any, length: int, name: str):
        super().__init__()
        missing = [a for a in ("q_proj", "k_proj", "v_proj", "head_dim", "scaling") if not hasattr(base_layer, a)]
        out = getattr(base_layer, "o_proj", getattr(base_layer, "out_proj", None))
        heads = getattr(base_layer, "num_heads", getattr(base_layer, "num_attention_heads", None))
        if missing or out is None or heads is None:
            raise ConfigError(
                f"prefix tuning wraps transformers self-attention modules (q/k/v/out projections), "
                f"{name} is {type(base_layer).__name__}"
            )
        self.base_layer = base_layer
        self.out_proj, self.heads = out, int(heads)
        dim = base_layer.k_proj.out_features
        self.prefix_keys = nn.Parameter(torch.randn(length, dim) * INIT_STD)
        self.prefix_values = nn.Parameter(torch.randn(length, dim) * INIT_STD)

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs):
        return self.attend(hidden_states, attention_mask, prefix=True), None

    def attend(self, x: torch.Tensor, mask: torch.Tensor | None, prefix: bool) -> torch.Tensor:
        base, (batch, length, _) = self.base_layer, x.shape
        q, k, v = base.q_proj(x), base.k_proj(x), base.v_proj(x)
        if prefix:
            k = torch.cat([self.prefix_keys.expand(batch, -1, -1), k], dim=1)
            v = torch.cat([self.prefix_values.expand(batch, -1, -1), v], dim=1)
            if mask is not None:
                mask = nn.functional.pad(mask, (self.prefix_keys.shape[0], 0))
        q, k, v = (t.reshape(batch, t.shape[1], self.heads, -1).transpose(1, 2) for t in (q, k, v))
        dropout = getattr(base, "dropout", getattr(base, "attention_dropout", 0.0))
        dropout = dropout if isinstance(dropout, float) and self.training else 0.0
        y = nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout, scale=base.scaling)
        return self.out_proj(y.transpose(1, 2).reshape(batch, length, -1))


def _targets(model: nn.Module, targets, default: str, what: str) -> list[str]:
    if targets is None:
        if default not in getattr(model, "tuner_sites", {}):
            raise ConfigError(f"{type(model).__name__} declares no '{default}' tuner site; pass targets= for {what}")
        targets = [default]
    return [targets] if isinstance(targets, str) else list(targets)


@register("prompt")
def apply_prompts(model: nn.Module, length: int = 10, targets: str | Iterable[str] | None = None) -> nn.Module:
    """Deep prompt tuning: `length` learned tokens at every target layer (default: the `layer` site)."""
    length = _length(length)
    targets = _targets(model, targets, "layer", "prompt tuning")
    inject(
        model,
        resolve_targets(model, targets),
        lambda name, layer: Prompted(layer, length, _width(layer, name)),
        record={"kind": "prompt", "options": {"length": length, "targets": targets}},
    )
    return model


@register("prefix")
def apply_prefix(model: nn.Module, length: int = 10, targets: str | Iterable[str] | None = None) -> nn.Module:
    """Prefix tuning: `length` learned keys and values in every target self-attention module
    (default: the model's `attention` site)."""
    length = _length(length)
    targets = _targets(model, targets, "attention", "prefix tuning")
    inject(
        model,
        resolve_targets(model, targets),
        lambda name, attention: Prefixed(attention, length, name),
        record={"kind": "prefix", "options": {"length": length, "targets": targets}},
    )
    return model
