"""The transformation module: feature partition and fusion (Li et al., 2023, arXiv 2312.03324).

Before a wrapped block, its input of C channels is split into K subsets of C/K channels. Each subset
is updated with what relates it to the others (a cross-subset mean or attention-pooled summary,
projected by a 1x1 convolution and normalised, joined by element-wise sum, or concatenated with the
subset before the projection). Each updated subset then goes through a narrow copy of the block (all
channel counts divided by K) and the outputs are concatenated. A narrow block costs about 1/K^2 of
the original, so K of them cost about 1/K; one narrow block shared by all subsets also cuts the
parameters by about K^2.

`apply(model, subsets=K, ...)` does this to every target block of an existing model, in place.
"""

import copy
import inspect
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from lightsv.errors import ConfigError
from lightsv.tuners import inject, register, replace_module


def _divide(n: int, k: int, what: str) -> int:
    if n % k:
        raise ConfigError(f"cannot split {what} of {n} channels into {k} subsets")
    return n // k


def _conv(m: nn.modules.conv._ConvNd, k: int, name: str) -> nn.Module:
    depthwise = m.groups > 1 and m.groups == m.in_channels
    layer: Callable[..., nn.Module] = type(m)  # Conv1d or Conv2d, whose signatures differ from _ConvNd's
    return layer(
        _divide(m.in_channels, k, name),
        _divide(m.out_channels, k, name),
        m.kernel_size,
        m.stride,
        m.padding,
        m.dilation,
        _divide(m.groups, k, name) if depthwise else m.groups,
        m.bias is not None,
        m.padding_mode,
    )


def _linear(m: nn.Linear, k: int, name: str) -> nn.Module:
    return nn.Linear(_divide(m.in_features, k, name), _divide(m.out_features, k, name), m.bias is not None)


def _batchnorm(m: nn.modules.batchnorm._BatchNorm, k: int, name: str) -> nn.Module:
    return type(m)(_divide(m.num_features, k, name), m.eps, m.momentum, m.affine, m.track_running_stats)


def _layernorm(m: nn.LayerNorm, k: int, name: str) -> nn.Module:
    *rest, last = m.normalized_shape
    return nn.LayerNorm((*rest, _divide(last, k, name)), m.eps, m.elementwise_affine)


def _rnn(m: nn.RNNBase, k: int, name: str) -> nn.Module:
    layer: Callable[..., nn.Module] = type(m)  # GRU or LSTM, whose signatures differ from RNNBase's
    return layer(
        _divide(m.input_size, k, name),
        _divide(m.hidden_size, k, name),
        num_layers=m.num_layers,
        bias=m.bias,
        batch_first=m.batch_first,
        dropout=m.dropout,
        bidirectional=m.bidirectional,
    )


def _prelu(m: nn.PReLU, k: int, name: str) -> nn.Module:
    return nn.PReLU(1 if m.num_parameters == 1 else _divide(m.num_parameters, k, name))


# Layers whose channel counts a narrow copy divides by K; any other layer that owns parameters
# cannot be narrowed safely, so `narrow` refuses it rather than guessing.
NARROWERS: dict[type, Callable[[Any, int, str], nn.Module]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Linear: _linear,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.LayerNorm: _layernorm,
    nn.GRU: _rnn,
    nn.LSTM: _rnn,
    nn.PReLU: _prelu,
}
_CHANNEL_ATTRS = ("in_channels", "in_features", "input_size", "num_features")


def narrow(block: nn.Module, k: int) -> nn.Module:
    """A freshly initialised copy of `block` with every channel count divided by `k`."""
    block = copy.deepcopy(block)
    for name, module in list(block.named_modules()):
        maker = next((NARROWERS[c] for c in type(module).__mro__ if c in NARROWERS), None)
        if maker is None:
            for attr in _CHANNEL_ATTRS:  # keep wrappers' declared widths true to the narrow copy
                if isinstance(getattr(module, attr, None), int):
                    setattr(module, attr, _divide(getattr(module, attr), k, f"{name or 'block'}.{attr}"))
            if next(module.parameters(recurse=False), None) is not None:
                raise ConfigError(
                    f"cannot narrow {type(module).__name__} at {name or 'the block'}: "
                    "it owns parameters of a layer type the transformation module does not know"
                )
            continue
        narrowed = maker(module, k, name or type(block).__name__)
        if not name:
            return narrowed
        replace_module(block, name, narrowed)
    return block


