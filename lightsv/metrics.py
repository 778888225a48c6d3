"""Speaker-verification metrics: EER, minDCF, DET curves, bootstrap CIs and the ASVspoof t-DCF.

Conventions: a higher score means "more likely target" (or "more bona fide" for CM scores), a trial
is accepted when ``score >= threshold``, and every error rate is computed over the *distinct*
scores, so trials with tied scores are always accepted or rejected together. Splitting a tie (as
the sort-and-cumsum scripts in Kaldi or the ASVspoof packages do) makes the result depend on the
order of the trials in the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import norm

from lightsv.errors import ScoresError

__all__ = [
    "COST_MODEL_2019",
    "COST_MODEL_ASVSPOOF5",
    "ADCFCost",
    "ASVRates",
    "a_dcf",
    "asv_error_rates",
    "official_eer_threshold",
    "sasv_eers",
    "t_dcf_weights",
    "COST_MODEL_2021",
    "TDCF2019Cost",
    "TDCF2021Cost",
    "det_curve",
    "eer",
    "eer_ci",
    "eer_change_ci",
    "eer_threshold",
    "min_dcf",
    "probit",
    "t_dcf",
    "threshold_at_far",
]


# ----------------------------------------------------------------------------- input checking


def _as_scores(scores, name: str = "scores") -> np.ndarray:
    try:
        arr = np.asarray(scores, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ScoresError(f"{name} must be numbers: {exc}") from None
    if arr.ndim != 1:
        raise ScoresError(f"{name} must be one-dimensional, got shape {arr.shape}")
    if arr.size == 0:
        raise ScoresError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise ScoresError(f"{name} contains {int((~np.isfinite(arr)).sum())} NaN or infinite value(s)")
    return arr


def _split(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    """Check a (scores, labels) pair and return (target scores, non-target scores)."""
    scores = _as_scores(scores)
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ScoresError(f"labels must be one-dimensional, got shape {labels.shape}")
    if labels.size != scores.size:
        raise ScoresError(f"{scores.size} scores but {labels.size} labels")
    # np.isin compares by value, so bools, ints and floats 0/1 all pass and strings or NaN do not.
    if labels.dtype.kind not in "biuf" or not np.isin(labels, (0, 1)).all():
        bad = sorted({str(v) for v in labels.tolist()} - {"0", "1", "0.0", "1.0", "True", "False"})
        raise ScoresError(f"labels must be 0 (non-target) or 1 (target), found {bad[:3]}")
    is_target = labels.astype(bool)
    tar, non = scores[is_target], scores[~is_target]
    if tar.size == 0:
        raise ScoresError("no target trials (every label is 0)")
    if non.size == 0:
        raise ScoresError("no non-target trials (every label is 1)")
    return tar, non


# ----------------------------------------------------------------------------- ROC / DET


def _counts(tar: np.ndarray, non: np.ndarray):
    """Thresholds (every distinct score, then +inf) with the number of misses and false alarms.

    The lowest distinct score already accepts every trial, so with the +inf point both extremes
    are present without a duplicated point.
    """
    thresholds = np.append(np.unique(np.concatenate([tar, non])), np.inf)
    # searchsorted(side="left") counts the scores strictly below each threshold: exactly the
    # rejected ones under "accept if score >= threshold", with ties kept on the same side.
    n_miss = np.searchsorted(np.sort(tar), thresholds, side="left")
    n_fa = non.size - np.searchsorted(np.sort(non), thresholds, side="left")
    return thresholds, n_miss, n_fa


def _rates(tar: np.ndarray, non: np.ndarray):
    """(fpr, fnr, thresholds), ascending in threshold."""
    thresholds, n_miss, n_fa = _counts(tar, non)
    return n_fa / non.size, n_miss / tar.size, thresholds


def det_curve(scores, labels) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """False-positive rate, false-negative rate and threshold, ascending in threshold.

    Point ``i`` accepts the trials with ``score >= thresholds[i]``; the first point accepts
    everything (fpr 1, fnr 0) and the last threshold is ``+inf`` (fpr 0, fnr 1).
    """
    return _rates(*_split(scores, labels))


def probit(p, eps: float = 1e-6):
    """Normal deviate of a rate, the axis warp of a DET plot; clipped so 0 and 1 stay finite."""
    return norm.ppf(np.clip(p, eps, 1.0 - eps))


def _eer_crossing(tar: np.ndarray, non: np.ndarray):
    """Thresholds, fnr, fpr and the gap fnr - fpr scaled by n_tar*n_non, plus the crossing index j.

    The scaled gap is an exact integer, so the crossing and the "which side is nearer" choice
    cannot be flipped by rounding when the two sides are equally near (common with round sizes).
    It rises strictly from -n_tar*n_non to +n_tar*n_non, so j (the first point with fnr >= fpr)
    is at least 1 and the crossing lies on the segment from j-1 to j.
    """
    thresholds, n_miss, n_fa = _counts(tar, non)
    gap = n_miss * non.size - n_fa * tar.size
    j = int(np.argmax(gap >= 0))
    return thresholds, n_miss / tar.size, n_fa / non.size, gap, j


def _eer(tar: np.ndarray, non: np.ndarray) -> float:
    _, fnr, _, gap, j = _eer_crossing(tar, non)
    # Walking the straight ROC segment between the two points (a randomised choice between their
    # thresholds) gives an operating point where the two rates are exactly equal.
    s = -gap[j - 1] / (gap[j] - gap[j - 1])
    return float(100.0 * (fnr[j - 1] + s * (fnr[j] - fnr[j - 1])))


def eer(scores, labels) -> float:
    """Equal error rate in percent, interpolated where the miss and false-alarm rates cross."""
    return _eer(*_split(scores, labels))


def _eer_threshold(tar: np.ndarray, non: np.ndarray) -> float:
    thresholds, _, _, gap, j = _eer_crossing(tar, non)
    # Of the two points around the crossing, the one whose rates are closer; on a tie the lower
    # threshold, which is always a real score (never the +inf reject-everything point).
    return float(thresholds[j] if abs(gap[j]) < abs(gap[j - 1]) else thresholds[j - 1])


def eer_threshold(scores, labels) -> float:
    """A score threshold at the EER: of the ROC points around the crossing, the one nearer to it.

    It is an actual score, so ``score >= threshold`` reproduces that point's error rates (which
    differ from the interpolated EER by at most one ROC step).
    """
    return _eer_threshold(*_split(scores, labels))


def min_dcf(scores, labels, p_target: float = 0.01, c_miss: float = 1, c_fa: float = 1) -> float:
    """Normalised minimum detection cost (NIST SRE / Kaldi ``compute_min_dcf.py`` definition)."""
    fpr, fnr, _ = _rates(*_split(scores, labels))
    cost = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    # Normalising by the cost of the better trivial system (accept all or reject all) means 1.0 is
    # "no better than not looking at the scores"; both trivial points are among the thresholds.
    return float(cost.min() / min(c_miss * p_target, c_fa * (1.0 - p_target)))


def threshold_at_far(scores, labels, far: float) -> float:
    """Lowest threshold (among the distinct scores and +inf) with non-target accept rate <= far.

    ``far`` is a fraction. Any threshold between the returned one and the next lower score would
    give the same rates on these trials; the returned one is the conservative end. It is +inf
    when only rejecting everything meets ``far`` (e.g. far=0 and the top score is a non-target).
    """
    if not 0.0 <= far <= 1.0:
        raise ScoresError(f"far must be a fraction in [0, 1], got {far}")
    fpr, _, thresholds = _rates(*_split(scores, labels))
    # fpr never rises with the threshold and ends at 0, so the first hit exists and is the lowest.
    return float(thresholds[np.argmax(fpr <= far)])


def _check_bootstrap(n_boot: int, alpha: float) -> None:
    if n_boot < 1:
        raise ScoresError(f"n_boot must be at least 1, got {n_boot}")
    if not 0.0 < alpha < 1.0:
        raise ScoresError(f"alpha must be in (0, 1), got {alpha}")


def eer_ci(scores, labels, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0, groups=None) -> tuple[float, float]:
    """Percentile bootstrap ``(1 - alpha)`` confidence interval of the EER, in percent.

    Targets and non-targets are resampled separately so every replicate keeps the original class
    sizes (and never loses a class). With ``groups`` (one label per trial, e.g. the enrolled
    speaker), whole groups are resampled instead: trials of one speaker are not independent, so a
    small dev set's interval is wider, and honest, this way.
    """
    _check_bootstrap(n_boot, alpha)
    tar, non = _split(scores, labels)
    rng = np.random.default_rng(seed)
    if groups is not None:
        return _grouped_eer_ci(np.asarray(scores, float), np.asarray(labels), groups, n_boot, alpha, rng)
    boot = [
        _eer(rng.choice(tar, tar.size, replace=True), rng.choice(non, non.size, replace=True)) for _ in range(n_boot)
    ]
    low, high = np.quantile(boot, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def eer_change_ci(
    before, after, labels, n_boot: int = 1000, alpha: float = 0.05, seed: int = 0
) -> tuple[float, float, float]:
    """``(change, low, high)``: EER(after) - EER(before) in points with its paired bootstrap interval.

    ``before`` and ``after`` score the same trials (e.g. clips before and after a codec round trip), so
    each replicate resamples trials once and scores both views of them: the interval is that of the
    change, far narrower than two separate intervals would suggest, and on a small set it says whether
    a change is more than the resolution of a few trials.
    """
    _check_bootstrap(n_boot, alpha)
    before, after = _as_scores(before, "before"), _as_scores(after, "after")
    if before.shape != after.shape:
        raise ScoresError(f"before and after must score the same trials: {before.size} vs {after.size}")
    tar_b, non_b = _split(before, labels)
    tar_a, non_a = _split(after, labels)
    rng = np.random.default_rng(seed)
    boot = []
    for _ in range(n_boot):
        t, n = rng.integers(0, tar_b.size, tar_b.size), rng.integers(0, non_b.size, non_b.size)
        boot.append(_eer(tar_a[t], non_a[n]) - _eer(tar_b[t], non_b[n]))
    low, high = np.quantile(boot, [alpha / 2, 1.0 - alpha / 2])
    return _eer(tar_a, non_a) - _eer(tar_b, non_b), float(low), float(high)


def _grouped_eer_ci(scores, labels, groups, n_boot: int, alpha: float, rng) -> tuple[float, float]:
    groups = np.asarray(groups)
    if groups.shape != labels.shape:
        raise ScoresError(f"groups must have one entry per trial: {groups.shape[0]} for {labels.shape[0]} trials")
    names, index = np.unique(groups, return_inverse=True)
    members = [np.flatnonzero(index == g) for g in range(len(names))]
    boot: list[float] = []
    while len(boot) < n_boot:
        pick = np.concatenate([members[g] for g in rng.integers(0, len(names), len(names))])
        tar, non = scores[pick][labels[pick] == 1], scores[pick][labels[pick] == 0]
        if tar.size and non.size:  # a draw of groups holding one class only has no EER; draw again
            boot.append(_eer(tar, non))
    low, high = np.quantile(boot, [alpha / 2, 1.0 - alpha / 2])
    return float(low), float(high)


def summary(scores, labels, p_target: float = 0.01, bootstrap: int = 1000) -> dict:
    """EER (percent) with its bootstrap 95 % interval, minDCF and the trial counts, as one dict."""
    labels = np.asarray(labels)
    out: dict[str, Any] = {
        "eer": eer(scores, labels),
        "min_dcf": min_dcf(scores, labels, p_target=p_target),
        "targets": int((labels == 1).sum()),
        "nontargets": int((labels == 0).sum()),
    }
    if bootstrap:
        out["eer_ci95"] = list(eer_ci(scores, labels, n_boot=bootstrap))
    return out


# ----------------------------------------------------------------------------- t-DCF


@dataclass(frozen=True)
class TDCF2019Cost:
    """ASVspoof 2019 t-DCF cost model (Kinnunen et al., Odyssey 2018); priors must sum to 1."""

    p_spoof: float = 0.05
    p_tar: float = (1 - 0.05) * 0.99
    p_non: float = (1 - 0.05) * 0.01
    c_miss_asv: float = 1.0
    c_fa_asv: float = 10.0
    c_miss_cm: float = 1.0
    c_fa_cm: float = 10.0


@dataclass(frozen=True)
class TDCF2021Cost:
    """Revised t-DCF cost model of ASVspoof 2021 (Kinnunen et al., TASLP 2020); priors sum to 1."""

    p_spoof: float = 0.05
    p_tar: float = (1 - 0.05) * 0.99
    p_non: float = (1 - 0.05) * 0.01
    c_miss: float = 1.0
    c_fa: float = 10.0
    c_fa_spoof: float = 10.0


COST_MODEL_2019 = TDCF2019Cost()
COST_MODEL_2021 = TDCF2021Cost()
_COST_TYPES = {"2019": TDCF2019Cost, "2021": TDCF2021Cost}


@dataclass(frozen=True)
class ASVRates:
    """An ASV system's error rates at its operating point, as the t-DCF needs them (fractions)."""

    pfa: float  # non-targets accepted
    pmiss: float  # targets rejected
    pfa_spoof: float  # spoofs accepted


