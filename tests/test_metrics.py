"""Tests of lightsv.metrics: hand-worked tiny cases, brute-force references, ties, bad input."""

import math
from fractions import Fraction

import numpy as np
import pytest

from lightsv.errors import ScoresError
from lightsv.metrics import (
    COST_MODEL_2019,
    COST_MODEL_2021,
    TDCF2019Cost,
    TDCF2021Cost,
    det_curve,
    eer,
    eer_change_ci,
    eer_ci,
    eer_threshold,
    min_dcf,
    probit,
    t_dcf,
    threshold_at_far,
)

# Worked by hand below: targets 2, 4, 5 and non-targets 1, 3, in a scrambled order.
SMALL_SCORES = [4.0, 1.0, 5.0, 3.0, 2.0]
SMALL_LABELS = [1, 0, 1, 0, 1]
# threshold:  1    2    3    4    5    inf
# fpr:        1   1/2  1/2   0    0    0
# fnr:        0    0   1/3  1/3  2/3   1


# ----------------------------------------------------------------------------- brute-force references


def brute_rates(tar, non):
    """Every distinct score and +inf as a threshold, rates counted one threshold at a time.

    Exact fractions, so equally-near points stay equal (they do with 150 vs 200 trials).
    """
    rows = []
    for t in sorted(set(np.concatenate([tar, non]).tolist())) + [math.inf]:
        rows.append((t, Fraction(int(np.sum(non >= t)), non.size), Fraction(int(np.sum(tar < t)), tar.size)))
    return rows


def brute_eer(tar, non):
    """Scan for the first point with fnr >= fpr and intersect the segment with the diagonal."""
    rows = brute_rates(tar, non)
    for (_, fa0, fr0), (_, fa1, fr1) in zip(rows, rows[1:], strict=False):
        if fr1 >= fa1:
            # Solve fr0 + s*(fr1-fr0) == fa0 + s*(fa1-fa0) for s.
            s = (fa0 - fr0) / ((fr1 - fr0) - (fa1 - fa0))
            return float(100 * (fa0 + s * (fa1 - fa0)))
    raise AssertionError("fnr never reached fpr")


def classic_eer(tar, non):
    """The common 'argmin |fnr - fpr|, average the two' EER (no interpolation), and its threshold."""
    rows = brute_rates(tar, non)
    t, fa, fr = min(rows, key=lambda r: abs(r[2] - r[1]))
    return float(100 * (fa + fr) / 2), t


def kaldi_min_dcf(scores, labels, p_target, c_miss, c_fa):
    """sid/compute_min_dcf.py from Kaldi (as used by WeSpeaker), transcribed; it splits ties."""
    order = sorted(range(len(scores)), key=lambda i: scores[i])
    labels = [labels[i] for i in order]
    fnrs, fprs = [], []
    for i, lab in enumerate(labels):
        fnrs.append(lab if i == 0 else fnrs[i - 1] + lab)
        fprs.append(1 - lab if i == 0 else fprs[i - 1] + 1 - lab)
    n_tar = sum(labels)
    n_non = len(labels) - n_tar
    fnrs = [x / n_tar for x in fnrs]
    fprs = [1 - x / n_non for x in fprs]
    c_det = min(c_miss * fr * p_target + c_fa * fa * (1 - p_target) for fr, fa in zip(fnrs, fprs, strict=True))
    return c_det / min(c_miss * p_target, c_fa * (1 - p_target))


def brute_min_dcf(tar, non, p_target, c_miss, c_fa):
    costs = [c_miss * fr * p_target + c_fa * fa * (1 - p_target) for _, fa, fr in brute_rates(tar, non)]
    return float(min(costs)) / min(c_miss * p_target, c_fa * (1 - p_target))


