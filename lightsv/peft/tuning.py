"""What all tuners share: the `Tuner` wrapper base, target names, freezing, merging, train mode."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from torch import nn

from lightsv.errors import ConfigError
from lightsv.tuners import replace_module


class Tuner(nn.Module):
    """A module that takes the place of `base_layer` and adds trainable parameters around it.

    Everything a tuner owns outside `base_layer` is tuner state: it trains while the base is frozen.
    """

    base_layer: nn.Module
    linear = False  # True for tuners whose `merge` folds them exactly into the base layer

    def merge(self) -> nn.Module:
        """The base layer with this tuner folded in (only linear tuners can)."""
        raise ConfigError(f"{type(self).__name__} is not linear in its input: it cannot be merged into its base layer")


def resolve_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Regex patterns for `targets`: a name among the model's `tuner_sites` stands for its pattern."""
    sites: dict[str, str] = getattr(model, "tuner_sites", {})
    items = [targets] if isinstance(targets, str) else list(targets)
    if not items:
        raise ConfigError("a tuner needs at least one target")
    return [sites.get(t, t) for t in items]


def _is_lora(module: nn.Module) -> bool:
    return any(name.startswith("lora_") for name, _ in module.named_children())


def tuner_parameters(model: nn.Module) -> Iterator[tuple[str, nn.Parameter]]:
    """(name, parameter) of every tuner parameter: ours (outside `base_layer`) and peft's LoRA ones."""
    seen: set[int] = set()
    for prefix, module in model.named_modules():
        if isinstance(module, Tuner) or _is_lora(module):
            for name, param in module.named_parameters():
                if name.startswith("base_layer.") or id(param) in seen:
                    continue
                seen.add(id(param))
                yield f"{prefix}.{name}" if prefix else name, param


def freeze(model: nn.Module, keep: Iterable[str] = ()) -> int:
    """Freeze every parameter except tuner parameters and those of the submodules named in `keep`
    (e.g. a head); returns the number of trainable parameters left."""
    for param in model.parameters():
        param.requires_grad_(False)
    trainable = [p for _, p in tuner_parameters(model)]
    for name in keep:
        trainable += list(model.get_submodule(name).parameters())
    for param in trainable:
        param.requires_grad_(True)
    return sum(p.numel() for p in {id(p): p for p in trainable}.values())


def tuner_modules(model: nn.Module) -> Iterator[nn.Module]:
    """Modules that belong to tuners (not their base layers): the parts that train in train mode."""
    for module in model.modules():
        if isinstance(module, Tuner):
            for name, child in module.named_children():
                if name != "base_layer":
                    yield from child.modules()
        elif _is_lora(module):
            for name, child in module.named_children():
                if name.startswith("lora_"):
                    yield from child.modules()


def frozen_train(model: nn.Module, mode: bool) -> None:
    """Train mode for tuner modules only: the frozen encoder keeps eval behaviour (no dropout, no
    statistics updates), since its weights do not learn and its pretrained behaviour is what counts."""
    model.train(False)
    if mode:
        for module in tuner_modules(model):
            module.training = True


def merge(model: nn.Module, strict: bool = True) -> nn.Module:
    """Fold every LoRA into its base layer and unwrap it (peft's merge), in place; returns `model`.

    Non-linear tuners (adapters, prompts, prefixes) cannot be folded: with `strict` they are refused
    before anything changes, otherwise they stay as they are. The LoRA records leave `model.tuners`:
    the merged weights are plain base weights now, which a checkpoint must not replay LoRA onto.
    """
    names = [n for n, m in model.named_modules() if isinstance(m, Tuner) or _is_lora(m)]
    fixed = [n for n in names if isinstance(model.get_submodule(n), Tuner) and not model.get_submodule(n).linear]
    if fixed and strict:
        kind = type(model.get_submodule(fixed[0])).__name__
        raise ConfigError(f"{fixed[0]}: a {kind} is not linear and cannot be merged; nothing merged")
    for name in names:
        if name in fixed:
            continue
        module: Any = model.get_submodule(name)
        if isinstance(module, Tuner):
            replace_module(model, name, module.merge())
        else:
            module.merge()  # peft's LoraLayer.merge: W += scale * B @ A
            replace_module(model, name, module.get_base_layer())
    setattr(model, "tuners", [r for r in getattr(model, "tuners", []) if r.get("kind") != "lora"])  # noqa: B010
    return model
