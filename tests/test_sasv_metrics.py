"""t-DCF with the official ASV operating point, SASV EERs and a-DCF, against reference formulas
transcribed here independently of lightsv.metrics."""

import math

import numpy as np
import pytest

from lightsv.errors import ScoresError
from lightsv.metrics import (
    ADCFCost,
    ASVRates,
    a_dcf,
    asv_error_rates,
    official_eer_threshold,
    sasv_eers,
    t_dcf,
    t_dcf_weights,
)

# ----------------------------------------------------------------------------- ASVspoof 2021 eval package
# Transcribed from the ASVspoof 2021 evaluation package (eval_metrics.py / calculate_modules.py):
# compute_det_curve, compute_eer, obtain_asv_error_rates, compute_tDCF (revised) and the legacy one.


def ref_compute_det_curve(target_scores, nontarget_scores):
    n_scores = target_scores.size + nontarget_scores.size
    all_scores = np.concatenate((target_scores, nontarget_scores))
    labels = np.concatenate((np.ones(target_scores.size), np.zeros(nontarget_scores.size)))
    indices = np.argsort(all_scores, kind="mergesort")
    labels = labels[indices]
    tar_trial_sums = np.cumsum(labels)
    nontarget_trial_sums = nontarget_scores.size - (np.arange(1, n_scores + 1) - tar_trial_sums)
    frr = np.concatenate((np.atleast_1d(0), tar_trial_sums / target_scores.size))
    far = np.concatenate((np.atleast_1d(1), nontarget_trial_sums / nontarget_scores.size))
    thresholds = np.concatenate((np.atleast_1d(all_scores[indices[0]] - 0.001), all_scores[indices]))
    return frr, far, thresholds


def ref_compute_eer(target_scores, nontarget_scores):
    frr, far, thresholds = ref_compute_det_curve(target_scores, nontarget_scores)
    abs_diffs = np.abs(frr - far)
    min_index = np.argmin(abs_diffs)
    eer = np.mean((frr[min_index], far[min_index]))
    return eer, thresholds[min_index]


def ref_obtain_asv_error_rates(tar_asv, non_asv, spoof_asv, asv_threshold):
    Pfa_asv = sum(non_asv >= asv_threshold) / non_asv.size
    Pmiss_asv = sum(tar_asv < asv_threshold) / tar_asv.size
    Pmiss_spoof_asv = np.sum(spoof_asv < asv_threshold) / spoof_asv.size
    Pfa_spoof_asv = np.sum(spoof_asv >= asv_threshold) / spoof_asv.size
    return Pfa_asv, Pmiss_asv, Pmiss_spoof_asv, Pfa_spoof_asv


REF_COST_2021 = {
    "Pspoof": 0.05,
    "Ptar": (1 - 0.05) * 0.99,
    "Pnon": (1 - 0.05) * 0.01,
    "Cmiss": 1,
    "Cfa": 10,
    "Cfa_spoof": 10,
}
REF_COST_2019 = {
    "Pspoof": 0.05,
    "Ptar": (1 - 0.05) * 0.99,
    "Pnon": (1 - 0.05) * 0.01,
    "Cmiss_asv": 1,
    "Cfa_asv": 10,
    "Cmiss_cm": 1,
    "Cfa_cm": 10,
}


def ref_compute_tDCF_2021(bonafide_score_cm, spoof_score_cm, Pfa_asv, Pmiss_asv, Pfa_spoof_asv, cost_model):
    Pmiss_cm, Pfa_cm, _ = ref_compute_det_curve(bonafide_score_cm, spoof_score_cm)
    C0 = cost_model["Ptar"] * cost_model["Cmiss"] * Pmiss_asv + cost_model["Pnon"] * cost_model["Cfa"] * Pfa_asv
    C1 = cost_model["Ptar"] * cost_model["Cmiss"] - (
        cost_model["Ptar"] * cost_model["Cmiss"] * Pmiss_asv + cost_model["Pnon"] * cost_model["Cfa"] * Pfa_asv
    )
    C2 = cost_model["Pspoof"] * cost_model["Cfa_spoof"] * Pfa_spoof_asv
    tDCF = C0 + C1 * Pmiss_cm + C2 * Pfa_cm
    tDCF_default = C0 + np.minimum(C1, C2)
    return np.min(tDCF / tDCF_default)


