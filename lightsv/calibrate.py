"""Decision thresholds from scored trials, stored in the checkpoint that made the scores.

    cal = calibration(scores, labels, trials="vox1-O")   # EER threshold + thresholds at target FARs
    write_calibration("model.pt", cal)                   # into extra["calibration"]; other extra kept

:class:`lightsv.Verifier` reads ``extra["calibration"]`` back as its threshold. The thresholds hold
for the score type they were computed on (``score_norm``: raw cosine ``"none"`` or ``"asnorm"``), the
model, and trials like the calibration trials (language, channel, duration): recalibrate for a new
domain rather than trusting the numbers.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightsv import metrics
from lightsv.checkpoint import update_extra
from lightsv.errors import ConfigError

#: False-accept rates that get a threshold unless others are asked for.
DEFAULT_FARS = (0.01, 0.001)
SCORE_NORMS = ("none", "asnorm")


def calibration(
    scores, labels, *, fars=DEFAULT_FARS, trials: str | None = None, score_norm: str = "none", **notes
) -> dict:
    """The calibration dict for ``scores`` (higher = same speaker) with ``labels`` (1 target, 0 non-target).

    Keys: ``eer_threshold``; ``far_thresholds`` {str(far): threshold} (the lowest threshold whose
    false-accept rate on these trials is at most ``far``; +inf when only rejecting everything gets
    there); ``eer`` (percent), ``min_dcf`` (p_target 0.01), ``n_target``, ``n_nontarget``,
    ``trials`` (a name for the trial list), ``score_norm``, and any ``notes``.
    """
    if score_norm not in SCORE_NORMS:
        raise ConfigError(f"score_norm must be one of {', '.join(SCORE_NORMS)}, got {score_norm!r}")
    labels = np.asarray(labels)
    n_target = int(np.count_nonzero(labels == 1))
    return {
        "eer_threshold": metrics.eer_threshold(scores, labels),
        "far_thresholds": {str(float(far)): metrics.threshold_at_far(scores, labels, float(far)) for far in fars},
        "eer": metrics.eer(scores, labels),
        "min_dcf": metrics.min_dcf(scores, labels, p_target=0.01),
        "n_target": n_target,
        "n_nontarget": int(labels.size - n_target),
        "trials": trials,
        "score_norm": score_norm,
        **notes,
    }


def write_calibration(path: str | os.PathLike, calibration: dict, *, out: str | os.PathLike | None = None) -> Path:
    """Store ``calibration`` as ``extra["calibration"]`` of the checkpoint at ``path`` (or a copy at ``out``).

    The checkpoint is validated first and replaced atomically; weights and every other ``extra``
    key are kept as they were.
    """
    if not isinstance(calibration, dict) or "eer_threshold" not in calibration:
        raise ConfigError("calibration must be a dict with at least 'eer_threshold' (see calibration())")
    return update_extra(path, out, calibration=dict(calibration))
