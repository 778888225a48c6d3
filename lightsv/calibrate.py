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
import warnings
from pathlib import Path

import numpy as np

from lightsv import metrics
from lightsv.checkpoint import update_extra
from lightsv.errors import ConfigError

#: False-accept rates that get a threshold unless others are asked for.
DEFAULT_FARS = (0.01, 0.001)
SCORE_NORMS = ("none", "asnorm")
#: Non-target trials wanted per unit of 1/far: a threshold at far=0.001 from fewer than 10,000
#: non-targets rests on fewer than 10 false accepts and moves a lot with the next trial list.
WELL_RESOLVED = 10


def resolvable(far: float, n_nontarget: int) -> bool:
    """Whether ``n_nontarget`` trials can tell false-accept rate ``far`` apart at all (one false accept <= far)."""
    return n_nontarget * far >= 1.0


def calibration(
    scores, labels, *, fars=DEFAULT_FARS, trials: str | None = None, score_norm: str = "none", **notes
) -> dict:
    """The calibration dict for ``scores`` (higher = same speaker) with ``labels`` (1 target, 0 non-target).

    Keys: ``eer_threshold``; ``far_thresholds`` {str(far): threshold} (the lowest threshold whose
    false-accept rate on these trials is at most ``far``; +inf when only rejecting everything gets
    there); ``eer`` (percent), ``min_dcf`` (p_target 0.01), ``n_target``, ``n_nontarget``,
    ``trials`` (a name for the trial list), ``score_norm``, and any ``notes``.

    A list with fewer than ``1 / far`` non-targets cannot resolve ``far`` (its threshold would just be
    the top non-target score, the same for every such rate): ConfigError. Fewer than
    ``WELL_RESOLVED / far`` gives a warning, since the threshold then rests on a handful of trials.
    """
    if score_norm not in SCORE_NORMS:
        raise ConfigError(f"score_norm must be one of {', '.join(SCORE_NORMS)}, got {score_norm!r}")
    labels = np.asarray(labels)
    n_target = int(np.count_nonzero(labels == 1))
    n_nontarget = int(labels.size - n_target)
    fars = [float(far) for far in fars]
    unresolved = [far for far in fars if not resolvable(far, n_nontarget)]
    if unresolved:
        raise ConfigError(
            f"{n_nontarget} non-target trials cannot resolve a false-accept rate of "
            f"{', '.join(f'{far:g}' for far in unresolved)} (that needs at least "
            f"{int(np.ceil(1 / min(unresolved)))}); score a longer trial list or ask for fewer rates (fars=)"
        )
    for far in fars:
        if n_nontarget * far < WELL_RESOLVED:
            warnings.warn(
                f"the threshold at far={far:g} rests on {n_nontarget * far:.1f} expected false accepts among "
                f"{n_nontarget} non-target trials; {int(np.ceil(WELL_RESOLVED / far))} or more make it stable",
                stacklevel=2,
            )
    return {
        "eer_threshold": metrics.eer_threshold(scores, labels),
        "far_thresholds": {str(far): metrics.threshold_at_far(scores, labels, far) for far in fars},
        "eer": metrics.eer(scores, labels),
        "min_dcf": metrics.min_dcf(scores, labels, p_target=0.01),
        "n_target": n_target,
        "n_nontarget": n_nontarget,
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