def ref_compute_tDCF_2019(bonafide_score_cm, spoof_score_cm, Pfa_asv, Pmiss_asv, Pmiss_spoof_asv, cost_model):
    Pmiss_cm, Pfa_cm, _ = ref_compute_det_curve(bonafide_score_cm, spoof_score_cm)
    C1 = (
        cost_model["Ptar"] * (cost_model["Cmiss_cm"] - cost_model["Cmiss_asv"] * Pmiss_asv)
        - cost_model["Pnon"] * cost_model["Cfa_asv"] * Pfa_asv
    )
    C2 = cost_model["Cfa_cm"] * cost_model["Pspoof"] * (1 - Pmiss_spoof_asv)
    tDCF = C1 * Pmiss_cm + C2 * Pfa_cm
    return np.min(tDCF / np.minimum(C1, C2))


def tdcf_inputs(seed, n):
    """Continuous scores (no ties, so tie conventions cannot matter): a CM and an ASV system."""
    rng = np.random.default_rng(seed)
    bona, spoof = rng.normal(2, 1, n), rng.normal(0, 1.2, 3 * n)
    tar, non, spoof_asv = rng.normal(2, 1, n), rng.normal(-1, 1, 2 * n), rng.normal(1, 1, n)
    return bona, spoof, tar, non, spoof_asv


@pytest.mark.parametrize("seed,n", [(0, 7), (1, 20), (2, 20), (3, 50), (4, 2000)])
def test_official_threshold_and_t_dcf_match_the_asvspoof_2021_package(seed, n):
    bona, spoof, tar, non, spoof_asv = tdcf_inputs(seed, n)
    _, ref_thr = ref_compute_eer(tar, non)
    assert official_eer_threshold(tar, non) == ref_thr
    pfa, pmiss, pmiss_spoof, pfa_spoof = ref_obtain_asv_error_rates(tar, non, spoof_asv, ref_thr)
    assert asv_error_rates(tar, non, spoof_asv, ref_thr) == ASVRates(pfa, pmiss, pfa_spoof)
    ref21 = ref_compute_tDCF_2021(bona, spoof, pfa, pmiss, pfa_spoof, REF_COST_2021)
    ref19 = ref_compute_tDCF_2019(bona, spoof, pfa, pmiss, pmiss_spoof, REF_COST_2019)
    for version, ref in (("2021", ref21), ("2019", ref19)):
        got = t_dcf(bona, spoof, tar, non, spoof_asv, version, asv_threshold="official")
        assert got == pytest.approx(ref, rel=1e-12, abs=1e-15)
        # the same operating point given as rates, as a threshold, or as the weights
        assert t_dcf(bona, spoof, version=version, asv_rates=(pfa, pmiss, pfa_spoof)) == pytest.approx(ref, rel=1e-12)
        assert t_dcf(bona, spoof, tar, non, spoof_asv, version, asv_threshold=ref_thr) == pytest.approx(ref, rel=1e-12)
        weights = t_dcf_weights(ASVRates(pfa, pmiss, pfa_spoof), version)
        assert t_dcf(bona, spoof, weights=weights) == pytest.approx(ref, rel=1e-12)


def test_official_threshold_is_one_trial_off_the_lightsv_eer_point():
    # 4 targets, 4 non-targets, perfectly separated: the package's DET point rejects all
    # non-targets, and its threshold (the last rejected score) is accepted by its own >= rule.
    tar, non = np.array([5.0, 6.0, 7.0, 8.0]), np.array([1.0, 2.0, 3.0, 4.0])
    assert official_eer_threshold(tar, non) == 4.0
    spoof_asv = np.array([6.0])
    assert asv_error_rates(tar, non, spoof_asv, 4.0).pfa == 0.25  # one non-target accepted
    bona, spoof = np.array([1.0, 2.0]), np.array([0.0, 3.0])
    lightsv_point = t_dcf(bona, spoof, tar, non, spoof_asv, "2021")
    official = t_dcf(bona, spoof, tar, non, spoof_asv, "2021", asv_threshold="official")
    assert lightsv_point != official


def test_t_dcf_operating_point_errors():
    bona, spoof = [1.0, 2.0], [0.0]
    with pytest.raises(ScoresError, match="needs the ASV"):
        t_dcf(bona, spoof)
    with pytest.raises(ValueError, match="asv_threshold"):
        t_dcf(bona, spoof, [1.0], [0.0], [0.5], asv_threshold="median")
    with pytest.raises(ValueError, match="rate in"):
        t_dcf(bona, spoof, asv_rates=(1.5, 0.0, 0.5))
    with pytest.raises(ScoresError, match="negative"):
        t_dcf(bona, spoof, weights=(0.0, -1.0, 1.0))