def brute_t_dcf(bona, spoof, tar, non, spoof_asv, version):
    """The ASVspoof eval-package formulas, the ASV threshold found by a plain argmin."""
    _, thr = classic_eer(tar, non)
    pfa_asv, pmiss_asv = np.mean(non >= thr), np.mean(tar < thr)
    pmiss_spoof_asv = np.mean(spoof_asv < thr)
    best = math.inf
    for _, pfa_cm, pmiss_cm in brute_rates(bona, spoof):
        pfa_cm, pmiss_cm = float(pfa_cm), float(pmiss_cm)
        if version == "2019":
            m = COST_MODEL_2019
            C1 = m.p_tar * (m.c_miss_cm - m.c_miss_asv * pmiss_asv) - m.p_non * m.c_fa_asv * pfa_asv
            C2 = m.c_fa_cm * m.p_spoof * (1 - pmiss_spoof_asv)
            best = min(best, (C1 * pmiss_cm + C2 * pfa_cm) / min(C1, C2))
        else:
            m = COST_MODEL_2021
            C0 = m.p_tar * m.c_miss * pmiss_asv + m.p_non * m.c_fa * pfa_asv
            C1 = m.p_tar * m.c_miss - C0
            C2 = m.p_spoof * m.c_fa_spoof * (1 - pmiss_spoof_asv)
            best = min(best, (C0 + C1 * pmiss_cm + C2 * pfa_cm) / (C0 + min(C1, C2)))
    return best


def random_trials(seed, n=300, decimals=None):
    rng = np.random.default_rng(seed)
    labels = (rng.random(n) < 0.3).astype(int)
    labels[:2] = [0, 1]  # both classes present whatever the draw
    scores = rng.normal(size=n) + 1.5 * labels
    if decimals is not None:
        scores = np.round(scores, decimals)  # coarse rounding: many tied scores, across classes
    return scores, labels


# ----------------------------------------------------------------------------- hand-worked values


def test_det_curve_small_case():
    fpr, fnr, thr = det_curve(SMALL_SCORES, SMALL_LABELS)
    np.testing.assert_allclose(thr, [1, 2, 3, 4, 5, np.inf])
    np.testing.assert_allclose(fpr, [1, 0.5, 0.5, 0, 0, 0])
    np.testing.assert_allclose(fnr, [0, 0, 1 / 3, 1 / 3, 2 / 3, 1])


def test_eer_small_case_interpolates_along_roc_segment():
    # The crossing lies between threshold 3 (fpr 1/2, fnr 1/3) and 4 (fpr 0, fnr 1/3): fnr stays
    # 1/3 along that segment, so the EER is exactly 1/3 (the un-interpolated average gives 41.7).
    assert eer(SMALL_SCORES, SMALL_LABELS) == pytest.approx(100 / 3)
    assert eer_threshold(SMALL_SCORES, SMALL_LABELS) == 3.0  # |1/3-1/2| < |1/3-0|


def test_eer_with_a_cross_class_tie():
    # Targets 1, 2, 2 and non-targets 2, 3. Thresholds 2 (fpr 1, fnr 1/3) and 3 (fpr 1/2, fnr 1):
    # 1 - s/2 == 1/3 + 2s/3 gives s = 4/7 and EER 5/7.
    assert eer([2, 1, 3, 2, 2], [1, 1, 0, 0, 1]) == pytest.approx(500 / 7)
    assert eer_threshold([2, 1, 3, 2, 2], [1, 1, 0, 0, 1]) == 3.0


def test_eer_equal_rates_at_a_point():
    # Targets .35 .8, non-targets .1 .4: at threshold .4 both rates are 1/2.
    scores, labels = [0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]
    assert eer(scores, labels) == pytest.approx(50.0)
    assert eer_threshold(scores, labels) == 0.4


@pytest.mark.parametrize(
    "kwargs, expected",
    [
        # cost .5 fnr + .5 fpr, minimum 1/6 at threshold 4, normaliser 1/2.
        (dict(p_target=0.5), 1 / 3),
        # cost .01 fnr + .99 fpr, minimum .01/3 at threshold 4, normaliser .01.
        (dict(p_target=0.01), 1 / 3),
        # cost 2.5 fnr + .75 fpr, minimum .375 at threshold 2, normaliser .75.
        (dict(p_target=0.25, c_miss=10, c_fa=1), 0.5),
    ],
)
def test_min_dcf_small_case(kwargs, expected):
    assert min_dcf(SMALL_SCORES, SMALL_LABELS, **kwargs) == pytest.approx(expected)


