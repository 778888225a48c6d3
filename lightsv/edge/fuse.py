"""Export-time fusion of the transformation module's K narrow copies into one wide block.

A block behind the transformation module (:class:`lightsv.transform.Transformed`, split, not shared)
runs K narrow copies one after the other, so its exported graph holds K copies of every operator.
At these widths an operator's fixed cost in onnxruntime outweighs its arithmetic, so the copies
cost far more than their MACs. :func:`fuse` builds, for export only, a copy of the model in which
each such block runs once on all subsets side by side ([B, K*C, ...], subset k in channels
k*C..(k+1)*C-1, as the copies' outputs are concatenated):

- every layer that owns parameters becomes the K copies' layers concatenated: a convolution with
  K times the groups, a batch norm over all channels, a linear layer as a K-group 1x1 convolution,
  a PReLU with each copy's slopes over its own channels;
- the block's own code runs unchanged on the wide tensor, with its channel-structure operators
  (``chunk``, ``split``, ``cat`` along dim 1, e.g. Res2Net's chunks and attentive pooling's
  [x, mean, std]) redirected to act within each subset (:class:`PerSubset`);
- the fusion in front of the block hands over one tensor instead of K (``PartitionFusion.joined``).

No block type is special-cased, so what this cannot express is found by checking: each fused block is
compared with its K-copy loop on the real inputs of a probe run, and any block that differs (or owns
a layer not listed above, such as a GRU) keeps the loop. Training, checkpoints and model ids never see
any of this: the fused copy exists only while the graph is traced.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from lightsv.transform import Transformed


class Unfusable(Exception):
    """A block whose K copies cannot run as one wide block."""


def _cat(tensors: Sequence[Any]) -> torch.Tensor:
    """The K copies' parameters (or buffers) of one layer end to end along the output channels."""
    return torch.cat([t.detach() for t in tensors], dim=0)


def _conv(copies: list[nn.Module], name: str) -> nn.Module:
    first = copies[0]
    assert isinstance(first, nn.modules.conv._ConvNd)
    if first.padding_mode != "zeros" or any(not isinstance(c, type(first)) for c in copies):
        raise Unfusable(f"{name}: padding mode {first.padding_mode}")
    k = len(copies)
    layer: Callable[..., nn.Module] = type(first)
    wide = layer(
        first.in_channels * k,
        first.out_channels * k,
        first.kernel_size,
        first.stride,
        first.padding,
        first.dilation,
        first.groups * k,
        first.bias is not None,
    )
    wide.weight.data = _cat([c.weight for c in copies])
    if first.bias is not None:
        wide.bias.data = _cat([c.bias for c in copies])
    return wide


def _batchnorm(copies: list[nn.Module], name: str) -> nn.Module:
    first = copies[0]
    assert isinstance(first, nn.modules.batchnorm._BatchNorm)
    if not first.track_running_stats:
        raise Unfusable(f"{name}: batch norm without running statistics")
    wide = type(first)(first.num_features * len(copies), first.eps, first.momentum, first.affine, True)
    for attr in ("weight", "bias", "running_mean", "running_var"):
        if getattr(first, attr) is not None:
            getattr(wide, attr).data = _cat([getattr(c, attr) for c in copies])
    return wide.eval()