def official_eer_threshold(asv_target, asv_nontarget) -> float:
    """The ASV threshold of the ASVspoof 2019 / 2021 evaluation packages (``compute_eer``).

    They sort all trials (targets first, then non-targets, stable sort), take the DET point after
    each trial where miss and false-alarm rates are closest, and return the score of the last trial
    that point rejects; their ``obtain_asv_error_rates`` then accepts ``score >= threshold``, so that
    trial counts as accepted: the rates are one trial off the DET point. Reproduced as they do it,
    so that t-DCF values match the published ones.
    """
    tar = _as_scores(asv_target, "ASV target scores")
    non = _as_scores(asv_nontarget, "ASV non-target scores")
    scores = np.concatenate([tar, non])
    order = np.argsort(scores, kind="mergesort")
    is_target = np.concatenate([np.ones(tar.size), np.zeros(non.size)])[order]
    tar_sums = np.cumsum(is_target)
    non_sums = non.size - (np.arange(1, scores.size + 1) - tar_sums)
    frr = np.concatenate([[0.0], tar_sums / tar.size])
    far = np.concatenate([[1.0], non_sums / non.size])
    thresholds = np.concatenate([[scores[order[0]] - 0.001], scores[order]])
    return float(thresholds[int(np.argmin(np.abs(frr - far)))])


