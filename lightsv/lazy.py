"""Package attributes that load on first use (PEP 562), so importing a package stays cheap: the
torch-free runtime imports `lightsv` and `lightsv.spoof` without torch, and `lightsv.train.config`
without the training loop."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable


def lazy_names(package: str, names: dict[str, str]) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """`(__getattr__, __dir__)` for `package`: `names` maps each public name to the module that defines
    it (the module itself when the name is the module's last part). A loaded name is stored in the
    package, so later look-ups do not come back here."""
    namespace = sys.modules[package].__dict__

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        module = importlib.import_module(names[name])
        value = module if module.__name__.endswith("." + name) else getattr(module, name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(names))

    return __getattr__, __dir__
