"""Spoofing-aware speaker verification: one call gives the speaker score, the countermeasure's score
and one decision; a clip judged spoofed is rejected whatever its speaker score.

`Verifier.verify(name, clip, spoof_check=True)` lands here. Where the countermeasure is a side
network on the verifier's own speaker trunk (the shipped pair on the torch backend) the trunk runs
once: its embedding is the verifier's embedding and its stage features feed the side network.
Otherwise (the onnx backend, another speaker model) the two models each read the clip.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass

import numpy as np

from lightsv.spoof.countermeasure import Countermeasure


@dataclass(frozen=True)
class SpoofAwareVerification:
    """``accept`` = the speaker score passes ``threshold`` and the clip passes as bona fide
    (``spoof_score >= spoof_threshold``; the spoof score is the CM's logit of bona fide)."""

    speaker: str
    score: float
    threshold: float
    spoof_score: float
    spoof_threshold: float
    bonafide: bool
    accept: bool
    shared_pass: bool  # one pass of a shared trunk made both scores
    llr: float | None = None  # as in Verification: with a duration-aware calibration
    seconds: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def countermeasure_for(verifier, countermeasure: Countermeasure | str | None = None) -> Countermeasure:
    """The countermeasure a verifier uses: given, or the shipped one on the verifier's backend
    (loaded once and kept on the verifier)."""
    if isinstance(countermeasure, Countermeasure):
        return countermeasure
    cached = getattr(verifier, "_countermeasure", None)
    if countermeasure is None and cached is not None:
        return cached
    from lightsv.verifier import TorchModel

    backend = "torch" if isinstance(verifier.backend, TorchModel) else "onnx"
    cm = Countermeasure.load(countermeasure, backend=backend, threads=getattr(verifier.backend, "threads", None))
    if countermeasure is None:
        verifier._countermeasure = cm
    return cm


def shares_trunk(verifier, cm: Countermeasure) -> bool:
    """Whether one pass of the CM's trunk gives the verifier's embedding too: the same speaker model
    (id) on the same filterbank, and a CM on the verifier's backend that returns both."""
    from lightsv.verifier import TorchModel

    if cm.trunk_id is None or cm.trunk_id != verifier.model_id or cm.features is None:
        return False
    if isinstance(verifier.backend, TorchModel):
        # the shared pass feeds the trunk the speaker model's filterbank: the CM must have learnt on it
        joint = cm.model is not None and hasattr(cm.model, "joint")
        return joint and cm.features == dataclasses.asdict(verifier.fbank.config)
    ours = getattr(verifier.backend, "metadata", {}).get("features")
    return bool(getattr(cm._backend, "joint", False)) and ours is not None and json.loads(ours) == cm.features


def embed_and_score(verifier, cm: Countermeasure, clip, sample_rate: int | None = None):
    """(unit-length speaker embedding, CM score, whether one trunk pass made both, seconds embedded)
    of one clip. The CM scores the clip as the verifier embeds it (speech-trimmed unless the verifier
    has vad=False), so both backends see the same input."""
    from lightsv.audio import SAMPLE_RATE
    from lightsv.audio import load as load_audio
    from lightsv.verifier import _unit, repeat_short

    wav = load_audio(clip, sample_rate, min_seconds=verifier.min_seconds)
    speech = verifier._speech(wav, clip)
    seconds = len(speech) / SAMPLE_RATE
    if not shares_trunk(verifier, cm):
        return verifier._forward([speech])[0], cm.score_wav(speech), False, seconds
    if cm.backend == "onnx":
        emb, score = cm._backend.embed_and_score(repeat_short([speech])[0])
        return _unit(emb), score, True, seconds
    import torch

    # the verifier's own input (short clips repeated, as its embedding path does) through the trunk once
    backend = verifier.backend
    before = torch.get_num_threads()
    torch.set_num_threads(backend.threads)
    try:
        with torch.inference_mode():
            feats, frames = backend.fbank(torch.from_numpy(repeat_short([speech])[0])[None])
            emb, logit = cm.model.joint(feats, frames)
    finally:
        torch.set_num_threads(before)
    emb = torch.nn.functional.normalize(emb.float(), dim=1)[0].numpy()
    return emb, float(logit[0, 0]), True, seconds


def verify(
    verifier, name: str, clip, *, sample_rate=None, enrolled_seconds=None, countermeasure=None
) -> SpoofAwareVerification:
    threshold = None if verifier._uses_llr else verifier.decision_threshold()
    enrolled = verifier.speaker_embedding(name)
    cm = countermeasure_for(verifier, countermeasure)
    emb, spoof, shared, seconds = embed_and_score(verifier, cm, clip, sample_rate)
    score = verifier.score(enrolled, np.asarray(emb))
    llr = None
    if verifier._uses_llr:  # the duration-aware rule of Verifier.verify
        llr = verifier.duration.llr(score, seconds, enrolled_seconds)
        threshold = verifier.duration.score_at(verifier._llr_threshold, seconds, enrolled_seconds)
        speaker_ok = llr >= verifier._llr_threshold
    else:
        assert threshold is not None
        speaker_ok = score >= threshold
    bonafide = cm.is_bonafide(spoof)
    return SpoofAwareVerification(
        name, score, threshold, spoof, cm.threshold, bonafide, bool(bonafide and speaker_ok), shared, llr, seconds
    )


def sasv_trials(entries) -> list[tuple[str, str, str]]:
    """SASV trials of a protocol's speakers, as (enrollment clip, test clip, key): ``target`` pairs of
    bona fide clips of one speaker, ``nontarget`` bona fide clips of different speakers, ``spoof`` a
    spoofed clip of a speaker's voice against each bona fide clip of that speaker. Each pair once."""
    from lightsv.spoof.data import BONAFIDE

    bona = [e for e in entries if e.label == BONAFIDE]
    trials = []
    for i, a in enumerate(bona):
        for b in bona[i + 1 :]:
            trials.append((a.path, b.path, "target" if a.speaker == b.speaker else "nontarget"))
    for s in entries:
        if s.label != BONAFIDE:
            trials += [(a.path, s.path, "spoof") for a in bona if a.speaker == s.speaker]
    return trials