def asv_error_rates(asv_target, asv_nontarget, asv_spoof, threshold: float) -> ASVRates:
    """Error rates of ASV scores at ``threshold`` (accept ``score >= threshold``)."""
    tar = _as_scores(asv_target, "ASV target scores")
    non = _as_scores(asv_nontarget, "ASV non-target scores")
    spoof = _as_scores(asv_spoof, "ASV spoof scores")
    return ASVRates(
        float(np.mean(non >= threshold)), float(np.mean(tar < threshold)), float(np.mean(spoof >= threshold))
    )


def t_dcf_weights(rates: ASVRates, version: str = "2019", cost_model: TDCF2019Cost | TDCF2021Cost | None = None):
    """(C0, C1, C2) of the t-DCF for an ASV system with these error rates: the t-DCF of a CM is
    ``C0 + C1 * Pmiss_cm + C2 * Pfa_cm`` normalised by ``C0 + min(C1, C2)`` (C0 = 0 in 2019)."""
    version = str(version)
    if version not in _COST_TYPES:
        raise ValueError(f"t-DCF version must be '2019' or '2021', got {version!r}")
    cost: TDCF2019Cost | TDCF2021Cost = _COST_TYPES[version]() if cost_model is None else cost_model
    if not isinstance(cost, _COST_TYPES[version]):
        raise ValueError(f"t-DCF version {version} needs a {_COST_TYPES[version].__name__}, got {type(cost).__name__}")
    if min(cost.p_tar, cost.p_non, cost.p_spoof) < 0 or abs(cost.p_tar + cost.p_non + cost.p_spoof - 1) > 1e-10:
        raise ValueError("t-DCF priors p_tar, p_non, p_spoof must be non-negative and sum to 1")
    for name in ("pfa", "pmiss", "pfa_spoof"):
        if not 0.0 <= getattr(rates, name) <= 1.0:
            raise ValueError(f"ASV {name} must be a rate in [0, 1], got {getattr(rates, name)}")
    if isinstance(cost, TDCF2019Cost):  # the version's type, checked above
        c1 = cost.p_tar * (cost.c_miss_cm - cost.c_miss_asv * rates.pmiss) - cost.p_non * cost.c_fa_asv * rates.pfa
        c2 = cost.c_fa_cm * cost.p_spoof * rates.pfa_spoof  # = (1 - Pmiss_spoof_asv)
        c0 = 0.0
    else:
        c0 = cost.p_tar * cost.c_miss * rates.pmiss + cost.p_non * cost.c_fa * rates.pfa
        c1 = cost.p_tar * cost.c_miss - c0
        c2 = cost.p_spoof * cost.c_fa_spoof * rates.pfa_spoof
    return c0, c1, c2