def test_min_dcf_includes_accept_everything():
    # Reversed scores with p_target .9: accepting everything costs .1, the normaliser, so 1.0.
    # Kaldi's list has no accept-all point and would report (.9*.5 + .1)/.1 = 5.5 here.
    scores, labels = [1, 2, 3, 4], [1, 1, 0, 0]
    assert min_dcf(scores, labels, p_target=0.9) == pytest.approx(1.0)
    assert kaldi_min_dcf(scores, labels, 0.9, 1, 1) == pytest.approx(5.5)


@pytest.mark.parametrize(
    "far, expected",
    [(1.0, 1.0), (0.5, 2.0), (0.49, 4.0), (0.0, 4.0)],
)
def test_threshold_at_far_small_case(far, expected):
    assert threshold_at_far(SMALL_SCORES, SMALL_LABELS, far) == expected


def test_threshold_at_far_can_only_reject_everything():
    assert threshold_at_far([1.0, 2.0], [1, 0], 0.0) == math.inf
    with pytest.raises(ScoresError, match="far"):
        threshold_at_far(SMALL_SCORES, SMALL_LABELS, 1.5)


def test_probit_is_finite_at_the_ends():
    z = probit(np.array([0.0, 0.5, 1.0, 0.8413447460685429]))
    assert np.isfinite(z).all()
    assert z[0] < -4.5 and z[2] > 4.5 and z[0] == pytest.approx(-z[2])
    np.testing.assert_allclose(z[1], 0.0, atol=1e-12)
    np.testing.assert_allclose(z[3], 1.0, rtol=1e-9)


# ----------------------------------------------------------------------------- brute-force agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("decimals", [None, 1])
def test_matches_brute_force(seed, decimals):
    scores, labels = random_trials(seed, decimals=decimals)
    tar, non = scores[labels == 1], scores[labels == 0]

    fpr, fnr, thr = det_curve(scores, labels)
    rows = brute_rates(tar, non)
    np.testing.assert_array_equal(thr, [r[0] for r in rows])
    np.testing.assert_allclose(fpr, [float(r[1]) for r in rows], atol=1e-12)
    np.testing.assert_allclose(fnr, [float(r[2]) for r in rows], atol=1e-12)
    assert (np.diff(fpr) <= 0).all() and (np.diff(fnr) >= 0).all()

    assert eer(scores, labels) == pytest.approx(brute_eer(tar, non), abs=1e-9)
    # The non-interpolated EER sits at one end of the crossing segment, so within one ROC step.
    classic, classic_thr = classic_eer(tar, non)
    step = 100 * max(1 / tar.size, 1 / non.size) * (1 if decimals is None else 10)
    assert abs(eer(scores, labels) - classic) <= step
    assert eer_threshold(scores, labels) == classic_thr

    for p in (0.01, 0.05):
        assert min_dcf(scores, labels, p_target=p) == pytest.approx(brute_min_dcf(tar, non, p, 1, 1), abs=1e-12)
        if decimals is None:  # Kaldi splits ties, so it only agrees where there are none
            assert min_dcf(scores, labels, p_target=p) == pytest.approx(
                kaldi_min_dcf(scores.tolist(), labels.tolist(), p, 1, 1), abs=1e-12
            )

    for far in (0.0, 0.01, 0.1, 0.5):
        expected = min(t for t, fa, _ in rows if fa <= far)
        assert threshold_at_far(scores, labels, far) == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("version", ["2019", "2021"])
