"""Spoofing countermeasures: protocols, the binary objective's data, CM evaluation (EER, t-DCF), the
shipped countermeasure and spoofing-aware verification.

A countermeasure is any lightsv model with one output (the logit of bona fide; higher = more bona
fide, as in ASVspoof), trained by `lightsv.train` when the config has a `spoof:` section.
Names load on first use, so the torch-free runtime can use `Countermeasure` without importing torch.
"""

from lightsv.lazy import lazy_names

_NAMES = {
    "BONAFIDE": "lightsv.spoof.data",
    "SPOOF": "lightsv.spoof.data",
    "Entry": "lightsv.spoof.data",
    "read_protocol": "lightsv.spoof.data",
    "asv_scores": "lightsv.spoof.evaluate",
    "cm_scores": "lightsv.spoof.evaluate",
    "evaluate_cm": "lightsv.spoof.evaluate",
    "evaluate_scores": "lightsv.spoof.evaluate",
    "Countermeasure": "lightsv.spoof.countermeasure",
    "SpoofAwareVerification": "lightsv.spoof.sasv",
}


__getattr__, __dir__ = lazy_names(__name__, _NAMES)

__all__ = sorted(_NAMES)