def t_dcf(
    bonafide_cm,
    spoof_cm,
    asv_target=None,
    asv_nontarget=None,
    asv_spoof=None,
    version: str = "2019",
    cost_model: TDCF2019Cost | TDCF2021Cost | None = None,
    *,
    asv_threshold: float | str = "eer",
    asv_rates: ASVRates | tuple[float, float, float] | None = None,
    weights: tuple[float, float, float] | None = None,
) -> float:
    """Minimum normalised tandem detection cost of a CM in front of a fixed ASV system.

    The ASV operating point, most specific first: ``weights`` (C0, C1, C2) given directly;
    ``asv_rates`` (Pfa, Pmiss, Pfa_spoof of the ASV system, fractions); or the ASV scores with
    ``asv_threshold``: ``"eer"`` (default) lightsv's EER threshold (``eer_threshold``: the ROC point
    nearest the crossing, ties kept together), ``"official"`` the ASVspoof packages' threshold
    (``official_eer_threshold``, one trial off), or a number. The minimum is over all CM thresholds.
    ``version`` picks the 2019 (legacy) or 2021 (revised) formula; ``cost_model`` defaults to that
    version's ``COST_MODEL_*`` and must be of the matching type. CM scores: higher = more bona fide.
    """
    bona, spoof = _as_scores(bonafide_cm, "bona fide CM scores"), _as_scores(spoof_cm, "spoof CM scores")
    if weights is not None:
        c0, c1, c2 = (float(w) for w in weights)
    else:
        if asv_rates is None:
            if asv_target is None or asv_nontarget is None or asv_spoof is None:
                raise ScoresError("t-DCF needs the ASV target, non-target and spoof scores, or asv_rates, or weights")
            if asv_threshold == "eer":
                thr = _eer_threshold(*_split_asv(asv_target, asv_nontarget))
            elif asv_threshold == "official":
                thr = official_eer_threshold(asv_target, asv_nontarget)
            elif isinstance(asv_threshold, str):
                raise ValueError(f"asv_threshold must be 'eer', 'official' or a number, got {asv_threshold!r}")
            else:
                thr = float(asv_threshold)
            asv_rates = asv_error_rates(asv_target, asv_nontarget, asv_spoof, thr)
        rates = asv_rates if isinstance(asv_rates, ASVRates) else ASVRates(*(float(r) for r in asv_rates))
        c0, c1, c2 = t_dcf_weights(rates, version, cost_model)
    # The official packages refuse negative weights too: they only arise from an ASV system worse
    # than chance, where the t-DCF has no meaning.
    if c0 < 0 or c1 < 0 or c2 < 0:
        raise ScoresError(
            f"t-DCF weights are negative (C0={c0:.4g}, C1={c1:.4g}, C2={c2:.4g}): is the ASV system reversed?"
        )
    # The normaliser is the cost of the better trivial CM (pass everything or block everything).
    default = c0 + min(c1, c2)
    if default <= 0:
        raise ScoresError(
            "t-DCF is undefined: the ASV system alone already makes no costly error "
            "(e.g. it rejects every spoof), so there is nothing for a CM to improve"
        )
    pfa_cm, pmiss_cm, _ = _rates(bona, spoof)
    return float(np.min(c0 + c1 * pmiss_cm + c2 * pfa_cm) / default)