class GroupedLinear(nn.Module):
    """K linear layers side by side on [..., K*in] -> [..., K*out]: one K-group 1x1 convolution."""

    def __init__(self, copies: list[nn.Linear]):
        super().__init__()
        self.groups = len(copies)
        self.weight = nn.Parameter(_cat([c.weight for c in copies]).unsqueeze(-1))
        bias = None if copies[0].bias is None else _cat([c.bias for c in copies])
        self.bias = None if bias is None else nn.Parameter(bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise Unfusable("a linear layer on more than two dimensions")
        y = nn.functional.conv1d(x.unsqueeze(-1), self.weight, self.bias, groups=self.groups)
        return y.squeeze(-1)


def _linear(copies: list[nn.Module], name: str) -> nn.Module:
    return GroupedLinear(copies)  # type: ignore[arg-type]


class WidePReLU(nn.Module):
    """K PReLUs side by side: each copy's slope (one, or one per channel) over its own channels."""

    def __init__(self, copies: list[nn.PReLU]):
        super().__init__()
        self.groups = len(copies)
        self.weight = nn.Parameter(torch.stack([c.weight.detach() for c in copies]))  # [K, 1 or C]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        width = x.shape[1] // self.groups
        slopes = self.weight.expand(self.groups, width) if self.weight.shape[1] == 1 else self.weight
        return nn.functional.prelu(x, slopes.reshape(-1))


def _prelu(copies: list[nn.Module], name: str) -> nn.Module:
    return WidePReLU(copies)  # type: ignore[arg-type]


#: How each layer type that owns parameters is widened; any other one makes a block unfusable.
WIDENERS: dict[type, Callable[[list[nn.Module], str], nn.Module]] = {
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.BatchNorm1d: _batchnorm,
    nn.BatchNorm2d: _batchnorm,
    nn.Linear: _linear,
    nn.PReLU: _prelu,
}


def widen(copies: Sequence[nn.Module]) -> nn.Module:
    """One block doing the work of ``copies`` (identical in structure) on their inputs side by side."""
    wide = copy.deepcopy(copies[0])
    named = [dict(c.named_modules()) for c in copies]
    for name, module in list(copies[0].named_modules()):
        if next(module.parameters(recurse=False), None) is None and not list(module.buffers(recurse=False)):
            continue
        maker = WIDENERS.get(type(module))
        if maker is None:
            raise Unfusable(f"{name or 'the block'}: {type(module).__name__}")
        layer = maker([n[name] for n in named], name)
        if not name:
            return layer
        parent, _, attr = name.rpartition(".")
        setattr(wide.get_submodule(parent) if parent else wide, attr, layer)
    return wide


def _channel_dim(t: torch.Tensor, dim: int) -> bool:
    return t.dim() >= 2 and dim % t.dim() == 1


class PerSubset(TorchFunctionMode):
    """Inside a wide block, ``chunk``/``split``/``cat`` along the channel axis (dim 1) act within each of
    the K subsets, as they did in each narrow copy; everything else runs as written."""

    def __init__(self, subsets: int):
        super().__init__()
        self.k = subsets

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.chunk, torch.Tensor.chunk):
            return self._chunk(*args, **kwargs)
        if func in (torch.split, torch.Tensor.split):
            return self._split(*args, **kwargs)
        if func in (torch.cat, torch.concat, torch.concatenate):
            return self._concat(*args, **kwargs)
        return func(*args, **kwargs)

    def _width(self, t: torch.Tensor) -> int:
        if t.shape[1] % self.k:
            raise Unfusable(f"{t.shape[1]} channels are not {self.k} subsets")
        return t.shape[1] // self.k

    def _pieces(self, t: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
        # [B, K*C, ...] -> [B, K, C, ...] (a view), split the C axis, each piece back to [B, K*c, ...]
        width = self._width(t)
        if sum(sizes) != width:
            raise Unfusable(f"split sizes {sizes} of {width} channels")
        return [p.flatten(1, 2) for p in t.unflatten(1, (self.k, width)).split(sizes, dim=2)]

    def _chunk(self, t: torch.Tensor, chunks: int, dim: int = 0):
        if not _channel_dim(t, dim):
            return t.chunk(chunks, dim)
        width = self._width(t)
        size = -(-width // chunks)
        return self._pieces(t, [min(size, width - s) for s in range(0, width, size)])

    def _split(self, t: torch.Tensor, split_size_or_sections, dim: int = 0):
        if not _channel_dim(t, dim):
            return t.split(split_size_or_sections, dim)
        width = self._width(t)
        if isinstance(split_size_or_sections, int):
            n = split_size_or_sections
            return self._pieces(t, [min(n, width - s) for s in range(0, width, n)])
        return self._pieces(t, list(split_size_or_sections))

    def _concat(self, tensors, dim: int = 0, **kwargs):
        tensors = list(tensors)
        if kwargs or not tensors or not _channel_dim(tensors[0], dim):
            return torch.cat(tensors, dim, **kwargs)
        # each [B, K*c_i, ...] as [B, K, c_i, ...], joined on the c axis: subset k's pieces side by side
        return torch.cat([t.unflatten(1, (self.k, self._width(t))) for t in tensors], dim=2).flatten(1, 2)


class FusedTransformed(nn.Module):
    """A split :class:`Transformed` block run as one wide block; the same outputs as its K-copy loop."""

    def __init__(self, source: Transformed):
        super().__init__()
        self.fusion = copy.copy(source.fusion)
        self.fusion.mean_as_matmul = True
        self.subsets = len(source.blocks)
        self.block = widen(list(source.blocks))
        self.accepts = source.accepts

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        joined = self.fusion.joined(x, kwargs.get("mask"))
        if self.accepts is not None:
            kwargs = {k: v for k, v in kwargs.items() if k in self.accepts}
        with PerSubset(self.subsets):
            return self.block(joined, *args, **kwargs)


def _close(got: Any, want: Any) -> bool:
    if not (torch.is_tensor(got) and torch.is_tensor(want)) or got.shape != want.shape:
        return False
    scale = max(1.0, float(want.abs().max())) if want.numel() else 1.0
    return bool(((got - want).abs().max() <= 1e-5 * scale).item()) if want.numel() else True


def fuse(model: nn.Module, *probe: torch.Tensor) -> nn.Module:
    """A copy of ``model`` (eval mode) whose split transformation-module blocks run fused; ``model`` is not
    changed. ``probe``: inputs of one forward pass of ``model``, on which every fused block must give its
    loop's output (else that block keeps the loop)."""
    model = copy.deepcopy(model).eval()
    targets = {name: m for name, m in model.named_modules() if isinstance(m, Transformed) and len(m.blocks) > 1}
    if not targets:
        return model
    seen: dict[str, tuple] = {}
    hooks = [
        m.register_forward_pre_hook(
            lambda mod, args, kwargs, name=name: seen.setdefault(name, (args, kwargs)) and None, with_kwargs=True
        )
        for name, m in targets.items()
    ]
    try:
        with torch.no_grad():
            model(*probe)
    finally:
        for hook in hooks:
            hook.remove()
    for name, block in targets.items():
        if name not in seen:
            continue
        try:
            fused = FusedTransformed(block).eval()
            args, kwargs = seen[name]
            with torch.no_grad():
                ok = _close(fused(*args, **kwargs), block(*args, **kwargs))
        except Exception:  # Unfusable, or a wide block that fails to run at all: either way, keep the loop
            ok = False
        if ok:
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, attr, fused)
    return model
