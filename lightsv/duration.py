"""Duration-aware scores: a cosine score and how much audio made it, mapped to a log-likelihood ratio.

    cal = duration.fit(scores, labels, test_seconds, enroll_seconds, trials="dev lists")
    cal.llr(0.42, test_seconds=1.0)          # natural-log LLR, target vs non-target
    write_calibration("model.pt", {**old, "duration": cal.as_dict()})

A raw cosine means different things at different durations: a 1 s test clip's target and non-target
scores overlap far more than a 10 s clip's, so one threshold is too strict for long clips and too
lax for short ones. This is linear logistic regression with the durations as "quality measures"
(the BOSARIS/FoCal recipe): the LLR is linear in the score, and both the score's weight and the
offset move with the log-durations of the two sides::

    llr = w0 + s * (w1 + w2 log t + w4 log e) + w3 log t + w5 log e

Why this and not per-duration Gaussians: a stream is scored at every duration, not at a few, and
one smooth function of log-duration interpolates (and, clamped to the fitted range, extrapolates)
without binning; six weights fit stably from a few thousand trials, and the fit is discriminative,
so it needs no assumption about the score distributions' shapes. Targets and non-targets are
weighted to equal total weight, so the output is an LLR (prior-free), not a posterior log-odds.

Durations are clamped to the range seen in calibration: the weights say nothing outside it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from lightsv.errors import CheckpointError, ScoresError

KIND = "logistic-log-duration"
FEATURES = ("1", "s", "s*log_t", "log_t", "s*log_e", "log_e")
_KEYS = ("kind", "features", "weights", "test_range", "enroll_range", "enroll_seconds", "far_llr")
#: Ridge on the weights: keeps the fit finite on separable toy data and barely moves it on real lists.
L2 = 1e-6


@dataclass(frozen=True)
class DurationCalibration:
    """Weights of the LLR model above; durations in seconds, clamped to the fitted ranges."""

    weights: tuple[float, ...]
    test_range: tuple[float, float]
    enroll_range: tuple[float, float]
    #: Used when the caller does not know how much audio the enrollment held (the store does not
    #: record it): the median enrollment duration of the calibration trials.
    enroll_seconds: float
    #: LLR thresholds at false-accept rates on the pooled calibration trials {str(far): llr}.
    far_llr: dict[str, float] = field(default_factory=dict)
    notes: dict = field(default_factory=dict)

    def _logs(self, test_seconds, enroll_seconds):
        t = np.clip(np.asarray(test_seconds, dtype=np.float64), *self.test_range)
        e = self.enroll_seconds if enroll_seconds is None else enroll_seconds
        e = np.clip(np.asarray(e, dtype=np.float64), *self.enroll_range)
        return np.log(t), np.log(e)

    def slope_offset(self, test_seconds, enroll_seconds=None):
        """(slope, offset) with ``llr = offset + slope * score`` at these durations."""
        w = self.weights
        lt, le = self._logs(test_seconds, enroll_seconds)
        return w[1] + w[2] * lt + w[4] * le, w[0] + w[3] * lt + w[5] * le

    def llr(self, score, test_seconds, enroll_seconds=None):
        """Log-likelihood ratio (natural log) of ``score`` from ``test_seconds`` against an enrollment
        of ``enroll_seconds`` (default: the calibration's typical enrollment). Arrays broadcast."""
        slope, offset = self.slope_offset(test_seconds, enroll_seconds)
        out = offset + slope * np.asarray(score, dtype=np.float64)
        return float(out) if np.ndim(out) == 0 else out

    def score_at(self, llr: float, test_seconds: float, enroll_seconds=None) -> float:
        """The cosine score whose LLR is ``llr`` at these durations (the per-duration threshold)."""
        slope, offset = self.slope_offset(test_seconds, enroll_seconds)
        return float((llr - offset) / slope)

    def llr_threshold(self, far: float | None) -> float:
        """0 (the Bayes decision at equal priors and costs) for the EER operating point (``far=None``),
        else the calibrated LLR threshold at false-accept rate ``far``."""
        if far is None:
            return 0.0
        matches = [v for k, v in self.far_llr.items() if float(k) == far]
        if not matches:
            have = ", ".join(f"far={k}" for k in self.far_llr) or "none"
            raise CheckpointError(f"the duration calibration has no LLR threshold at far={far:g} (it has: {have})")
        return float(matches[0])

    def as_dict(self) -> dict:
        return {
            "kind": KIND,
            "features": list(FEATURES),
            "weights": list(self.weights),
            "test_range": list(self.test_range),
            "enroll_range": list(self.enroll_range),
            "enroll_seconds": self.enroll_seconds,
            "far_llr": dict(self.far_llr),
            **self.notes,
        }

    @classmethod
    def from_dict(cls, data, source: str = "model") -> DurationCalibration:
        """Read ``calibration["duration"]`` back; a malformed one is a CheckpointError naming ``source``."""
        try:
            if data.get("kind") != KIND or list(data.get("features", [])) != list(FEATURES):
                raise ValueError(f"kind {data.get('kind')!r} with features {data.get('features')!r}")
            weights = tuple(float(w) for w in data["weights"])
            test_range = tuple(float(x) for x in data["test_range"])
            enroll_range = tuple(float(x) for x in data["enroll_range"])
            values = [*weights, *test_range, *enroll_range, float(data["enroll_seconds"])]
            far_llr = {str(k): float(v) for k, v in (data.get("far_llr") or {}).items()}
            if len(weights) != len(FEATURES) or len(test_range) != 2 or len(enroll_range) != 2:
                raise ValueError("wrong number of weights or range ends")
            if not all(math.isfinite(v) for v in values) or min(*test_range, *enroll_range) <= 0:
                raise ValueError("non-finite weights or non-positive durations")
            if test_range[0] > test_range[1] or enroll_range[0] > enroll_range[1]:
                raise ValueError("a duration range runs backwards")
            if not all(0 < float(k) < 1 and math.isfinite(v) for k, v in far_llr.items()):
                raise ValueError(f"far_llr needs rates in (0, 1) and finite LLRs, got {far_llr}")
        except (AttributeError, KeyError, TypeError, ValueError) as err:
            raise CheckpointError(f"{source}: bad duration calibration ({err})") from None
        notes = {k: v for k, v in data.items() if k not in _KEYS}
        cal = cls(weights, test_range, enroll_range, float(data["enroll_seconds"]), far_llr, notes)
        _check_increasing(cal, CheckpointError, source)
        return cal


def design(scores, test_seconds, enroll_seconds) -> np.ndarray:
    """Feature matrix [N, 6] in the order of FEATURES (durations already clamped)."""
    s = np.asarray(scores, dtype=np.float64)
    lt = np.log(np.asarray(test_seconds, dtype=np.float64))
    le = np.log(np.asarray(enroll_seconds, dtype=np.float64))
    s, lt, le = np.broadcast_arrays(s, lt, le)
    return np.stack([np.ones_like(s), s, s * lt, lt, s * le, le], axis=1)


def fit(scores, labels, test_seconds, enroll_seconds, *, fars=(0.01, 0.001), **notes) -> DurationCalibration:
    """Fit the LLR model on scored trials (``labels`` 1 target, 0 non-target) with the seconds of
    audio behind each side. ``fars``: false-accept rates that get an LLR threshold (pooled over the
    trials' durations; rates the list cannot resolve are left out)."""
    from lightsv import metrics

    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels)
    t = np.asarray(test_seconds, dtype=np.float64)
    e = np.asarray(enroll_seconds, dtype=np.float64)
    if not (s.shape == y.shape == t.shape == e.shape) or s.ndim != 1:
        raise ScoresError("scores, labels, test_seconds and enroll_seconds must be 1-D and of one length")
    if not (np.isfinite(s).all() and np.isfinite(t).all() and np.isfinite(e).all()):
        raise ScoresError("scores and durations must be finite")
    if (t <= 0).any() or (e <= 0).any():
        raise ScoresError("durations must be positive")
    n_target = int(np.count_nonzero(y == 1))
    if n_target == 0 or n_target == y.size or not np.isin(y, (0, 1)).all():
        raise ScoresError("labels must be 0/1 with both targets and non-targets")
    test_range = (float(t.min()), float(t.max()))
    enroll_range = (float(e.min()), float(e.max()))
    start = np.zeros(len(FEATURES))
    start[1] = 1.0
    weights = fit_llr(design(s, t, e), y, start)
    cal = DurationCalibration(
        tuple(float(w) for w in weights), test_range, enroll_range, float(np.median(e)), {}, dict(notes)
    )
    _check_increasing(cal, ScoresError, "these trials")
    llrs = cal.llr(s, t, e)
    n_non = y.size - n_target
    far_llr = {str(far): metrics.threshold_at_far(llrs, y, far) for far in fars if n_non * far >= 1}
    return DurationCalibration(cal.weights, test_range, enroll_range, cal.enroll_seconds, far_llr, dict(notes))