def _split_asv(asv_target, asv_nontarget) -> tuple[np.ndarray, np.ndarray]:
    return _as_scores(asv_target, "ASV target scores"), _as_scores(asv_nontarget, "ASV non-target scores")


# ----------------------------------------------------------------------------- SASV


def sasv_eers(target, nontarget, spoof) -> dict[str, float]:
    """The SASV 2022 challenge's three EERs (percent) of one score per trial: ``sasv_eer`` target vs
    non-target and spoof trials together, ``sv_eer`` target vs non-target, ``spf_eer`` target vs spoof.
    Interpolated at the crossing, like ``eer``; the challenge script takes the ROC point nearest the
    crossing, which differs by at most one ROC step."""
    tar = _as_scores(target, "target scores")
    non = _as_scores(nontarget, "non-target scores")
    spf = _as_scores(spoof, "spoof scores")
    return {
        "sasv_eer": _eer(tar, np.concatenate([non, spf])),
        "sv_eer": _eer(tar, non),
        "spf_eer": _eer(tar, spf),
    }


@dataclass(frozen=True)
class ADCFCost:
    """a-DCF cost model (Shim et al., Odyssey 2024); default: ASVspoof 5's. Priors must sum to 1."""

    p_tar: float = 0.9405
    p_non: float = 0.0095
    p_spf: float = 0.05
    c_miss: float = 1.0
    c_fa_asv: float = 10.0  # a non-target accepted
    c_fa_cm: float = 10.0  # a spoof accepted