def test_t_dcf_matches_brute_force(seed, version):
    rng = np.random.default_rng(100 + seed)
    bona, spoof = rng.normal(1.0, 1.0, 150), rng.normal(-0.5, 1.0, 200)
    tar, non, spoof_asv = rng.normal(2.0, 1.0, 150), rng.normal(-1.0, 1.0, 200), rng.normal(1.0, 1.0, 100)
    got = t_dcf(bona, spoof, tar, non, spoof_asv, version=version)
    assert got == pytest.approx(brute_t_dcf(bona, spoof, tar, non, spoof_asv, version), abs=1e-12)
    assert 0.0 < got < 1.0


# ----------------------------------------------------------------------------- ties and extremes


def test_ties_are_never_split():
    scores, labels = random_trials(3, decimals=0)  # a handful of distinct values
    perm = np.random.default_rng(0).permutation(scores.size)
    assert eer(scores[perm], labels[perm]) == eer(scores, labels)
    assert min_dcf(scores[perm], labels[perm]) == min_dcf(scores, labels)
    assert len(det_curve(scores, labels)[2]) == np.unique(scores).size + 1


@pytest.mark.parametrize("labels", [[0, 1], [1, 0, 0, 1, 1], [True, False, False]])
def test_identical_scores(labels):
    scores = [0.3] * len(labels)
    assert eer(scores, labels) == pytest.approx(50.0)
    assert min_dcf(scores, labels) == pytest.approx(1.0)
    fpr, fnr, thr = det_curve(scores, labels)
    np.testing.assert_array_equal(thr, [0.3, np.inf])
    np.testing.assert_array_equal(fpr, [1, 0])
    np.testing.assert_array_equal(fnr, [0, 1])


def test_perfectly_separated_and_reversed():
    scores, labels = [0.1, 0.2, 0.3, 0.7, 0.8], [0, 0, 0, 1, 1]
    assert eer(scores, labels) == 0.0
    assert min_dcf(scores, labels) == 0.0
    assert eer_threshold(scores, labels) == 0.7
    flipped = [1 - x for x in labels]
    assert eer(scores, flipped) == pytest.approx(100.0)
    assert min_dcf(scores, flipped) == pytest.approx(1.0)


def test_bool_and_list_inputs_agree():
    scores, labels = random_trials(4, n=60)
    expected = eer(scores, labels)
    assert eer(scores.tolist(), labels.astype(bool)) == expected
    assert eer(scores.astype(np.float32), labels.astype(float).tolist()) == pytest.approx(expected)


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "scores, labels, message",
    [
        ([0.1, 0.2], [1, 1], "no non-target"),
        ([0.1, 0.2], [0, 0], "no target"),
        ([0.1, float("nan"), 0.3], [0, 1, 1], "NaN"),
        ([0.1, float("inf"), 0.3], [0, 1, 1], "infinite"),
        ([0.1, 0.2, 0.3], [0, 1], "3 scores but 2 labels"),
        ([], [], "empty"),
        ([0.1, 0.2], [0, 2], "labels must be 0"),
        ([0.1, 0.2], ["target", "nontarget"], "labels must be 0"),
        ([[0.1, 0.2]], [[0, 1]], "one-dimensional"),
    ],
)
@pytest.mark.parametrize("fn", [eer, eer_threshold, min_dcf, det_curve, eer_ci])
def test_bad_input_raises_scores_error(fn, scores, labels, message):
    with pytest.raises(ScoresError, match=message):
        fn(scores, labels)


def test_scores_error_is_a_value_error():
    with pytest.raises(ValueError):
        eer([1.0], [1])


# ----------------------------------------------------------------------------- bootstrap CI


