"""Speaker verification for applications: enroll speakers from a few clips, then verify new clips.

    v = lightsv.Verifier.load()                          # the shipped model; or a checkpoint path
    v.enroll("alice", ["a1.flac", "a2.flac"])            # appends; several clips make a better model
    r = v.verify("alice", "test.flac")                   # r.score, r.threshold, r.accept, r.speaker
    r = v.identify("test.flac", top_k=5)                 # r.speaker (best or None), r.accept, r.candidates

Scores. A speaker is represented by the mean of their L2-normalised enrollment embeddings, and a
test clip scores the raw cosine between its embedding and that mean (renormalised): averaging
embeddings is as good as or better than averaging per-clip scores for the usual 1-10 clips, and
keeps a verification to one dot product. Scores lie in [-1, 1]; higher means more likely the same
speaker; a clip is accepted when ``score >= threshold``.

Thresholds come from the checkpoint's calibration (``extra["calibration"]``, written by
:func:`lightsv.calibrate.write_calibration` from scored trials): the EER threshold by default, or
the threshold at a target false-accept rate (``operating_point="far=0.01"``), or ``threshold=``.
With a cohort (:meth:`Verifier.set_cohort`) scores are AS-norm normalised, on another scale, so only a
calibration made from AS-norm scores (``"score_norm": "asnorm"``) gives a threshold then; a cohort
file may also carry a duration-aware calibration of its AS-norm scores, which ``verify`` and
``stream`` then decide with, as they do with the model's for raw cosines. A decision
is never left undecided: where there is no threshold for the scores, ``verify`` and ``identify`` raise
:class:`~lightsv.errors.ThresholdError` saying how to get one (``score`` and ``compare`` still score).

Speech: clips are trimmed to their speech (:mod:`lightsv.speech`, energy-based) before embedding,
and a clip without enough speech for the model raises AudioError ("no speech found"); ``vad=False``
embeds clips whole.

Enrollments live in an :class:`~lightsv.store.EnrollmentStore`: in memory by default, or a SQLite
file (``db=``) that refuses embeddings from another model.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightsv import cohort as cohorts
from lightsv import speech
from lightsv.audio import SAMPLE_RATE
from lightsv.audio import info as audio_info
from lightsv.audio import load as load_audio
from lightsv.errors import AudioError, CheckpointError, ConfigError, LightsvError, ThresholdError, UnknownSpeakerError
from lightsv.runtime import DEFAULT_ONNX, OnnxModel, check_threads
from lightsv.search import SpeakerIndex
from lightsv.store import Enrollment, EnrollmentStore, InvalidEnrollmentError

if TYPE_CHECKING:  # torch is imported only by the torch backend, so the onnx backend runs without it
    from torch import nn

    from lightsv.features import Fbank, FbankConfig
    from lightsv.spoof.sasv import SpoofAwareVerification

ASSETS = Path(__file__).resolve().parent / "assets"
DEFAULT_MODEL = ASSETS / "default.pt"
EXAMPLES = ASSETS / "examples"
#: Shortest clip accepted when the checkpoint does not name its own minimum (``extra["min_seconds"]``):
#: below about half a second an embedding says more about the phonemes than the speaker.
MIN_SECONDS = 0.5
#: Shorter clips are repeated up to this length before embedding, as in training's joined crops:
#: statistics pooling over a handful of frames is noisy, and a model trained on crops of 0.5 s and
#: more has never seen fewer frames. A checkpoint may accept shorter clips (``min_seconds``).
REPEAT_SECONDS = 0.5
#: Cohort scores kept per side by AS-norm (the adaptive part: only the most similar impostors count).
TOP_N = 200


@dataclass(frozen=True)
class Verification:
    """The outcome of one verification: accepted when ``score >= threshold``.

    With a duration-aware calibration (:mod:`lightsv.duration`) ``llr`` is the score's log-likelihood
    ratio given the ``seconds`` of audio embedded, the decision is made on it, and ``threshold`` is the
    score (cosine, or AS-norm with a cohort) that LLR threshold amounts to at this duration; otherwise
    both are None."""

    speaker: str
    score: float
    threshold: float
    accept: bool
    llr: float | None = None
    seconds: float | None = None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class Identification:
    """The outcome of one identification: ``candidates`` [(name, score)] best first; ``speaker`` is
    the best one, or None when nobody is enrolled; ``accept`` says whether it passes the threshold."""

    speaker: str | None
    score: float | None
    threshold: float
    accept: bool
    candidates: list[tuple[str, float]]

    def as_dict(self) -> dict:
        out = dataclasses.asdict(self)
        out["candidates"] = [{"speaker": name, "score": score} for name, score in self.candidates]
        return out


class Verifier:
    """A speaker-embedding model with an enrollment store, a threshold and optional AS-norm."""

    def __init__(
        self,
        model: nn.Module | OnnxModel,
        *,
        extra: dict | None = None,
        db: str | os.PathLike | None = None,
        operating_point: str | None = None,
        threshold: float | None = None,
        device: str = "cpu",
        source: str = "model",
        threads: int | None = None,
        vad: bool = True,
    ):
        """``model``: a torch model (with its checkpoint metadata ``extra``) or an :class:`OnnxModel`."""
        if isinstance(model, OnnxModel):
            extra = {**model.extra, **(extra or {})}
            self.backend: TorchModel | OnnxModel = model
            self.model, self.fbank = None, None
        else:
            extra = extra or {}
            self.backend = TorchModel(model, extra, source=source, device=device, threads=threads)
            self.model, self.fbank = self.backend.model, self.backend.fbank
        if not isinstance(vad, (bool, np.bool_)):  # "no" would be truthy
            raise ConfigError(f"vad must be True or False, got {vad!r}")
        self.vad = bool(vad)
        self.source = source
        self.min_seconds = float(extra.get("min_seconds", MIN_SECONDS))
        self.dim = self.backend.dim
        self.model_id = self.backend.model_id
        self.calibration = extra.get("calibration")
        self._operating_point = operating_point
        self._calibrated = _calibrated_threshold(self.calibration, operating_point, threshold, source)
        # (duration calibration, LLR threshold at the operating point) for raw scores and, once a
        # cohort file brings one, for its AS-norm scores
        raw = not isinstance(self.calibration, dict) or self.calibration.get("score_norm", "none") == "none"
        self._raw_duration = _duration_rule(self.calibration, operating_point, source) if raw else None
        self._cohort_duration: tuple[Any, float] | None = None
        self.threshold_override = None if threshold is None else _finite(threshold, "threshold")
        self._cohort: np.ndarray | None = None
        self.top_n = TOP_N
        self.store = EnrollmentStore(":memory:" if db is None else db, model_id=self.model_id, dim=self.dim)
        self._index: SpeakerIndex | None = None

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        db: str | os.PathLike | None = None,
        operating_point: str | None = None,
        threshold: float | None = None,
        device: str = "cpu",
        backend: str = "auto",
        threads: int | None = None,
        vad: bool = True,
    ) -> Verifier:
        """A verifier for the checkpoint at ``path`` (default: the shipped model, ``lightsv/assets/default.pt``).

        ``operating_point`` is ``"eer"`` (the default when the checkpoint is calibrated) or
        ``"far=<rate>"``; ``threshold`` overrides the calibration with a fixed value.
        ``backend``: ``"torch"`` (a checkpoint), ``"onnx"`` (an exported ``.onnx`` file, run by
        onnxruntime without torch; default file: the shipped ``lightsv/assets/default.onnx``) or
        ``"auto"``: onnx for a ``.onnx`` path or when torch is not installed, else torch.
        ``threads``: CPU threads for embedding (default 1, see :func:`lightsv.runtime.default_threads`).
        ``vad=False`` embeds clips whole instead of trimmed to their speech.
        """
        kind = choose_backend(path, backend)
        if kind == "onnx":
            path = DEFAULT_ONNX if path is None else path
            if path == DEFAULT_ONNX and not DEFAULT_ONNX.is_file():
                raise CheckpointError(f"the default ONNX model {DEFAULT_ONNX} is missing from this installation")
            return cls(
                OnnxModel(path, threads=threads),
                db=db,
                operating_point=operating_point,
                threshold=threshold,
                source=str(path),
                vad=vad,
            )
        from lightsv.checkpoint import load_model

        if path is None:
            if not DEFAULT_MODEL.is_file():
                raise CheckpointError(
                    f"the default model {DEFAULT_MODEL} is missing from this installation; "
                    "give a checkpoint path instead (--model on the command line)"
                )
            path = DEFAULT_MODEL
        model, extra = load_model(path, return_extra=True)
        return cls(
            model,
            extra=extra,
            db=db,
            operating_point=operating_point,
            threshold=threshold,
            device=device,
            source=str(path),
            threads=threads,
            vad=vad,
        )

    # ------------------------------------------------------------------ embeddings

    def embed(self, clip, *, sample_rate: int | None = None) -> np.ndarray:
        """The L2-normalised embedding (float32 [D]) of one clip: a path, or an array/tensor with ``sample_rate``."""
        return self.embed_many([clip], sample_rate=sample_rate, progress=False)[0]

    def embed_many(
        self, clips, *, sample_rate: int | None = None, batch_size: int = 16, progress: bool | None = None
    ) -> np.ndarray:
        """Embeddings [N, D] of ``clips``, in order, computed in zero-padded batches.

        Clips are batched by length, so little compute goes to padding (the models pool over valid
        frames only, so padding does not change an embedding). ``progress``: a tqdm bar on stderr;
        None shows it for more than one batch when stderr is a terminal.
        """
        return self._embed_many(clips, sample_rate, batch_size, progress)[0]

    def _embed_many(
        self, clips, sample_rate: int | None, batch_size: int, progress: bool | None
    ) -> tuple[np.ndarray, list[str]]:
        """Embeddings and the sha256 of each clip's samples as loaded (16 kHz float32, before speech trimming)."""
        clips = list(clips)
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
        out = np.zeros((len(clips), self.dim), dtype=np.float32)
        seconds = [_approx_samples(c) for c in clips]
        order = sorted(range(len(clips)), key=seconds.__getitem__)
        hashes = [""] * len(clips)
        with _bar(len(clips), progress, batch_size) as bar:
            for index in _batches(order, seconds, batch_size):
                wavs = []
                for i in index:
                    wav = load_audio(clips[i], sample_rate, min_seconds=self.min_seconds)
                    hashes[i] = hashlib.sha256(wav.tobytes()).hexdigest()
                    wavs.append(self._speech(wav, clips[i]))
                out[index] = self._forward(wavs)
                bar.update(len(index))
        return out, hashes

    def _speech(self, wav: np.ndarray, clip) -> np.ndarray:
        if not self.vad:
            return wav
        name = f"audio file '{os.fspath(clip)}'" if isinstance(clip, (str, os.PathLike)) else "audio"
        return speech.trim(wav, min_seconds=self.min_seconds, name=name)

    def _forward(self, wavs: list[np.ndarray]) -> np.ndarray:
        # embed_batch repeats short clips on the torch path; the onnx backend gets the same input.
        emb = self.backend.embed(wavs if isinstance(self.backend, TorchModel) else repeat_short(wavs))
        if not np.isfinite(emb).all():  # finite samples far outside [-1, 1] overflow the filterbank
            peak = max(float(np.abs(w).max()) if len(w) else 0.0 for w in wavs)
            raise AudioError(
                f"the audio does not embed to finite numbers (peak sample {peak:.3g}; samples are floats in [-1, 1])"
            )
        return emb

    # ------------------------------------------------------------------ enrollment

    def enroll(self, name: str, clips, *, sample_rate: int | None = None) -> Enrollment:
        """Add the clips' embeddings to speaker ``name`` (created if new).

        A clip whose samples the speaker already has (an exact duplicate, whatever its file name) is
        skipped, not stored twice. Returns an :class:`~lightsv.store.Enrollment`: ``added``,
        ``skipped`` (indices into ``clips``) and the speaker's ``total``.
        """
        if isinstance(clips, (str, os.PathLike)):
            clips = [clips]
        clips = list(clips)
        if not clips:
            raise InvalidEnrollmentError(f"enrolling {name!r} needs at least one clip")
        # Checked before the clips are embedded, so a bad name costs nothing.
        self.store.check_name(name)
        embeddings, hashes = self._embed_many(clips, sample_rate, 16, None)
        sources = [os.fspath(c) if isinstance(c, (str, os.PathLike)) else None for c in clips]
        return self.store.enroll(name, embeddings, sources=sources, hashes=hashes)

    def speakers(self, sources: bool = False) -> list[dict]:
        """Enrolled speakers: dicts of name, count (clips), created and updated (ISO-8601 UTC), and
        with ``sources`` where each clip came from."""
        return self.store.speakers(sources=sources)

    def delete(self, name: str) -> int:
        """Forget speaker ``name``; returns the number of embeddings removed."""
        self._check_enrolled(name)
        return self.store.delete(name)

    def speaker_embedding(self, name: str) -> np.ndarray:
        """The unit-length mean of the speaker's enrollment embeddings."""
        self._check_enrolled(name)
        return self.store.mean(name)

    def _check_enrolled(self, name) -> None:
        if name not in self.store:
            names = [s["name"] for s in self.store.speakers()]
            known = ", ".join(map(repr, names[:10])) + (" ..." if len(names) > 10 else "") if names else "none"
            raise UnknownSpeakerError(f"speaker {name!r} is not enrolled (enrolled: {known})")

    # ------------------------------------------------------------------ scoring

    def verify(
        self,
        name: str,
        clip,
        *,
        sample_rate: int | None = None,
        enrolled_seconds: float | None = None,
        spoof_check: bool = False,
        countermeasure=None,
    ) -> Verification | SpoofAwareVerification:
        """Score ``clip`` against enrolled speaker ``name`` and decide at the threshold.

        With a duration-aware calibration of the current scores (the model's for raw cosines, the
        cohort file's for AS-norm; and no ``threshold=`` override) the decision is
        ``llr >= `` the operating point's LLR threshold; ``enrolled_seconds``: how much audio the
        enrollment held (default: the calibration's typical enrollment; the store does not record it).
        Raises ThresholdError, before any work, when there is no threshold for the current scores.
        ``spoof_check=True`` also scores the clip with a countermeasure (default: the shipped one; or
        ``countermeasure=`` a path or :class:`lightsv.spoof.Countermeasure`) and rejects a clip judged
        spoofed whatever its speaker score: a :class:`lightsv.spoof.sasv.SpoofAwareVerification`.
        """
        enrolled_seconds = _enrolled_seconds(enrolled_seconds)
        if spoof_check:
            from lightsv.spoof import sasv

            return sasv.verify(
                self,
                name,
                clip,
                sample_rate=sample_rate,
                enrolled_seconds=enrolled_seconds,
                countermeasure=countermeasure,
            )
        if not self._uses_llr:
            threshold = self.decision_threshold()
            score = self.score(self.speaker_embedding(name), self.embed(clip, sample_rate=sample_rate))
            return Verification(name, score, threshold, bool(score >= threshold))
        assert self.duration is not None and self._llr_threshold is not None
        enrolled = self.speaker_embedding(name)
        wav = self._speech(load_audio(clip, sample_rate, min_seconds=self.min_seconds), clip)
        seconds = len(wav) / SAMPLE_RATE
        score = self.score(enrolled, self._forward([wav])[0])
        llr = self.duration.llr(score, seconds, enrolled_seconds)
        threshold = self.duration.score_at(self._llr_threshold, seconds, enrolled_seconds)
        return Verification(name, score, threshold, bool(llr >= self._llr_threshold), llr, seconds)

    @property
    def duration(self):
        """The duration-aware calibration (:class:`lightsv.duration.DurationCalibration`) of the current
        scores: the model's for raw cosines, the cohort file's for AS-norm scores; None without one."""
        rule = self._duration_rule
        return None if rule is None else rule[0]

    @property
    def _llr_threshold(self) -> float | None:
        rule = self._duration_rule
        return None if rule is None else rule[1]

    @property
    def _duration_rule(self) -> tuple[Any, float] | None:
        return self._raw_duration if self._cohort is None else self._cohort_duration

    @property
    def _uses_llr(self) -> bool:
        return self.duration is not None and self.threshold_override is None

    def stream(
        self,
        name: str,
        *,
        max_seconds: float = 6.0,
        error=0.05,
        enrolled_seconds: float | None = None,
        config=None,
        vad=None,
        sample_rate: int = SAMPLE_RATE,
    ):
        """A :class:`lightsv.streaming.StreamSession` verifying ``name`` on audio fed as it comes, at
        ``sample_rate`` (other rates than 16 kHz are resampled as they come).

        ``error``: the miss and false-accept rates asked of the sequential test, one number for both or
        ``(miss, false_accept)``; ``max_seconds``: the decision is forced after this much audio heard.
        Needs a duration-aware calibration of the current scores (ThresholdError otherwise): the
        model's, or with a cohort (:meth:`set_cohort`) the cohort file's, and the stream is then scored
        with AS-norm. ``vad`` (default: the verifier's, as for clips): only the stream's speech, found as
        it comes (:class:`lightsv.speech.SpeechGate`), is embedded (a :class:`lightsv.speech.SpeechConfig`:
        with those detector settings); a stream without speech cannot be decided (AudioError "no speech
        found", as for a clip).
        """
        from lightsv.streaming import StreamSession

        duration = self.duration
        if duration is None:
            if self._cohort is not None:
                raise ThresholdError(
                    "the cohort has no duration-aware calibration for its AS-norm scores, which streaming "
                    "decides with; use a cohort file that has one (the shipped 'default'), calibrate one "
                    "(python benchmarks/streaming.py --cohort FILE --calibrate-into FILE) or turn AS-norm "
                    "off (set_cohort(None))"
                )
            raise ThresholdError(
                f"{self.source} has no duration-aware calibration, which streaming decides with; "
                "calibrate it on trials (python benchmarks/streaming.py --model M --calibrate-into CKPT)"
            )
        enrolled_seconds = _enrolled_seconds(enrolled_seconds)
        enrolled = self.speaker_embedding(name)
        score = None
        if self._cohort is not None:  # the cohort as it is now, whatever set_cohort does during the stream
            members, top_n = self._cohort, self.top_n
            enrolled_stats = cohorts.top_stats(members @ enrolled, top_n)

            def score(running: np.ndarray) -> float:
                test_stats = cohorts.top_stats(members @ running, top_n)
                return float(cohorts.asnorm(float(running @ enrolled), enrolled_stats, test_stats))

        return StreamSession(
            name,
            enrolled,
            lambda wav: self._forward([wav])[0],
            lambda score, seconds: duration.llr(score, seconds, enrolled_seconds),
            score=score,
            min_seconds=self.min_seconds,
            max_seconds=max_seconds,
            error=error,
            config=config,
            vad=self.vad if vad is None else vad,
            sample_rate=sample_rate,
        )

    def identify(self, clip, *, top_k: int = 5, sample_rate: int | None = None) -> Identification:
        """The ``top_k`` enrolled speakers that best match ``clip``, best first, and whether the best
        passes the threshold. With nobody enrolled: no candidates, ``speaker`` None, not accepted.

        The search ranks speakers by cosine (exact below :data:`lightsv.search.ANN_MIN` speakers,
        approximate above); with a cohort the candidates are re-scored with AS-norm and re-ranked.
        """
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ConfigError(f"top_k must be a positive integer, got {top_k!r}")
        threshold = self.decision_threshold()
        if self._index is None:
            self._index = SpeakerIndex(self.store)
        if len(self._index) == 0:
            return Identification(None, None, threshold, False, [])
        test = self.embed(clip, sample_rate=sample_rate)
        found = self._index.search(test, top_k if self._cohort is None else max(top_k, 50))
        if self._cohort is not None:
            # The kept means of the few candidates, one indexed lookup each, whatever the store's size.
            found = sorted(((n, self.score(self.store.mean(n), test)) for n, _ in found), key=lambda c: -c[1])
        found = found[:top_k]
        best, score = found[0]
        return Identification(best, score, threshold, bool(score >= threshold), found)

    def compare(self, a, b, *, sample_rate: int | None = None) -> float:
        """The score of two clips (cosine, or AS-norm when a cohort is set); symmetric in ``a`` and ``b``."""
        ea, eb = self.embed_many([a, b], sample_rate=sample_rate, progress=False)
        return self.score(ea, eb)

    def score(self, enrolled: np.ndarray, test: np.ndarray) -> float:
        """The score of two unit-length embeddings, AS-norm normalised when a cohort is set."""
        raw = float(np.dot(enrolled, test))
        if self._cohort is None:
            return raw
        return float(cohorts.asnorm(raw, self._cohort_stats(enrolled), self._cohort_stats(test)))

    def set_cohort(
        self, cohort, *, top_n: int | None = None, sample_rate: int | None = None, batch_size: int = 16
    ) -> None:
        """Turn on adaptive s-norm (AS-norm) with ``cohort``; None turns it off.

        ``cohort``: a cohort file (``.npz``, :mod:`lightsv.cohort`; ``"default"``: the one shipped for
        the shipped model), an embedding array [N, D], or a list of clips from speakers that will not
        be verified (impostors). Each side of a trial is normalised by the mean and standard deviation
        of its ``top_n`` highest cohort scores (default: the file's, else 200), and the two are
        averaged, so the score stays symmetric. Normalised scores are on another scale than raw
        cosines: the threshold then comes from the cohort file's calibration, a checkpoint calibration
        made with AS-norm (``calibration["score_norm"] == "asnorm"``) or ``threshold=``; without one,
        decisions raise ThresholdError. A cohort file's duration-aware calibration (the shipped one has
        one) is used as the model's is for raw cosines: ``verify`` decides on its LLR and ``stream``
        scores with AS-norm.
        """
        # the checkpoint's own thresholds again, until a cohort file brings thresholds for its scores
        self._calibrated = _calibrated_threshold(self.calibration, self._operating_point, None, self.source)
        self._cohort_duration = None
        if cohort is None:
            self._cohort = None
            return
        if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 2):
            raise ConfigError(f"top_n must be an integer >= 2, got {top_n!r}")
        calibration = None
        if cohorts.names_a_file(cohort):
            saved = cohorts.read(cohort, self.model_id)
            array, calibration, top_n = saved.embeddings, saved.calibration, top_n or saved.top_n
            if array.shape[1] != self.dim:
                raise CheckpointError(f"{cohort}: {array.shape[1]}-dim cohort for a {self.dim}-dim model")
            if calibration is not None and top_n != saved.top_n:
                calibration = None  # its thresholds were measured with the file's top_n
        elif _is_embeddings(cohort, self.dim):
            tensor = _tensor_type()
            array = (
                cohort.detach().cpu().numpy()
                if tensor is not None and isinstance(cohort, tensor)
                else np.asarray(cohort)
            )
        else:
            clips = [cohort] if isinstance(cohort, (str, os.PathLike)) else list(cohort)
            array = self.embed_many(clips, sample_rate=sample_rate, batch_size=batch_size)
        if len(array) < 2:
            raise ConfigError(f"a cohort needs at least 2 members, got {len(array)}")
        self._cohort, self.top_n = cohorts.unit_rows(array), top_n or TOP_N
        if calibration is not None:
            self._calibrated = _calibrated_threshold(calibration, self._operating_point, None, f"{cohort}")
            self._cohort_duration = _duration_rule(calibration, self._operating_point, f"{cohort}")

    @property
    def cohort_size(self) -> int:
        return 0 if self._cohort is None else len(self._cohort)

    @property
    def score_norm(self) -> str:
        """``"asnorm"`` with a cohort, else ``"none"`` (raw cosine)."""
        return "none" if self._cohort is None else "asnorm"

    def _cohort_stats(self, emb: np.ndarray) -> tuple[float, float]:
        assert self._cohort is not None
        mean, std = cohorts.top_stats(self._cohort @ emb, self.top_n)
        return float(mean), float(std)

    @property
    def threshold(self) -> float | None:
        """The accept threshold for the current scores, or None when there is none for them."""
        if self.threshold_override is not None:
            return self.threshold_override
        norm, value = self._calibrated
        return value if norm == self.score_norm else None

    def decision_threshold(self) -> float:
        """The threshold, or ThresholdError saying why there is none and how to get one."""
        threshold = self.threshold
        if threshold is not None:
            return threshold
        if self.calibration is None:
            why = f"{self.source} has no calibration"
            fix = "calibrate it on a trial list (lightsv score TRIALS --wav-root DIR --model M --calibrate OUT)"
        else:
            norm = self._calibrated[0]
            why = f"scores are {self.score_norm!r} but {self.source} is calibrated for {norm!r} scores"
            fix = (
                "calibrate on scores of the same kind (lightsv.calibrate.calibration(scores, labels, "
                f"score_norm={self.score_norm!r}))"
                + (" or turn AS-norm off (set_cohort(None))" if self.score_norm == "asnorm" else "")
            )
        raise ThresholdError(f"no threshold to decide at: {why}; pass threshold= (--threshold) or {fix}")

    # ------------------------------------------------------------------ lifetime

    def close(self) -> None:
        self.store.close()

    def __enter__(self) -> Verifier:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Verifier({self.source!r}, model_id={self.model_id!r}, threshold={self.threshold!r}, "
            f"score_norm={self.score_norm!r}, store={str(self.store.path)!r})"
        )


