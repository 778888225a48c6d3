"""Spoofing countermeasures: protocols, the binary objective's data, CM evaluation (EER, t-DCF), the
shipped countermeasure and spoofing-aware verification.

A countermeasure is any lightsv model with one output (the logit of bona fide; higher = more bona
fide, as in ASVspoof), trained by `lightsv.train` when the config has a `spoof:` section.
Names load on first use, so the torch-free runtime can use `Countermeasure` without importing torch.
"""

import importlib

_NAMES = {
    "BONAFIDE": "data",
    "SPOOF": "data",
    "Entry": "data",
    "read_protocol": "data",
    "asv_scores": "evaluate",
    "cm_scores": "evaluate",
    "evaluate_cm": "evaluate",
    "evaluate_scores": "evaluate",
    "Countermeasure": "countermeasure",
    "SpoofAwareVerification": "sasv",
}


def __getattr__(name: str):
    if name not in _NAMES:
        raise AttributeError(f"module 'lightsv.spoof' has no attribute {name!r}")
    return getattr(importlib.import_module(f"lightsv.spoof.{_NAMES[name]}"), name)


__all__ = sorted(_NAMES)