# ----------------------------------------------------------------------------- SASV 2022 EERs


def ref_roc_eer(labels, preds):
    """The SASV 2022 baseline's get_all_EERs step: sklearn's roc_curve, then the ROC point where
    |fnr - fpr| is smallest (transcribed without sklearn: every distinct score is a threshold)."""
    labels, preds = np.asarray(labels), np.asarray(preds)
    thresholds = np.r_[np.inf, np.unique(preds)[::-1]]
    fpr = np.array([np.mean(preds[labels == 0] >= t) for t in thresholds])
    tpr = np.array([np.mean(preds[labels == 1] >= t) for t in thresholds])
    return 100 * fpr[np.nanargmin(np.abs((1 - tpr) - fpr))]


def test_sasv_eers_match_the_challenge_definitions():
    rng = np.random.default_rng(5)
    tar, non, spf = rng.normal(2, 1, 400), rng.normal(0, 1, 800), rng.normal(1, 1, 600)
    got = sasv_eers(tar, non, spf)
    for key, negatives in (("sasv_eer", np.r_[non, spf]), ("sv_eer", non), ("spf_eer", spf)):
        ref = ref_roc_eer(np.r_[np.ones(tar.size), np.zeros(negatives.size)], np.r_[tar, negatives])
        # interpolated against the nearest ROC point: at most one step of either rate apart
        assert abs(got[key] - ref) <= 100 * max(1 / tar.size, 1 / negatives.size) + 1e-9
    assert got["sv_eer"] < got["sasv_eer"] < got["spf_eer"]
    # where the rates cross exactly on a ROC point the two definitions agree exactly
    exact = sasv_eers([3.0, 4.0, 1.5], [0.0, 1.0, 2.0], [2.5, -1.0, -2.0])
    assert exact["sv_eer"] == ref_roc_eer([1, 1, 1, 0, 0, 0], [3, 4, 1.5, 0, 1, 2]) == pytest.approx(100 / 3)


# ----------------------------------------------------------------------------- a-DCF (Shim et al. 2024)


def ref_a_dcf(tar, non, spf, p_tar=0.9405, p_non=0.0095, p_spf=0.05, c_miss=1, c_fa_asv=10, c_fa_cm=10):
    """a-DCF(t) = C_miss P_tar P_miss(t) + C_fa,asv P_non P_fa,non(t) + C_fa,cm P_spf P_fa,spf(t),
    normalised by min(C_miss P_tar, C_fa,asv P_non + C_fa,cm P_spf), minimised over thresholds."""
    best = math.inf
    for t in sorted(set(np.r_[tar, non, spf])) + [math.inf]:
        cost = (
            c_miss * p_tar * np.mean(tar < t)
            + c_fa_asv * p_non * np.mean(non >= t)
            + c_fa_cm * p_spf * np.mean(spf >= t)
        )
        best = min(best, cost)
    return best / min(c_miss * p_tar, c_fa_asv * p_non + c_fa_cm * p_spf)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_dcf_matches_its_definition(seed):
    rng = np.random.default_rng(seed)
    tar, non, spf = rng.normal(2, 1, 60), rng.normal(0, 1, 90), rng.normal(1, 1, 40)
    assert a_dcf(tar, non, spf) == pytest.approx(ref_a_dcf(tar, non, spf), rel=1e-12)
    sasv22 = dict(p_tar=0.9, p_non=0.05, p_spf=0.05, c_miss=1, c_fa_asv=10, c_fa_cm=20)
    assert a_dcf(tar, non, spf, ADCFCost(**sasv22)) == pytest.approx(ref_a_dcf(tar, non, spf, **sasv22), rel=1e-12)
    # at a fixed threshold, the cost there; never below the minimum
    at = a_dcf(tar, non, spf, threshold=1.0)
    assert at >= a_dcf(tar, non, spf)


def test_a_dcf_extremes_and_errors():
    # a perfect system costs nothing; a reversed one is no better than not looking at the scores
    assert a_dcf([2.0, 3.0], [0.0], [1.0]) == 0.0
    assert a_dcf([0.0], [2.0, 3.0], [1.0]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="sum to 1"):
        a_dcf([1.0], [0.0], [0.0], ADCFCost(p_tar=0.5))
    with pytest.raises(ScoresError, match="spoof scores"):
        a_dcf([1.0], [0.0], [])