def test_eer_change_ci_is_paired():
    scores, labels = random_trials(5, n=400)
    # the same scores after a transform that does nothing: no change, and every replicate agrees
    assert eer_change_ci(scores, scores, labels, n_boot=100) == (0.0, 0.0, 0.0)
    # a transform that shrinks the targets' margin: the change is the EERs' difference, its interval
    # holds it, and pairing makes it narrower than either EER's own interval
    after = scores - 0.5 * labels
    change, low, high = eer_change_ci(scores, after, labels, n_boot=300, seed=3)
    assert change == pytest.approx(eer(after, labels) - eer(scores, labels))
    assert 0 < low < change < high
    own = eer_ci(after, labels, n_boot=300, seed=3)
    assert high - low < own[1] - own[0]
    with pytest.raises(ScoresError, match="same trials"):
        eer_change_ci(scores, scores[:-1], labels)
    with pytest.raises(ScoresError, match="NaN"):
        eer_change_ci(scores, np.where(labels, np.nan, scores), labels)


def test_eer_ci_contains_point_and_is_reproducible():
    scores, labels = random_trials(5, n=400)
    point = eer(scores, labels)
    low, high = eer_ci(scores, labels, n_boot=200, seed=7)
    assert low < point < high
    assert high - low < 20  # a sane width for 400 trials, not the trivial [0, 100]
    assert eer_ci(scores, labels, n_boot=200, seed=7) == (low, high)
    assert eer_ci(scores, labels, n_boot=200, seed=8) != (low, high)
    narrow = eer_ci(scores, labels, n_boot=200, alpha=0.5, seed=7)
    assert low <= narrow[0] <= narrow[1] <= high
    # alpha is split between the two tails: at alpha .9 the interval is the middle 10 percent.
    middle = eer_ci(scores, labels, n_boot=200, alpha=0.9, seed=7)
    assert narrow[0] <= middle[0] <= middle[1] <= narrow[1]


def test_eer_ci_of_separated_scores_is_zero():
    assert eer_ci([0.1, 0.2, 0.8, 0.9], [0, 0, 1, 1], n_boot=50) == (0.0, 0.0)


# ----------------------------------------------------------------------------- t-DCF by hand

# A perfect ASV system: its EER threshold is 3 and it accepts one of the two spoofs.
PERFECT_ASV = dict(asv_target=[3.0, 4.0], asv_nontarget=[0.0, 1.0], asv_spoof=[3.5, 0.5])
# An imperfect one: EER threshold 2, Pmiss_asv = Pfa_asv = 1/2, and it accepts one spoof of two.
# 2019: C1 = .9405*(1 - .5) - .0095*10*.5 = .42275, C2 = 10*.05*.5 = .25.
# 2021: C0 = .9405*.5 + .0095*10*.5 = .51775, C1 = .9405 - C0 = .42275, C2 = .05*10*.5 = .25.
NOISY_ASV = dict(asv_target=[1.0, 3.0], asv_nontarget=[0.0, 2.0], asv_spoof=[2.5, 0.0])


@pytest.mark.parametrize("version", ["2019", "2021"])
def test_t_dcf_perfect_cm_and_asv_is_zero(version):
    assert t_dcf([5.0, 6.0], [1.0, 2.0], **PERFECT_ASV, version=version) == 0.0


@pytest.mark.parametrize("version", ["2019", "2021"])
@pytest.mark.parametrize("asv", [PERFECT_ASV, NOISY_ASV])
@pytest.mark.parametrize(
    "bona, spoof",
    [([0.5, 0.5, 0.5], [0.5, 0.5]), ([0.0, 1.0], [2.0, 3.0])],  # no information; reversed
)
def test_t_dcf_useless_cm_is_one(version, asv, bona, spoof):
    # Passing or blocking everything is then the best a threshold can do: the normaliser itself.
    assert t_dcf(bona, spoof, **asv, version=version) == pytest.approx(1.0)


def test_t_dcf_noisy_asv_by_hand():
    perfect_cm = ([5.0, 6.0], [1.0, 2.0])
    assert t_dcf(*perfect_cm, **NOISY_ASV, version="2019") == 0.0
    # 2021 charges the ASV's own errors even behind a perfect CM: C0 / (C0 + min(C1, C2)).
    assert t_dcf(*perfect_cm, **NOISY_ASV, version="2021") == pytest.approx(0.51775 / 0.76775)
    # CM with Pmiss_cm 0 and Pfa_cm 1/2 at its best threshold: 2019 .25*.5/.25, 2021 (C0+.125)/.76775.
    half_cm = ([1.0, 3.0], [2.0, 0.0])
    assert t_dcf(*half_cm, **NOISY_ASV, version="2019") == pytest.approx(0.5)
    assert t_dcf(*half_cm, **NOISY_ASV, version="2021") == pytest.approx(0.64275 / 0.76775)


