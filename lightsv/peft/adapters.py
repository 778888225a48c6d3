"""Bottleneck and conformer adapters (Houlsby et al. 2019; Pfeiffer et al. 2021; Cappellazzo et al.
2023, arXiv 2312.03694), attached by wrapping a transformer's attention or feed-forward sublayer.

An adapter adds `scale * adapter(input)` to the sublayer's output. `mode="sequential"` feeds it the
sublayer's own output (the adapter sits after the sublayer, with its own skip connection);
`mode="parallel"` feeds it the sublayer's input (the adapter runs beside the sublayer). Its last
layer starts at zero, so a freshly attached adapter leaves the model exactly as it was.
`placement="pfeiffer"` adapts the feed-forward sublayers only, `"houlsby"` attention and feed-forward.
"""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from lightsv.errors import ConfigError
from lightsv.peft.tuning import Tuner, resolve_targets
from lightsv.tuners import inject, register


@dataclass(frozen=True)
class Site:
    """Where a model's sublayers are, and what their inputs mean, for adapters.

    pattern: regex of the sublayer modules. source: the argument holding the sublayer's input (what a
    parallel adapter reads). residual: the argument holding a residual the module adds to its own
    output itself (ViT/AST's `output` block does), which a sequential adapter must not see.
    """

    pattern: str
    source: str = "hidden_states"
    residual: str | None = None


class BottleneckAdapter(nn.Module):
    """down-projection, nonlinearity, up-projection (zero-initialised)."""

    def __init__(self, dim: int, reduction: int):
        super().__init__()
        hidden = _hidden(dim, reduction)
        self.down, self.act, self.up = nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(x)))


class ConformerAdapter(nn.Module):
    """The conformer convolution module as an adapter: pointwise conv, GLU, depthwise conv, norm,
    activation, pointwise conv (zero-initialised). Sees local context along time, which a bottleneck
    adapter (frame by frame) cannot."""

    def __init__(self, dim: int, reduction: int, kernel: int = 31):
        super().__init__()
        if kernel % 2 == 0:
            raise ConfigError(f"conformer adapter kernel must be odd (same length out), got {kernel}")
        hidden = _hidden(dim, reduction)
        self.pointwise_in = nn.Conv1d(dim, 2 * hidden, 1)
        self.glu = nn.GLU(dim=1)
        self.depthwise = nn.Conv1d(hidden, hidden, kernel, padding=kernel // 2, groups=hidden)
        # a layer norm over channels: batch statistics would mix utterances (and batches are tiny)
        self.norm = nn.GroupNorm(1, hidden)
        self.act = nn.SiLU()
        self.pointwise_out = nn.Conv1d(hidden, dim, 1)
        nn.init.zeros_(self.pointwise_out.weight)
        nn.init.zeros_(self.pointwise_out.bias)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.glu(self.pointwise_in(x.transpose(1, 2)))
        y = self.pointwise_out(self.act(self.norm(self.depthwise(y))))
        return y.transpose(1, 2)


ADAPTERS = {"bottleneck": BottleneckAdapter, "conformer": ConformerAdapter}
PLACEMENTS = {"pfeiffer": ("ffn",), "houlsby": ("attention", "ffn")}
MODES = ("parallel", "sequential")


def _hidden(dim: int, reduction: int) -> int:
    if not isinstance(reduction, int) or isinstance(reduction, bool) or not 1 <= reduction <= dim:
        raise ConfigError(f"adapter reduction rate must be an integer in [1, {dim}], got {reduction!r}")
    return max(1, dim // reduction)


class Adapted(Tuner):
    """A sublayer with an adapter beside it (parallel) or after it (sequential)."""

    def __init__(self, base_layer: nn.Module, adapter: nn.Module, mode: str, scale: float, site: Site):
        super().__init__()
        self.base_layer, self.adapter, self.mode, self.scale = base_layer, adapter, mode, scale
        self.source, self.residual = site.source, site.residual
        inner = base_layer
        while isinstance(inner, Adapted):  # stacked adapters pass the sublayer's arguments through
            inner = inner.base_layer
        self.signature = inspect.signature(inner.forward)
        for name in (site.source, site.residual):
            if name is not None and name not in self.signature.parameters:
                raise ConfigError(f"{type(inner).__name__}.forward has no argument {name!r} to adapt")

    def forward(self, *args, **kwargs):
        out = self.base_layer(*args, **kwargs)
        main = out[0] if isinstance(out, tuple) else out
        if self.mode == "parallel":
            delta = self.adapter(self._argument(self.source, args, kwargs))
        else:
            residual = self._argument(self.residual, args, kwargs) if self.residual else None
            delta = self.adapter(main if residual is None else main - residual)
        main = main + self.scale * delta
        return (main, *out[1:]) if isinstance(out, tuple) else main

    def _argument(self, name: str, args: tuple, kwargs: dict) -> torch.Tensor:
        return self.signature.bind_partial(*args, **kwargs).arguments[name]


def _width(module: nn.Module, name: str) -> int:
    """The model width at a sublayer: the output size of its last linear layer."""
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"{name}: cannot tell the width of {type(module).__name__} (no linear layer)")
    return linears[-1].out_features


@register("adapter")
def apply(
    model: nn.Module,
    kind: str = "bottleneck",
    placement: str = "pfeiffer",
    mode: str = "parallel",
    reduction: int = 16,
    scale: float = 1.0,
    kernel: int = 31,
    targets: str | Iterable[str] | None = None,
) -> nn.Module:
    """Attach adapters to `model` in place; returns `model`.

    The sublayers come from the model's `adapter_sites` for the placement (`lightsv.ssl` models
    declare them), or from `targets` (regexes; the adapter then reads the sublayer's first argument).
    """
    if kind not in ADAPTERS:
        raise ConfigError(f"unknown adapter kind {kind!r}; choose one of {', '.join(ADAPTERS)}")
    if placement not in PLACEMENTS:
        raise ConfigError(f"unknown adapter placement {placement!r}; choose one of {', '.join(PLACEMENTS)}")
    if mode not in MODES:
        raise ConfigError(f"unknown adapter mode {mode!r}; choose one of {', '.join(MODES)}")
    if targets is not None:
        sites = [Site(p, source="") for p in resolve_targets(model, targets)]
    else:
        declared: dict[str, Site] = getattr(model, "adapter_sites", {})
        if not declared:
            raise ConfigError(f"{type(model).__name__} declares no adapter_sites; pass targets=")
        sites = [declared[s] for s in PLACEMENTS[placement]]

    def make(site: Site):
        def build(name: str, module: nn.Module) -> nn.Module:
            if not site.source:  # explicit targets: the first argument is the input
                first = next(iter(inspect.signature(module.forward).parameters), None)
                if first is None:
                    raise ConfigError(f"{name}: {type(module).__name__}.forward takes no input to adapt")
                site_here = Site(site.pattern, source=first)
            else:
                site_here = site
            width = _width(module, name)
            adapter = (
                ConformerAdapter(width, reduction, kernel)
                if kind == "conformer"
                else BottleneckAdapter(width, reduction)
            )
            return Adapted(module, adapter, mode, scale, site_here)

        return build

    options = {
        "kind": kind,
        "placement": placement,
        "mode": mode,
        "reduction": reduction,
        "scale": scale,
        "kernel": kernel,
        "targets": None if targets is None else ([targets] if isinstance(targets, str) else list(targets)),
    }
    for i, site in enumerate(sites):
        inject(model, site.pattern, make(site), record={"kind": "adapter", "options": options} if i == 0 else None)
    return model