COST_MODEL_ASVSPOOF5 = ADCFCost()


def a_dcf(
    target, nontarget, spoof, cost_model: ADCFCost = COST_MODEL_ASVSPOOF5, threshold: float | None = None
) -> float:
    """Normalised architecture-agnostic DCF of one score per trial (Shim et al. 2024):
    ``C_miss P_tar Pmiss(t) + C_fa,asv P_non Pfa,non(t) + C_fa,cm P_spf Pfa,spf(t)`` over the cost of
    the better trivial system (accept all or reject all); the minimum over thresholds, or at
    ``threshold`` (accept ``score >= threshold``)."""
    c = cost_model
    if min(c.p_tar, c.p_non, c.p_spf) < 0 or abs(c.p_tar + c.p_non + c.p_spf - 1) > 1e-10:
        raise ValueError("a-DCF priors p_tar, p_non, p_spf must be non-negative and sum to 1")
    tar = _as_scores(target, "target scores")
    non = _as_scores(nontarget, "non-target scores")
    spf = _as_scores(spoof, "spoof scores")
    if threshold is None:
        thresholds = np.append(np.unique(np.concatenate([tar, non, spf])), np.inf)
    else:
        thresholds = np.array([float(threshold)])
    pmiss = np.searchsorted(np.sort(tar), thresholds, side="left") / tar.size
    pfa_non = 1.0 - np.searchsorted(np.sort(non), thresholds, side="left") / non.size
    pfa_spf = 1.0 - np.searchsorted(np.sort(spf), thresholds, side="left") / spf.size
    cost = c.c_miss * c.p_tar * pmiss + c.c_fa_asv * c.p_non * pfa_non + c.c_fa_cm * c.p_spf * pfa_spf
    return float(cost.min() / min(c.c_miss * c.p_tar, c.c_fa_asv * c.p_non + c.c_fa_cm * c.p_spf))
