"""lightsv.duration: the duration-aware LLR calibration, on synthetic scores with a known answer."""

import numpy as np
import pytest

from lightsv.duration import DurationCalibration, fit
from lightsv.errors import CheckpointError, ScoresError

SECONDS = (0.25, 0.5, 1.0, 2.0, 4.0)


def synthetic(n=600, seed=0):
    """Scores whose classes separate more with test duration: N(+-m(t), 0.1) with m growing in log t.

    Equal variances, so the true LLR is linear in the score: 2 m(t) s / 0.1**2 - 0, centred at 0.3."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in SECONDS:
        m = 0.05 + 0.03 * np.log2(t / 0.25)
        for label in (0, 1):
            s = 0.3 + (m if label else -m) + 0.1 * rng.standard_normal(n)
            rows.append((s, np.full(n, label), np.full(n, t), rng.uniform(2, 8, n)))
    return tuple(np.concatenate(c) for c in zip(*rows, strict=True))


def true_llr(s, t):
    m = 0.05 + 0.03 * np.log2(t / 0.25)
    return 2 * m * (s - 0.3) / 0.01


def test_fit_recovers_the_duration_dependent_llr():
    s, y, t, e = synthetic()
    cal = fit(s, y, t, e)
    for seconds in SECONDS:
        for score in (0.2, 0.3, 0.45):
            assert cal.llr(score, seconds) == pytest.approx(true_llr(score, seconds), rel=0.1, abs=0.2)
    # the score's weight grows with duration: a longer clip's cosine is stronger evidence
    assert cal.slope_offset(4.0)[0] > 2 * cal.slope_offset(0.25)[0]


def test_llr_decisions_beat_one_raw_threshold_across_durations():
    s, y, t, e = synthetic(seed=1)
    cal = fit(s, y, t, e)
    test = synthetic(seed=2)
    llr = cal.llr(test[0], test[2], test[3])

    # one raw threshold (here the best single one) against llr >= 0, by the worst duration's error
    def worst(accept):
        return max(
            (np.mean(~accept[(test[2] == d) & (test[1] == 1)]) + np.mean(accept[(test[2] == d) & (test[1] == 0)])) / 2
            for d in SECONDS
        )

    raw_best = min(worst(test[0] >= th) for th in np.linspace(0.2, 0.4, 81))
    assert worst(llr >= 0) <= raw_best + 0.01


def test_threshold_inverts_llr_and_far_thresholds_hold_on_the_fit_data():
    s, y, t, e = synthetic()
    cal = fit(s, y, t, e, fars=(0.01,))
    for seconds in (0.3, 1.0, 3.0):
        th = cal.score_at(1.5, seconds, 5.0)
        assert cal.llr(th, seconds, 5.0) == pytest.approx(1.5)
    assert cal.llr_threshold(None) == 0.0
    llr = cal.llr(s, t, e)
    assert np.mean(llr[y == 0] >= cal.llr_threshold(0.01)) <= 0.01
    with pytest.raises(CheckpointError, match="no LLR threshold at far=0.05"):
        cal.llr_threshold(0.05)


def test_durations_are_clamped_to_the_fitted_range():
    s, y, t, e = synthetic()
    cal = fit(s, y, t, e)
    assert cal.llr(0.4, 100.0) == cal.llr(0.4, 4.0)
    assert cal.llr(0.4, 0.01) == cal.llr(0.4, 0.25)


def test_round_trip_and_malformed_dicts_are_checkpoint_errors():
    s, y, t, e = synthetic()
    cal = fit(s, y, t, e, trials="synthetic")
    back = DurationCalibration.from_dict(cal.as_dict())
    assert back == cal and back.notes == {"trials": "synthetic"}
    bad = cal.as_dict()
    for key, value in [
        ("weights", [1.0]),
        ("weights", ["x"] * 6),
        ("kind", "gaussian"),
        ("test_range", [0, 1]),
        ("test_range", [8.0, 0.5]),  # backwards: every duration would clamp to one value
        ("enroll_range", [8.0, 0.5]),
        ("far_llr", {"abc": 1.0}),
        ("far_llr", {"0.01": float("nan")}),
        ("far_llr", {"1.5": 2.0}),
    ]:
        with pytest.raises(CheckpointError, match="bad duration calibration"):
            DurationCalibration.from_dict({**bad, key: value}, "m.pt")
    with pytest.raises(CheckpointError, match="does not increase"):
        DurationCalibration.from_dict({**bad, "weights": [0, -1, 0, 0, 0, 0]})


def test_fit_refuses_bad_input():
    s, y, t, e = synthetic(n=10)
    with pytest.raises(ScoresError, match="one length"):
        fit(s[:-1], y, t, e)
    with pytest.raises(ScoresError, match="both targets"):
        fit(s, np.ones_like(y), t, e)
    with pytest.raises(ScoresError, match="positive"):
        fit(s, y, t * 0, e)
    with pytest.raises(ScoresError, match="finite"):
        fit(np.where(y == 1, np.nan, s), y, t, e)
