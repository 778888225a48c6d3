"""Countermeasure evaluation: EER and t-DCF (ASVspoof 2019 and 2021 cost models), overall and per
spoofing system.

The t-DCF needs the scores of an ASV system on the same speakers. A protocol carries none, so
`asv_scores` makes them with a lightsv speaker model (by default the shipped one) from the
protocol's own clips: target trials are pairs of bona fide clips of one speaker, non-target trials
pairs of bona fide clips of different speakers, spoof trials a spoofed clip of a speaker against
each bona fide clip of that speaker.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from lightsv import metrics
from lightsv.audio import load
from lightsv.errors import ScoresError
from lightsv.spoof.data import BONAFIDE, SPOOF, Entry

if TYPE_CHECKING:  # torch only where a torch model is scored: the onnx runtime needs none
    from torch import nn

    from lightsv.features import FbankConfig


def cm_scores(
    model: nn.Module,
    paths: Sequence[str],
    features: FbankConfig | None = None,
    max_seconds: float = 30.0,
    progress: bool = False,
) -> np.ndarray:
    """The countermeasure's score (logit of bona fide) of each clip, whole (up to `max_seconds`),
    one clip at a time so that no clip is scored padded."""
    import torch

    from lightsv.features import FbankConfig, features_for

    with torch.no_grad():
        return _cm_scores(model, paths, features or FbankConfig(), max_seconds, progress, features_for)


def _cm_scores(model, paths, features, max_seconds, progress, features_for) -> np.ndarray:
    import torch

    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    extract = features_for(model, features).to(device)
    bar = paths
    if progress:
        from tqdm import tqdm

        bar = tqdm(paths, desc="CM scores", leave=False, disable=None)
    out = []
    for path in bar:
        wav = torch.from_numpy(load(path)[: int(max_seconds * 16000)]).to(device)[None]
        feats, _ = extract(wav)
        out.append(float(model(feats)[0, 0]))
    model.train(was_training)
    return np.array(out)


def asv_scores(entries: Sequence[Entry], model: str | None = None) -> dict:
    """ASV trial scores on the protocol's speakers (see the module docstring): target, non-target and
    spoof scores, the spoof trials' system names, and how many of each."""
    from lightsv.verifier import Verifier

    # every clip is scored whole, as the CM scores it: speech detection would refuse some spoofs
    verifier = Verifier.load(None if model in (None, "default") else model, vad=False)
    bona = [e for e in entries if e.label == BONAFIDE]
    by_speaker: dict[str, list[int]] = {}
    for i, e in enumerate(bona):
        by_speaker.setdefault(e.speaker, []).append(i)
    spoofs = [e for e in entries if e.label == SPOOF and e.speaker in by_speaker]
    emb = verifier.embed_many([e.path for e in bona + spoofs], progress=False)
    bona_emb, spoof_emb = emb[: len(bona)], emb[len(bona) :]
    target: list[float] = []
    nontarget: list[float] = []
    for i, j in itertools.combinations(range(len(bona)), 2):
        (target if bona[i].speaker == bona[j].speaker else nontarget).append(float(bona_emb[i] @ bona_emb[j]))
    spoof: list[float] = []
    systems: list[str] = []
    for k, e in enumerate(spoofs):
        for i in by_speaker[e.speaker]:
            spoof.append(float(bona_emb[i] @ spoof_emb[k]))
            systems.append(e.system)
    return {"target": target, "nontarget": nontarget, "spoof": spoof, "spoof_systems": systems}


def _t_dcf(
    bona: np.ndarray, spoof: np.ndarray, asv: dict | None, system: str | None, asv_threshold: str = "eer"
) -> dict:
    if asv is None:
        return {}
    asv_spoof = [s for s, name in zip(asv["spoof"], asv["spoof_systems"], strict=True) if system in (None, name)]
    out: dict = {"asv_spoof_trials": len(asv_spoof)}
    for version in ("2019", "2021"):
        try:
            out[f"t_dcf_{version}"] = metrics.t_dcf(
                bona, spoof, asv["target"], asv["nontarget"], asv_spoof, version, asv_threshold=asv_threshold
            )
        except (ScoresError, ValueError) as err:  # no ASV spoof trial of this system, or t-DCF undefined
            out[f"t_dcf_{version}"] = None
            out[f"t_dcf_{version}_why"] = " ".join(str(err).split())
    return out


def evaluate_cm(
    model: nn.Module,
    entries: Sequence[Entry],
    features: FbankConfig | None = None,
    max_seconds: float = 30.0,
    asv: dict | None = None,
    bootstrap: int = 1000,
    progress: bool = False,
) -> dict:
    """EER (bona fide vs spoof) with its bootstrap interval and, given `asv_scores`, t-DCF; overall
    and per spoofing system (bona fide vs that system). Also the scores, for plots."""
    scores = cm_scores(model, [e.path for e in entries], features, max_seconds, progress)
    return evaluate_scores(scores, entries, asv, bootstrap)


def evaluate_scores(
    scores: np.ndarray, entries: Sequence[Entry], asv: dict | None = None, bootstrap: int = 1000, asv_threshold="eer"
) -> dict:
    """`evaluate_cm` for CM scores already made, one per entry; `asv_threshold` as in `metrics.t_dcf`
    ("official": the ASVspoof packages' ASV threshold convention)."""
    scores = np.asarray(scores, dtype=np.float64)
    labels = np.array([e.label for e in entries])
    systems = np.array([e.system for e in entries])
    bona = scores[labels == BONAFIDE]
    result: dict = {
        "overall": {
            **metrics.summary(scores, labels, bootstrap=bootstrap),
            **_t_dcf(bona, scores[labels == SPOOF], asv, None, asv_threshold),
        }
    }
    result["systems"] = {}
    for system in sorted(set(systems[labels == SPOOF])):
        pick = systems == system
        spoof = scores[pick]
        result["systems"][system] = {
            "eer": metrics.eer(np.concatenate([bona, spoof]), np.r_[np.ones(len(bona)), np.zeros(len(spoof))]),
            "spoof": int(pick.sum()),
            **_t_dcf(bona, spoof, asv, system, asv_threshold),
        }
    if asv is not None:
        result["asv"] = {
            "eer": metrics.eer(
                asv["target"] + asv["nontarget"], [1] * len(asv["target"]) + [0] * len(asv["nontarget"])
            ),
            "target_trials": len(asv["target"]),
            "nontarget_trials": len(asv["nontarget"]),
            "spoof_trials": len(asv["spoof"]),
        }
    result["scores"], result["labels"] = scores.tolist(), labels.tolist()
    return result
