"""Spoofing countermeasures: protocols, the binary objective's data, and CM evaluation (EER, t-DCF).

A countermeasure is any lightsv model with one output (the logit of bona fide; higher = more bona
fide, as in ASVspoof), trained by `lightsv.trainer` when the config has a `spoof:` section.
"""

from lightsv.spoof.data import BONAFIDE, SPOOF, Entry, read_protocol
from lightsv.spoof.evaluate import asv_scores, cm_scores, evaluate_cm

__all__ = ["BONAFIDE", "SPOOF", "Entry", "asv_scores", "cm_scores", "evaluate_cm", "read_protocol"]