def test_t_dcf_cost_models():
    assert COST_MODEL_2019.p_tar == pytest.approx(0.9405) and COST_MODEL_2019.p_non == pytest.approx(0.0095)
    assert (COST_MODEL_2019.c_fa_asv, COST_MODEL_2019.c_fa_cm, COST_MODEL_2021.c_fa_spoof) == (10, 10, 10)
    half_cm = ([1.0, 3.0], [2.0, 0.0])
    # Dearer CM misses: C1 = .9405*(3 - .5) - .0475 = 2.304, C2 = .25, so t-DCF = .25*.5/.25.
    dear_miss = TDCF2019Cost(c_miss_cm=3.0)
    assert t_dcf(*half_cm, **NOISY_ASV, cost_model=dear_miss) == pytest.approx(0.5)
    # Cheaper spoof acceptance in 2021: C2 = .05*1*.5 = .025, min = C0 + .0125 over C0 + .025.
    cheap = TDCF2021Cost(c_fa_spoof=1.0)
    expected = (0.51775 + 0.0125) / (0.51775 + 0.025)
    assert t_dcf(*half_cm, **NOISY_ASV, version="2021", cost_model=cheap) == pytest.approx(expected)
    with pytest.raises(ValueError, match="TDCF2021Cost"):
        t_dcf(*half_cm, **NOISY_ASV, version="2021", cost_model=COST_MODEL_2019)
    with pytest.raises(ValueError, match="sum to 1"):
        t_dcf(*half_cm, **NOISY_ASV, cost_model=TDCF2019Cost(p_spoof=0.5))
    with pytest.raises(ValueError, match="version"):
        t_dcf(*half_cm, **NOISY_ASV, version="2015")


def test_t_dcf_bad_input():
    with pytest.raises(ScoresError, match="ASV spoof scores is empty"):
        t_dcf([1.0, 2.0], [0.0], [1.0], [0.0], [])
    with pytest.raises(ScoresError, match="spoof CM scores contains"):
        t_dcf([1.0, 2.0], [float("nan")], [1.0], [0.0], [0.5])
    # An ASV system that rejects every spoof leaves the 2019 normaliser at zero.
    with pytest.raises(ScoresError, match="undefined"):
        t_dcf([1.0, 2.0], [0.0], [3.0, 4.0], [0.0, 1.0], [0.5], version="2019")


def test_eer_ci_by_group_resamples_whole_groups():
    rng = np.random.default_rng(0)
    # 20 speakers; each speaker's trials share an offset, so trials are not independent
    groups = np.repeat(np.arange(20), 40)
    labels = np.tile(np.r_[np.ones(10), np.zeros(30)], 20).astype(int)
    offset = rng.normal(0, 1.0, 20)[groups]
    scores = labels * 1.5 + offset + rng.normal(0, 0.5, groups.size)
    by_trial = eer_ci(scores, labels, n_boot=300, seed=1)
    by_group = eer_ci(scores, labels, n_boot=300, seed=1, groups=groups)
    point = eer(scores, labels)
    assert by_group[0] <= point <= by_group[1]
    # correlated trials: the speaker-level interval is wider than the trial-level one
    assert by_group[1] - by_group[0] > 1.5 * (by_trial[1] - by_trial[0])
    assert eer_ci(scores, labels, n_boot=300, seed=1, groups=groups) == by_group
    with pytest.raises(ScoresError, match="one entry per trial"):
        eer_ci(scores, labels, n_boot=10, groups=groups[:-1])