def fit_llr(x: np.ndarray, labels: np.ndarray, start: np.ndarray | None = None) -> np.ndarray:
    """Weights ``w`` with ``x @ w`` an LLR: linear logistic regression on the rows of ``x`` (labels 1
    target, 0 non-target), targets and non-targets at equal total weight, ridge ``L2``."""
    from scipy.optimize import minimize

    y = np.asarray(labels)
    n_target = int(np.count_nonzero(y == 1))
    # Equal total weight per class: the fitted log-odds are then an LLR, not a posterior.
    weight = np.where(y == 1, 0.5 / n_target, 0.5 / (y.size - n_target))
    sign = np.where(y == 1, 1.0, -1.0)

    def loss(w):
        z = sign * (x @ w)
        value = float(weight @ np.logaddexp(0.0, -z)) + L2 * float(w @ w)
        grad = -(x.T @ (weight * sign * _sigmoid(-z))) + 2 * L2 * w
        return value, grad

    result = minimize(loss, np.zeros(x.shape[1]) if start is None else start, jac=True, method="L-BFGS-B")
    if not np.isfinite(result.x).all():
        raise ScoresError(f"the calibration did not converge ({result.message})")
    return result.x


def _check_increasing(cal: DurationCalibration, error: type[Exception], source: str) -> None:
    # A higher cosine must mean a higher LLR everywhere in range, else thresholds do not invert.
    # The slope is linear in the log-durations, so its corners bound it.
    corners = [(t, e) for t in cal.test_range for e in cal.enroll_range]
    if min(float(cal.slope_offset(t, e)[0]) for t, e in corners) <= 0:
        raise error(f"{source}: the duration calibration's LLR does not increase with the score everywhere in range")


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))
