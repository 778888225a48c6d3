"""One mechanism that attaches every lightsv tuner to an existing model, the way peft does.

A tuner is a module that takes the place of a target layer or block: `inject` finds the targets by
name pattern, builds the replacement from the original and `setattr`s it on the parent. What was
injected is recorded on the model (`model.tuners`), so a checkpoint can replay it before loading
weights. Tuners that keep the original as `base_layer` (LoRA, adapters) freeze it and can be
`merge`d back into it before export.
"""

import re
from collections.abc import Callable, Iterable

from torch import nn

from lightsv.errors import ConfigError

# kind -> function(model, **options) that applies that tuner; filled by the tuner modules.
TUNERS: dict[str, Callable[..., nn.Module]] = {}


def register(kind: str):
    def wrap(fn):
        TUNERS[kind] = fn
        return fn

    return wrap


def find_targets(model: nn.Module, targets: str | Iterable[str]) -> list[str]:
    """Names of the outermost modules whose full dotted name matches one of the regex `targets`."""
    patterns = [re.compile(t) for t in ([targets] if isinstance(targets, str) else targets)]
    found: list[str] = []
    for name, _ in model.named_modules():
        if not name or any(name.startswith(outer + ".") for outer in found):
            continue
        if any(p.fullmatch(name) for p in patterns):
            found.append(name)
    if not found:
        raise ConfigError(f"no module of {type(model).__name__} matches targets {[p.pattern for p in patterns]}")
    return found


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)


def inject(
    model: nn.Module,
    targets: str | Iterable[str],
    make: Callable[[str, nn.Module], nn.Module],
    record: dict | None = None,
) -> list[str]:
    """Replace each target module by `make(name, module)`; returns the replaced names.

    `record` (kind and options) is appended to `model.tuners` so the same call can be replayed.
    """
    names = find_targets(model, targets)
    for name in names:
        replace_module(model, name, make(name, model.get_submodule(name)))
    if record is not None:
        # a plain attribute, not a submodule: the checkpoint stores it to replay the calls
        setattr(model, "tuners", [*getattr(model, "tuners", []), record])  # noqa: B010
    return names


def replay(model: nn.Module, records: Iterable[dict]) -> nn.Module:
    """Apply recorded tuners in order (used when a checkpoint is loaded)."""
    for record in records:
        kind = record.get("kind")
        if kind not in TUNERS:
            raise ConfigError(f"unknown tuner kind {kind!r}; known: {', '.join(sorted(TUNERS))}")
        model = TUNERS[kind](model, **record.get("options", {}))
    return model