def input_channels(block: nn.Module) -> int:
    """The channel count a block expects: its own `in_channels`, else that of its first layer."""
    for module in block.modules():
        for attr in _CHANNEL_ATTRS:
            if isinstance(getattr(module, attr, None), int):
                return getattr(module, attr)
    raise ConfigError(f"cannot tell the input channels of {type(block).__name__}; pass in_channels=")


GROUP_WIDTH = 32


def _groups(width: int) -> int:
    # Projections mix channels within groups of about GROUP_WIDTH: a dense C/K x C/K projection would
    # cost more than the narrow block saves on wide inputs (an embedding layer's 5120 features).
    groups = max(1, width // GROUP_WIDTH)
    while width % groups:
        groups -= 1
    return groups


class PartitionFusion(nn.Module):
    """Split [B, C, ...] into K subsets of C/K channels and fuse each with the inter-subset information."""

    def __init__(self, width: int, subsets: int, fusion: str):
        super().__init__()
        self.subsets, self.fusion = subsets, fusion
        groups = _groups(width)
        self.proj = nn.Conv1d(2 * width if fusion == "concat" else width, width, 1, groups=groups, bias=False)
        self.norm = nn.BatchNorm1d(width)
        self.score = nn.Conv1d(width, width, 1, groups=groups, bias=False) if fusion == "pool" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        batch, channels, *rest = x.shape
        return [p.reshape(batch, -1, *rest) for p in self._fuse(x, mask, joined=False).unbind(1)]

    def joined(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """The fused subsets side by side in one tensor shaped like `x` (what `forward`'s list would give
        concatenated), without splitting it: the input of a fused wide block (lightsv.edge.fuse)."""
        return self._fuse(x, mask, joined=True).reshape(x.shape)

    def _fuse(self, x: torch.Tensor, mask: torch.Tensor | None, joined: bool) -> torch.Tensor:
        batch, channels, *rest = x.shape
        flat = x.reshape(batch, channels, -1)
        valid = torch.ones_like(flat[:, :1]) if mask is None else mask.expand(batch, 1, *rest).reshape(batch, 1, -1)
        if joined:  # the same values as the stack below, as a view: no copy, no per-subset ops in an export
            parts = flat.unflatten(1, (self.subsets, -1))
        else:
            parts = torch.stack(flat.chunk(self.subsets, dim=1), dim=1)  # [B, K, C/K, L]
        fused = parts + FUSIONS[self.fusion](self, parts, valid)  # [B, K or 1, C/K, L]
        return fused * valid.unsqueeze(1)

    #: Take the cross-subset mean as a matrix product (the same values) instead of a reduction over the
    #: subset axis, which onnxruntime runs about ten times slower. Set on the copy lightsv.edge.fuse
    #: exports; training keeps the reduction.
    mean_as_matmul = False

    def _mean(self, parts: torch.Tensor, keepdim: bool) -> torch.Tensor:
        if not self.mean_as_matmul:
            return parts.mean(dim=1, keepdim=keepdim)
        batch, k, *rest = parts.shape
        weights = torch.full((1, k), 1.0 / k, dtype=parts.dtype, device=parts.device)
        mean = torch.matmul(weights, parts.reshape(batch, k, -1)).reshape(batch, 1, *rest)
        return mean if keepdim else mean.squeeze(1)

    def _project(self, y: torch.Tensor) -> torch.Tensor:
        return self.norm(self.proj(y))

    def _sum(self, parts, valid):
        # the subsets' mean carries what they share; every subset gets it added back
        return self._project(self._mean(parts, keepdim=False)).unsqueeze(1)

    def _concat(self, parts, valid):
        batch, k, width, length = parts.shape
        joined = torch.cat([parts, self._mean(parts, keepdim=True).expand_as(parts)], dim=2)
        return self._project(joined.reshape(batch * k, 2 * width, length)).reshape(parts.shape)

    def _pool(self, parts, valid):
        # which subset matters for a channel is decided from its time-pooled activation
        pooled = (parts * valid.unsqueeze(1)).sum(-1) / valid.sum(-1, keepdim=True).clamp(min=1)  # [B, K, C/K]
        batch, k, width = pooled.shape
        assert self.score is not None  # built for fusion="pool", the only caller
        scores = self.score(pooled.reshape(batch * k, width, 1)).reshape(batch, k, width, 1)
        summary = (torch.softmax(scores, dim=1) * parts).sum(dim=1)
        return self._project(summary).unsqueeze(1)


FUSIONS = {"sum": PartitionFusion._sum, "concat": PartitionFusion._concat, "pool": PartitionFusion._pool}


class Transformed(nn.Module):
    """A block behind the transformation module: fusion, then K narrow copies (or one shared)."""

    def __init__(self, block: nn.Module, subsets: int, share: bool, fusion: str, in_channels: int | None = None):
        super().__init__()
        channels = in_channels or input_channels(block)
        self.fusion = PartitionFusion(_divide(channels, subsets, type(block).__name__ + " input"), subsets, fusion)
        self.blocks = nn.ModuleList(narrow(block, subsets) for _ in range(1 if share else subsets))
        # Callers may pass keywords meant for other blocks (speechbrain passes `lengths` to anything that
        # is not its own TDNNBlock), so forward only what the wrapped block takes.
        params = inspect.signature(block.forward).parameters.values()
        self.accepts = None if any(p.kind is p.VAR_KEYWORD for p in params) else {p.name for p in params}

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        parts = self.fusion(x, kwargs.get("mask"))
        if self.accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
        if len(self.blocks) > 1:
            return torch.cat([block(p, *args, **kwargs) for block, p in zip(self.blocks, parts, strict=True)], dim=1)
        # One shared block sees all subsets as one batch: K times fewer (larger) ops. Per-row tensors
        # among the block's arguments (masks, lengths) are tiled to match.
        k, batch = len(parts), x.shape[0]
        tile = lambda v: torch.cat([v] * k) if torch.is_tensor(v) and v.dim() and v.shape[0] == batch else v  # noqa: E731
        out = self.blocks[0](torch.cat(parts), *map(tile, args), **{n: tile(v) for n, v in kwargs.items()})
        # [K*B, C, ...] -> [B, K*C, ...], subsets in order. Under torch.export, chunk() on a symbolic
        # batch specialises the batch size (the ONNX file would take one batch size only); the
        # TorchScript tracer (recurrent models) keeps chunk() dynamic but not the reshape.
        if torch.compiler.is_compiling():
            return out.unflatten(0, (k, -1)).transpose(0, 1).flatten(1, 2)
        return torch.cat(out.chunk(k), dim=1)


@register("transform")
def apply(
    model: nn.Module,
    subsets: int = 4,
    share: bool = False,
    fusion: str = "sum",
    targets: str | Iterable[str] | None = None,
    in_channels: int | None = None,
) -> nn.Module:
    """Wrap the target blocks of `model` with the transformation module, in place; returns `model`.

    targets: regex patterns matched against full module names (default: the model's own
    `transform_targets`). share: one narrow block for all subsets instead of K. fusion: "sum"
    (subset + projected cross-subset mean), "concat" (projection of [subset, mean]) or "pool"
    (subset + projected attention-pooled summary of all subsets).
    """
    if not isinstance(subsets, int) or isinstance(subsets, bool) or subsets < 2:
        raise ConfigError(f"subsets must be an integer >= 2, got {subsets!r}")
    if fusion not in FUSIONS:
        raise ConfigError(f"unknown fusion {fusion!r}; choose one of {', '.join(FUSIONS)}")
    targets = targets if targets is not None else getattr(model, "transform_targets", None)
    if targets is None:
        raise ConfigError(f"{type(model).__name__} names no default transform_targets; pass targets=")
    targets = [targets] if isinstance(targets, str) else list(targets)
    options = {"subsets": subsets, "share": share, "fusion": fusion, "targets": targets, "in_channels": in_channels}
    inject(
        model,
        targets,
        lambda name, block: Transformed(block, subsets, share, fusion, in_channels),
        record={"kind": "transform", "options": options},
    )
    return model