BACKENDS = ("auto", "torch", "onnx")


def choose_backend(path, backend: str) -> str:
    """``"torch"`` or ``"onnx"`` for a model ``path`` (None: the shipped model) and a requested ``backend``."""
    import importlib.util

    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r}: use one of {', '.join(BACKENDS)}")
    is_onnx = path is not None and str(path).lower().endswith(".onnx")
    try:
        has_torch = importlib.util.find_spec("torch") is not None
    except ImportError:  # an import hook that refuses torch
        has_torch = False
    if backend == "auto":
        return "onnx" if is_onnx or not has_torch else "torch"
    if backend == "torch" and is_onnx:
        raise ConfigError(f"{path}: an ONNX file runs on the onnx backend (--backend onnx), not torch")
    if backend == "onnx" and path is not None and not is_onnx:
        raise ConfigError(
            f"{path}: the onnx backend reads .onnx files; export the checkpoint first "
            f"(lightsv export --model {path} --out model.onnx)"
        )
    if backend == "torch" and not has_torch:
        raise ConfigError("the torch backend needs torch, which is not installed (use --backend onnx)")
    return backend


class TorchModel:
    """A torch model and its filterbank behind the same interface as :class:`lightsv.runtime.OnnxModel`."""

    def __init__(self, model: nn.Module, extra: dict, *, source: str, device: str = "cpu", threads: int | None = None):
        from lightsv.features import Fbank

        self.threads = check_threads(threads)
        self.model = model.eval().to(device)
        self.fbank = Fbank(_features(extra, source)).to(device)
        feat_dim = getattr(model, "feat_dim", self.fbank.config.n_mels)
        if feat_dim != self.fbank.config.n_mels:
            raise CheckpointError(
                f"{source}: model takes {feat_dim} features but its filterbank makes {self.fbank.config.n_mels}"
            )
        self.dim = int(getattr(model, "embed_dim", 0)) or self.embed([np.zeros(SAMPLE_RATE, np.float32)]).shape[1]
        self.model_id = model_id(model)

    def embed(self, wavs: list[np.ndarray]) -> np.ndarray:
        import torch

        # torch's thread count is global to the process: set for this call, then restored.
        before = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        try:
            return embed_batch(self.model, self.fbank, wavs)
        finally:
            torch.set_num_threads(before)


