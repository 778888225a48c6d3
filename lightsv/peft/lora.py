"""LoRA (Hu et al., 2021) on any linear layers of a model, by peft itself.

`apply` resolves the targets with lightsv's own rules (regexes or the model's `tuner_sites`; an
unknown target is a ConfigError before peft is called), then lets `peft.inject_adapter_in_model` put
its LoRA layers in place (each keeps the original as `base_layer`) and records the call on the model
so a checkpoint replays it. `lightsv.peft.merge` folds the LoRA weights into the base before export.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any

from torch import nn

from lightsv.errors import ConfigError
from lightsv.peft.tuning import resolve_targets
from lightsv.tuners import find_targets, register


@register("lora")
def apply(
    model: nn.Module,
    r: int = 4,
    alpha: float = 8.0,
    dropout: float = 0.0,
    targets: str | Iterable[str] = ("q", "v"),
) -> nn.Module:
    """Attach LoRA of rank `r` (scale `alpha / r`) to every target linear layer of `model`, in place."""
    if not isinstance(r, int) or isinstance(r, bool) or r < 1:
        raise ConfigError(f"LoRA rank r must be a positive integer, got {r!r}")
    if not 0.0 <= dropout < 1.0:
        raise ConfigError(f"LoRA dropout must lie in [0, 1), got {dropout!r}")
    targets = [targets] if isinstance(targets, str) else list(targets)
    names = find_targets(model, resolve_targets(model, targets))
    wrong = [n for n in names if not isinstance(model.get_submodule(n), nn.Linear)]
    if wrong:
        raise ConfigError(
            f"LoRA here wraps linear layers; {wrong[0]} is {type(model.get_submodule(wrong[0])).__name__}"
        )
    try:
        peft: Any = importlib.import_module("peft")  # optional: the peft extra
    except ImportError:
        raise ConfigError("LoRA needs peft: pip install -c constraints.txt 'lightsv[peft]'") from None

    tuners = list(getattr(model, "tuners", []))
    config = peft.LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=names)
    # peft marks only adapter weights trainable; which weights train is lightsv.peft.freeze's decision
    trainable = {name: p.requires_grad for name, p in model.named_parameters()}
    peft.inject_adapter_in_model(config, model)
    for name, param in model.named_parameters():
        original = name.replace(".base_layer.", ".")
        param.requires_grad_(trainable.get(original, trainable.get(name, True)))
    record = {"kind": "lora", "options": {"r": r, "alpha": alpha, "dropout": dropout, "targets": targets}}
    setattr(model, "tuners", [*tuners, record])  # noqa: B010  (a plain attribute, not a submodule)
    return model