def repeat_short(wavs: list[np.ndarray]) -> list[np.ndarray]:
    """Clips shorter than REPEAT_SECONDS repeated up to it (np.resize repeats)."""
    shortest = int(REPEAT_SECONDS * SAMPLE_RATE)
    return [np.resize(w, shortest) if len(w) < shortest else w for w in wavs]


def embed_batch(model: nn.Module, fbank: Fbank, wavs: list[np.ndarray]) -> np.ndarray:
    """Unit-length embeddings [N, D] of waveforms, run as one zero-padded batch (exact: models pool
    over valid frames only)."""
    import torch
    from torch import nn

    device = next(model.parameters()).device
    wavs = repeat_short(wavs)
    lengths = torch.tensor([len(w) for w in wavs])
    batch = torch.zeros(len(wavs), int(lengths.max()))
    for row, wav in zip(batch, wavs, strict=True):
        row[: len(wav)] = torch.from_numpy(wav)
    with torch.inference_mode():
        feats, frames = fbank(batch.to(device), lengths.to(device))
        emb = model(feats, frames).float()
    return nn.functional.normalize(emb, dim=1).cpu().numpy()


def model_id(model: nn.Module) -> str:
    """``sha256:<16 hex>`` of what makes the embeddings: architecture, config, tuners and weights.

    Hashing the model rather than the checkpoint file keeps the id, and so the enrollment stores made
    with it, valid when only the checkpoint's metadata changes (e.g. a calibration is written into it).
    """
    import torch

    digest = hashlib.sha256()
    config = getattr(model, "config", None)
    head = {
        "model": getattr(model, "model_name", type(model).__name__),
        "config": _id_config(config) if dataclasses.is_dataclass(config) and not isinstance(config, type) else None,
        "tuners": list(getattr(model, "tuners", [])),
    }
    digest.update(json.dumps(head, sort_keys=True, default=str).encode())
    for key, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        digest.update(f"{key}:{t.dtype}:{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return "sha256:" + digest.hexdigest()[:16]


def _id_config(config) -> dict:
    """The config as the model id hashes it: options added after models were shipped
    (lightsv.models.pooling.ID_OMITS_DEFAULT) are left out at their defaults, keeping existing ids."""
    out = dataclasses.asdict(config)
    for f in dataclasses.fields(config):
        if f.metadata.get("id_omits_default") and out[f.name] == f.default:
            del out[f.name]
    return out


def example_clips() -> dict[str, list[Path]]:
    """The bundled example speakers (LibriSpeech, CC BY 4.0): name -> clips sorted by name."""
    speakers = (
        {d.name: sorted(d.glob("*.flac")) for d in sorted(EXAMPLES.iterdir()) if d.is_dir()}
        if EXAMPLES.is_dir()
        else {}
    )
    speakers = {name: clips for name, clips in speakers.items() if clips}
    if not speakers:
        raise LightsvError(f"no example clips in {EXAMPLES} (is the package installed with its data?)")
    return speakers


def parse_operating_point(text: str) -> float | None:
    """None for ``"eer"``, the false-accept rate for ``"far=<rate>"``."""
    text = str(text).strip().lower()
    if text == "eer":
        return None
    if text.startswith("far="):
        try:
            far = float(text[4:])
        except ValueError:
            far = math.nan
        if 0.0 <= far <= 1.0:
            return far
    raise ConfigError(f"operating point {text!r}: use 'eer' or 'far=<rate>' with a rate in [0, 1], e.g. 'far=0.01'")


def _calibrated_threshold(calibration, operating_point, threshold, source) -> tuple[str, float | None]:
    """(score_norm the threshold is for, threshold) from the checkpoint's calibration."""
    if threshold is not None and operating_point is not None:
        raise ConfigError("give either threshold or operating_point, not both")
    far = parse_operating_point(operating_point or "eer")
    if calibration is None:
        if operating_point is not None:
            raise CheckpointError(
                f"{source}: has no calibration, so operating point {operating_point!r} "
                "has no threshold (pass threshold= or calibrate the checkpoint)"
            )
        return "none", None
    if not isinstance(calibration, dict):
        raise CheckpointError(f"{source}: calibration is a {type(calibration).__name__}, expected a dict")
    norm = calibration.get("score_norm", "none")
    if far is None:
        value = calibration.get("eer_threshold")
        what = "eer_threshold"
        if value is None and calibration.get("duration") is not None:
            return norm, None  # only the duration-aware rule (verify, stream) decides
    else:
        points = calibration.get("far_thresholds") or {}
        if not isinstance(points, dict):
            raise CheckpointError(f"{source}: calibration far_thresholds is a {type(points).__name__}, not a mapping")
        matches = [v for k, v in points.items() if _float_or_nan(k) == far]
        if not matches and calibration.get("duration") is not None:
            return norm, None
        if not matches:
            raise CheckpointError(
                f"{source}: calibration has no threshold at far={far:g} "
                f"(it has: eer, {', '.join(f'far={k}' for k in points) or 'no far points'})"
            )
        value, what = matches[0], f"far_thresholds[{far:g}]"
    return norm, _finite(value, f"{source}: calibration {what}", CheckpointError)


def _enrolled_seconds(value) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise ConfigError(f"enrolled_seconds must be a positive number of seconds or None, got {value!r}")
    return float(value)


def _duration_rule(calibration, operating_point, source: str) -> tuple[Any, float] | None:
    """(duration calibration, its LLR threshold at the operating point) from a calibration, or None."""
    if not isinstance(calibration, dict) or calibration.get("duration") is None:
        return None
    from lightsv.duration import DurationCalibration

    duration = DurationCalibration.from_dict(calibration["duration"], source)
    return duration, duration.llr_threshold(parse_operating_point(operating_point or "eer"))


def _features(extra: dict, source: str) -> FbankConfig:
    from lightsv.features import FbankConfig

    # The trainer records its full config; the filterbank must match what the model was trained on.
    options = extra.get("features")
    if options is None:
        options = (
            (extra.get("training_config") or {}).get("features")
            if isinstance(extra.get("training_config"), dict)
            else None
        )
    if options is None:
        return FbankConfig()
    try:
        return FbankConfig(**options)
    except TypeError as err:
        raise CheckpointError(f"{source}: bad filterbank options in its metadata ({err})") from None


def _tensor_type() -> Any:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    return None if torch is None else torch.Tensor


def _is_embeddings(cohort, dim: int) -> bool:
    tensor = _tensor_type()
    if tensor is not None and isinstance(cohort, tensor):
        return cohort.dim() == 2 and cohort.shape[1] == dim and cohort.is_floating_point()
    return isinstance(cohort, np.ndarray) and cohort.ndim == 2 and cohort.shape[1] == dim and cohort.dtype.kind == "f"


#: Padded audio per forward pass at most (unless one clip is longer): bounds the memory of a batch of
#: long clips, which a fixed clip count does not.
BATCH_SECONDS = 160.0


def _batches(order: list[int], seconds: list[float], batch_size: int) -> list[list[int]]:
    """Consecutive groups of ``order`` (sorted by length) of at most ``batch_size`` clips and
    BATCH_SECONDS of padded audio (the group's longest clip times its size)."""
    groups: list[list[int]] = []
    for i in order:
        if groups and len(groups[-1]) < batch_size and (len(groups[-1]) + 1) * seconds[i] <= BATCH_SECONDS:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _approx_samples(clip) -> float:
    # For ordering batches only; a clip that cannot be read fails later, with its own message.
    if isinstance(clip, (str, os.PathLike)):
        try:
            meta = audio_info(clip)
            return meta.frames / meta.samplerate
        except LightsvError:
            return 0.0
    shape = getattr(clip, "shape", None)
    return float(max(shape)) / SAMPLE_RATE if shape else 0.0


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)


def _finite(value, name: str, error: type[Exception] = ConfigError) -> float:
    try:
        value = float(value)
    except (TypeError, ValueError):
        raise error(f"{name} must be a number, got {value!r}") from None
    if math.isnan(value):
        raise error(f"{name} must be a number, got NaN")
    return value


def _float_or_nan(text) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        return math.nan


def _bar(total: int, progress: bool | None, batch_size: int):
    from tqdm import tqdm

    if progress is None:  # more than one batch, and tqdm hides itself when stderr is not a terminal
        disable = True if total <= batch_size else None
    else:
        disable = not progress
    return tqdm(total=total, desc="embedding", unit="clip", file=sys.stderr, leave=False, disable=disable)
