"""Duration-aware scores and early-deciding streams of the shipped model, on every dev list.

    python benchmarks/streaming.py                      # writes benchmarks/results/streaming.{json,md}
    python benchmarks/streaming.py --no-vad             # clips and streams raw: results/streaming_raw.{json,md}
    python benchmarks/streaming.py --stream-margin 0.1  # streams gated with 0.1 s margins: streaming_margin0.1.*
    python benchmarks/streaming.py --calibrate-into lightsv/assets/default.pt   # + the pooled fit into a checkpoint
    python benchmarks/streaming.py --cohort default     # AS-norm scores: results/streaming_asnorm.{json,md}
    python benchmarks/streaming.py --cohort default --calibrate-into lightsv/assets/cohort.npz  # + fit into it

Needs the dev data beside the repo (../shared/data/speech). Embedded by the shipped model in
onnxruntime on one thread (the same model id as default.pt). As the verifier does by default, clips
are trimmed to their speech (lightsv.speech.trim) and streams go through the same detector run
causally (lightsv.speech.SpeechGate), so silence is neither embedded nor counted as evidence;
``--no-vad`` embeds everything (enrollments, whole clips, cuts and streams). Embeddings are cached
under exp/streaming_cache/ (per model id and mode).

Cross-validated over the lists: the duration calibration that scores list X is fitted on the other
two lists, so no figure comes from a fit that saw its own trials. The calibration data are every
trial of those lists with the test side cut to its central 0.25, 0.5, 1, 2 and 3 s (of the trimmed
clip), cut from its start as the stream embeds it, and whole (enrollment whole). ``--calibrate-into``
fits on all three lists pooled and stores that.

Part 1, duration-aware scores: per test length, EER of the raw cosine and of the LLR, and the error
rates at one decision rule each: raw cosine at the EER threshold of the same calibration data pooled
over lengths (one threshold for every length), LLR >= 0.

Part 2, streams: each test clip is fed from its start through lightsv.streaming.StreamSession (0.25 s
updates, 3 s blocks, 0.1 s kept before onsets, bounds only after 0.5 s of speech: the session's
defaults), and the sequential test decides at the requested error rates, or is forced at
the clip's end or max_seconds (of audio heard). Seconds of audio and of speech to decision, the share
decided early, miss and false-accept rates, next to the full-clip EER (oracle threshold), the
full-clip HTER at the same calibrated rule (LLR >= 0), and fixed windows of the stream's first 1 s /
2 s of speech (of audio with --no-vad). The same streams are replayed after a 2 s run-up (faint
noise, or the recording's own background), as when a session opens before the user speaks.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import zlib
from pathlib import Path

import numpy as np

import lightsv
from lightsv import cohort as cohorts
from lightsv import metrics, speech
from lightsv.audio import SAMPLE_RATE, central_crop
from lightsv.calibrate import write_calibration
from lightsv.duration import DurationCalibration, fit
from lightsv.streaming import STREAM_SPEECH, StreamConfig, StreamSession, error_rates, sprt_bounds
from lightsv.trials import read_trials

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
CACHE = REPO / "exp" / "streaming_cache"
LISTS = ("trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt")
SEGMENTS = (0.25, 0.5, 1.0, 2.0, 3.0)
ERRORS = (0.01, 0.05, 0.1, 0.2)
MAX_SECONDS = 6.0
WINDOWS = (1.0, 2.0)
#: coarser update cadences replayed on the recorded trajectories (seconds embedded between updates)
CADENCES = (0.5, 1.0)
CADENCE_ERRORS = (0.05, 0.1)
#: streams also replayed with this much faint noise before the clip (a session opened before the user speaks)
LEAD_IN, LEAD_DB = 2.0, -60.0
LEAD_ERRORS = (0.01, 0.05)


class Embeddings:
    """Whole-clip, centre-cut and stream embeddings of a list's clips, cached on disk."""

    def __init__(self, verifier, root: Path, trials, cache: Path, vad: bool, margin: float | None = None, cohort=None):
        self.v, self.root, self.trials = verifier, root, trials
        #: (cohort embeddings, top_n) for AS-norm scores, or None: raw cosines
        self.cohort = cohort
        self.files = sorted({p for t in trials for p in (t.enroll, t.test)})
        self.tests = sorted({t.test for t in trials})
        cache.mkdir(parents=True, exist_ok=True)
        audio = {}

        def raw(f):
            return lightsv.audio.load(root / f)

        def wav(f):  # what the verifier embeds of a clip: its speech with margins, or all of it
            if f not in audio:
                audio[f] = speech.trim(raw(f), min_seconds=verifier.min_seconds, name=f) if vad else raw(f)
            return audio[f]

        whole = cache / "whole.npz"
        if not whole.exists():
            emb = verifier.embed_many([wav(f) for f in self.files], sample_rate=SAMPLE_RATE, progress=False)
            np.savez(whole, emb=emb, seconds=[len(wav(f)) / SAMPLE_RATE for f in self.files])
        data = np.load(whole)
        self.emb = dict(zip(self.files, data["emb"], strict=True))
        self.seconds = dict(zip(self.files, data["seconds"].tolist(), strict=True))
        self.cut: dict[float, dict] = {}
        for s in SEGMENTS:
            path = cache / f"cut{s:g}.npy"
            if not path.exists():
                clips = [central_crop(wav(f), s) for f in self.tests]
                np.save(path, verifier.embed_many(clips, sample_rate=SAMPLE_RATE, progress=False))
            self.cut[s] = dict(zip(self.tests, np.load(path), strict=True))
        self.vad = vad
        gate = speech.SpeechConfig(margin_s=margin) if vad and margin is not None else vad
        # (streams before the 0.1 s run-up before onsets were cached without a suffix)
        suffix = f"_margin{margin:g}" if margin is not None else f"_onset{STREAM_SPEECH.onset_margin:g}" if vad else ""
        suffix += "_sure"  # (trajectories before the sure column were cached without it)
        self.stream, self.ms_per_update, self.load = self._streams(cache / f"stream{suffix}.npz", raw, gate)
        # The same streams opened LEAD_IN s before the speaker starts (faint noise first): replayed with
        # the calibration fitted on the streams above, never fitted on.
        path = cache / f"stream_lead{LEAD_IN:g}{suffix}.npz"
        self.lead_in, _, _ = self._streams(path, lambda f: lead_in(raw(f), f), gate)
        # ... and after LEAD_IN s of the recording's own background (its quietest 50 ms, tiled)
        path = cache / f"stream_room{LEAD_IN:g}{suffix}.npz"
        self.room_in, _, _ = self._streams(path, lambda f: room_in(raw(f)), gate)
        # each embedding's cohort statistics, once (AS-norm needs them for both sides of every trial)
        self.whole_stats = dict(zip(self.files, self.cohort_stats(np.stack(list(self.emb.values()))), strict=True))
        self.cut_stats = {
            s: dict(zip(self.tests, self.cohort_stats(np.stack([cut[f] for f in self.tests])), strict=True))
            for s, cut in self.cut.items()
        }
        for streams in (self.stream, self.lead_in, self.room_in):
            for f, (at, emb, _) in streams.items():
                streams[f] = (at, emb, self.cohort_stats(emb))

    def cohort_stats(self, rows: np.ndarray) -> np.ndarray:
        """[n, 2]: mean and standard deviation of each row's top_n cohort scores (zeros, ones: no cohort)."""
        if self.cohort is None:
            return np.tile(np.array([0.0, 1.0]), (len(rows), 1))
        members, top_n = self.cohort
        out = []
        for start in range(0, len(rows), 4096):  # [rows, cohort] scores a block at a time
            out.append(np.stack(cohorts.top_stats(rows[start : start + 4096] @ members.T, top_n), axis=1))
        return np.concatenate(out) if out else np.zeros((0, 2))

    def score(self, enroll: str, rows: np.ndarray, stats: np.ndarray):
        """Scores of test embedding(s) ``rows`` (with their cohort ``stats``) against clip ``enroll``:
        the cosine, or AS-norm as ``Verifier.score`` computes it when there is a cohort."""
        raw = rows @ self.emb[enroll]
        if self.cohort is None:
            return raw
        stats = np.asarray(stats)
        return cohorts.asnorm(raw, self.whole_stats[enroll], (stats[..., 0], stats[..., 1]))

    def _streams(self, path: Path, clip, vad) -> tuple[dict, float, float | None]:
        """Trajectories of every test clip, ms per update and the load average when they were computed."""
        if not path.exists():
            start, runs = time.perf_counter(), [stream_trajectory(self.v, clip(f), vad) for f in self.tests]
            updates = sum(len(r[0]) for r in runs)
            np.savez(
                path,
                seconds=np.concatenate([r[0] for r in runs]),
                emb=np.concatenate([r[1] for r in runs]).astype(np.float32),
                counts=[len(r[0]) for r in runs],
                ms_per_update=1000 * (time.perf_counter() - start) / max(updates, 1),
                load=os.getloadavg()[0],
            )
        data = np.load(path)
        # each data[key] reads the whole array again: read each once, slice views of it
        seconds, emb, counts = data["seconds"], data["emb"], data["counts"]
        ends = np.cumsum(counts)
        #: per test clip: ([heard, speech, embedded] seconds and sure at each update [n, 4], running embeddings,
        #: their cohort statistics, filled in by __init__)
        streams = {
            f: (seconds[e - n : e], emb[e - n : e], None) for f, n, e in zip(self.tests, counts, ends, strict=True)
        }
        if not vad:  # the speech heard by each update, as the detector would have counted it (not used)
            for f in self.tests:
                at = streams[f][0].copy()
                at[:, 1] = speech_heard(clip(f), at[:, 0])
                streams[f] = (at, streams[f][1], None)
        return streams, float(data["ms_per_update"]), float(data["load"]) if "load" in data else None


def lead_in(wav: np.ndarray, name: str) -> np.ndarray:
    """``wav`` after LEAD_IN s of faint noise (LEAD_DB dBFS, seeded by the clip's name)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    noise = 10 ** (LEAD_DB / 20) * rng.standard_normal(int(LEAD_IN * SAMPLE_RATE))
    return np.concatenate([noise.astype(np.float32), wav])


def room_in(wav: np.ndarray) -> np.ndarray:
    """``wav`` after LEAD_IN s of its own background (`lightsv.speech.room_tone`), as a session opened in
    the room before the speaker starts would hear."""
    return np.concatenate([speech.room_tone(wav, LEAD_IN), wav])


def speech_heard(wav: np.ndarray, heard: np.ndarray) -> np.ndarray:
    """Seconds of speech SpeechGate has found after each of ``heard`` seconds of the clip."""
    gate, hop = speech.SpeechGate(), int(speech.SpeechConfig().hop_s * SAMPLE_RATE)
    found = [0.0]  # after 0, hop, 2 hop, ... samples
    for start in range(0, len(wav), hop):
        gate.push(wav[start : start + hop])
        found.append(gate.speech_seconds)
    gate.flush()
    found[-1] = gate.speech_seconds
    index = np.minimum(np.ceil(np.round(heard * SAMPLE_RATE) / hop).astype(int), len(found) - 1)
    return np.array(found)[index]


def stream_trajectory(verifier, wav: np.ndarray, vad) -> tuple[np.ndarray, np.ndarray]:
    """([seconds heard, of speech, embedded, sure], running embedding) after every update of a session
    fed the clip in hops (sure: whether the detector could tell speech from noise, 1 or 0).

    The session's LLR is a constant 0 between bounds of +-0.4, so it never decides early and every
    update is recorded; the sequential test is then replayed on these for each trial and error rate
    (the embeddings do not depend on the decisions)."""
    session = StreamSession(
        "x",
        np.zeros(verifier.dim, np.float32),
        lambda w: verifier._forward([w])[0],
        lambda score, seconds: 0.0,
        min_seconds=verifier.min_seconds,
        max_seconds=MAX_SECONDS,
        error=0.4,
        vad=vad,
    )
    hop = int(StreamConfig().hop_seconds * SAMPLE_RATE)
    seconds, embs = [], []
    for start in range(0, len(wav), hop):
        before = session.updates
        state = session.feed(wav[start : start + hop])
        if session.updates > before:
            seconds.append((state.seconds, state.speech_seconds, state.embedded_seconds, state.sure))
            embs.append(session.embedding)
        if state.decided:  # max_seconds
            break
    if not session.state.decided:
        before = session.updates
        state = session.close()
        if session.updates > before:
            seconds.append((state.seconds, state.speech_seconds, state.embedded_seconds, state.sure))
            embs.append(session.embedding)
    return np.array(seconds, dtype=np.float64).reshape(-1, 4), np.array(embs)


def calibration_data(lists: dict[str, Embeddings], names) -> tuple[np.ndarray, ...]:
    """(scores, labels, test seconds, enroll seconds) over lists ``names``: every trial with its test
    side whole, cut to its centre (what ``verify`` sees of a trimmed clip) and cut from its start as a
    stream embeds it (the stream's running embedding after 0.25-3 s embedded), each of SEGMENTS long."""
    rows = []
    for name in names:
        e = lists[name]
        for t in e.trials:
            enroll_seconds, length = e.seconds[t.enroll], e.seconds[t.test]
            at, stream, stats = e.stream[t.test]
            embedded = at[:, 2]
            for s in SEGMENTS:
                score = e.score(t.enroll, e.cut[s][t.test], e.cut_stats[s][t.test])
                rows.append((float(score), t.label, min(s, length), enroll_seconds))
                k = min(int(np.searchsorted(embedded, s - 1e-9)), len(embedded) - 1)
                rows.append((float(e.score(t.enroll, stream[k], stats[k])), t.label, embedded[k], enroll_seconds))
            score = e.score(t.enroll, e.emb[t.test], e.whole_stats[t.test])
            rows.append((float(score), t.label, length, enroll_seconds))
    return tuple(np.array(c) for c in zip(*rows, strict=True))


def rates(accept: np.ndarray, labels: np.ndarray) -> dict:
    miss = 100 * float(np.mean(~accept[labels == 1]))
    fa = 100 * float(np.mean(accept[labels == 0]))
    return {"miss": miss, "fa": fa, "hter": (miss + fa) / 2}


def duration_table(e: Embeddings, cal: DurationCalibration, raw_threshold: float) -> dict:
    labels = np.array([t.label for t in e.trials])
    enroll = np.array([e.seconds[t.enroll] for t in e.trials])
    out = {}
    pooled_raw, pooled_llr, pooled_labels = [], [], []
    for s in (*SEGMENTS, "whole"):
        tests, stats = (e.emb, e.whole_stats) if s == "whole" else (e.cut[s], e.cut_stats[s])
        raw = np.array([float(e.score(t.enroll, tests[t.test], stats[t.test])) for t in e.trials])
        length = np.array([e.seconds[t.test] if s == "whole" else min(s, e.seconds[t.test]) for t in e.trials])
        llr = cal.llr(raw, length, enroll)
        out[str(s)] = {
            "eer_raw": metrics.eer(raw, labels),
            "eer_llr": metrics.eer(llr, labels),
            "raw_one_threshold": rates(raw >= raw_threshold, labels),
            "llr_0": rates(llr >= 0, labels),
        }
        pooled_raw.append(raw), pooled_llr.append(llr), pooled_labels.append(labels)
    pooled = np.concatenate(pooled_labels)
    out["pooled"] = {
        "eer_raw": metrics.eer(np.concatenate(pooled_raw), pooled),
        "eer_llr": metrics.eer(np.concatenate(pooled_llr), pooled),
        "raw_one_threshold": rates(np.concatenate(pooled_raw) >= raw_threshold, pooled),
        "llr_0": rates(np.concatenate(pooled_llr) >= 0, pooled),
    }
    return out


def replay(e: Embeddings, cal: DurationCalibration, error, hop: float | None = None, streams=None) -> dict:
    """The sequential test of StreamSession on the recorded trajectories, for every trial. ``hop``: a
    coarser update cadence (a whole number of the recorded hops): the updates at multiples of it and
    the final one, exactly what a session with that hop_seconds computes (blocks end on them too)."""
    reject, accept = sprt_bounds(*error_rates(error))
    middle = 0.5 * (reject + accept)
    min_speech = StreamConfig().min_speech_seconds - 1e-9
    labels = np.array([t.label for t in e.trials])
    seconds, decisions, early = [], [], []
    for t in e.trials:
        at, emb, stats = (streams or e.stream)[t.test]
        if hop is not None:
            steps = at[:, 2] / hop
            keep = np.abs(steps - np.round(steps)) < 1e-6
            keep[-1] = True
            at, emb, stats = at[keep], emb[keep], stats[keep]
        llr = cal.llr(e.score(t.enroll, emb, stats), at[:, 2], e.seconds[t.enroll])
        # the session's speech_seconds: the gate's count, or (no gate) everything heard
        spoken = at[:, 1] if e.vad else at[:, 0]
        # as the session: a reject bound only where the detector could tell speech from noise
        bound = (llr >= accept) | ((llr <= reject) & (at[:, 3] > 0.5))
        crossed = np.flatnonzero(bound & (spoken >= min_speech))
        k = int(crossed[0]) if crossed.size else len(llr) - 1
        seconds.append(at[k])
        decisions.append(llr[k] >= accept if crossed.size else llr[k] >= middle)
        early.append(bool(crossed.size))
    seconds_a, accepted, early_a = np.array(seconds), np.array(decisions), np.array(early)
    targets, nontargets = early_a & (labels == 1), early_a & (labels == 0)
    return {
        "error": list(error_rates(error)),
        # seconds of audio heard at the decision
        "mean_seconds": float(seconds_a[:, 0].mean()),
        "p90_seconds": float(np.percentile(seconds_a[:, 0], 90)),
        # seconds of speech (detected spans, no margins) and of audio embedded at the decision
        "mean_speech_seconds": float(seconds_a[:, 1].mean()),
        "p90_speech_seconds": float(np.percentile(seconds_a[:, 1], 90)),
        "mean_embedded_seconds": float(seconds_a[:, 2].mean()),
        # decided (by a bound or forced) before any speech was found
        "decided_before_speech": 100 * float(np.mean(seconds_a[:, 1] == 0)),
        "decided_early": 100 * float(np.mean(early)),
        # of the trials a bound decided: targets rejected, non-targets accepted
        "early_miss": 100 * float(np.mean(~accepted[targets])) if targets.any() else None,
        "early_fa": 100 * float(np.mean(accepted[nontargets])) if nontargets.any() else None,
        **rates(accepted, labels),
    }


def windows(e: Embeddings) -> dict:
    """EER of the stream's score after its first 1 s / 2 s of speech (with the gate; or of audio
    without it), or the whole clip if shorter, and of the whole clip."""
    labels = np.array([t.label for t in e.trials])
    whole = [float(e.score(t.enroll, e.emb[t.test], e.whole_stats[t.test])) for t in e.trials]
    out = {"whole": metrics.eer(whole, labels)}
    for w in WINDOWS:
        scores = []
        for t in e.trials:
            at, emb, stats = e.stream[t.test]
            spoken = at[:, 1 if e.vad else 0]
            k = min(int(np.searchsorted(spoken, w - 1e-9)), len(spoken) - 1)
            scores.append(float(e.score(t.enroll, emb[k], stats[k])))
        out[f"{w:g}s"] = metrics.eer(scores, labels)
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--speech", type=Path, default=SPEECH)
    parser.add_argument("--lists", nargs="+", default=list(LISTS))
    parser.add_argument("--cache", type=Path, default=CACHE)
    parser.add_argument("--model", type=Path, help="checkpoint or .onnx file (default: the shipped default.onnx)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--no-vad", dest="vad", action="store_false", help="no speech detection: clips and streams embedded whole"
    )
    parser.add_argument(
        "--stream-margin",
        type=float,
        metavar="S",
        help="the streams' speech margin in seconds (default: the detector's, as for clips); "
        "results/streaming_margin<S>.{json,md}",
    )
    parser.add_argument(
        "--cohort",
        metavar="FILE",
        help="score with AS-norm against this cohort file ('default': the shipped one) instead of raw cosines; "
        "results/streaming_asnorm.{json,md}",
    )
    parser.add_argument(
        "--calibrate-into",
        type=Path,
        help="also fit on every list pooled and store it in this checkpoint (with --cohort: in this cohort file)",
    )
    args = parser.parse_args(argv)
    verifier = lightsv.Verifier.load(args.model, backend="auto" if args.model else "onnx", vad=False, threads=1)
    cohort = None
    if args.cohort:
        try:
            saved = cohorts.read(args.cohort, verifier.model_id)
        except lightsv.LightsvError as err:
            parser.error(str(err))
        cohort = (saved.embeddings, saved.top_n or lightsv.verifier.TOP_N)
        if args.calibrate_into and args.calibrate_into.resolve() != cohorts.read_path(args.cohort).resolve():
            parser.error("with --cohort, --calibrate-into names that cohort file (its AS-norm scores were fitted)")
    if args.calibrate_into and not args.cohort:  # checked before the long part: the fit holds only for its model
        from lightsv.checkpoint import load_model
        from lightsv.verifier import model_id

        try:
            other = model_id(load_model(args.calibrate_into))
        except lightsv.LightsvError as err:
            parser.error(str(err))
        if other != verifier.model_id:
            parser.error(f"{args.calibrate_into} is another model than the one scored ({verifier.source})")
    load = os.getloadavg()[0]
    lists = {}
    for name in args.lists:
        print(f"embedding {name} ...", file=sys.stderr)
        mode = "speech" if args.vad else "raw"
        cache = args.cache / verifier.model_id.replace(":", "_") / mode / Path(name).stem
        lists[name] = Embeddings(
            verifier, args.speech / "wav", read_trials(args.speech / name), cache, args.vad, args.stream_margin, cohort
        )
    results: dict = {"lists": {}}
    for name, e in lists.items():
        others = [n for n in lists if n != name] or [name]
        s, y, t, en = calibration_data(lists, others)
        cal = fit(s, y, t, en, trials=" + ".join(others))
        raw_threshold = metrics.eer_threshold(s, y)
        results["lists"][name] = {
            "fitted_on": others,
            "weights": list(cal.weights),
            "raw_threshold": raw_threshold,
            "durations": duration_table(e, cal, raw_threshold),
            "windows": windows(e),
            "streams": [replay(e, cal, err) for err in ERRORS],
            "lead_in": [replay(e, cal, err, streams=e.lead_in) for err in LEAD_ERRORS],
            "room_in": [replay(e, cal, err, streams=e.room_in) for err in LEAD_ERRORS],
            "cadence": {f"{hop:g}": [replay(e, cal, err, hop) for err in CADENCE_ERRORS] for hop in CADENCES},
            "ms_per_update": e.ms_per_update,
            "load_while_timed": e.load,
        }
    meta = {
        "command": "python benchmarks/streaming.py"
        + ("" if args.model is None else f" --model {_relative(str(args.model))}")
        + ("" if args.vad else " --no-vad")
        + ("" if args.stream_margin is None else f" --stream-margin {args.stream_margin:g}")
        + ("" if args.cohort is None else f" --cohort {args.cohort}")
        + ("" if args.out == RESULTS else f" --out {_relative(str(args.out))}"),
        "vad": args.vad,
        "score_norm": "none" if cohort is None else "asnorm",
        "cohort": None if cohort is None else {"file": args.cohort, "size": len(cohort[0]), "top_n": cohort[1]},
        "stream_margin": speech.SpeechConfig().margin_s if args.stream_margin is None else args.stream_margin,
        "stream_onset_margin": STREAM_SPEECH.onset_margin if args.stream_margin is None else args.stream_margin,
        "model_id": verifier.model_id,
        "backend": f"{_relative(verifier.source)}, 1 thread",
        "stream": {**StreamConfig().__dict__, "max_seconds": MAX_SECONDS},
        "lead_in": {"seconds": LEAD_IN, "dbfs": LEAD_DB},
        "load_average_at_start": load,
    }
    results["meta"] = meta
    if args.calibrate_into:
        s, y, t, en = calibration_data(lists, list(lists))
        how = " (test side whole and cut to 0.25-3 s from its centre and from its start)"
        how += ", speech-trimmed clips and speech-gated streams" if args.vad else ", raw clips and streams"
        how += ", AS-norm scores" if cohort else ""
        cal = fit(s, y, t, en, trials=" + ".join(lists) + how)
        if cohort:
            cohorts.write_duration(args.calibrate_into, cal.as_dict())
        else:
            from lightsv.checkpoint import read_checkpoint

            calibration = dict(read_checkpoint(args.calibrate_into).get("extra", {}).get("calibration") or {})
            write_calibration(args.calibrate_into, {**calibration, "duration": cal.as_dict()})
        results["shipped_calibration"] = cal.as_dict()
        print(f"duration calibration written into {args.calibrate_into}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "streaming" if args.vad else "streaming_raw"
    stem += "" if args.stream_margin is None else f"_margin{args.stream_margin:g}"
    stem += "" if cohort is None else "_asnorm"
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=2))
    text = markdown(results)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


def markdown(results: dict) -> str:
    meta = results["meta"]
    cohort = meta.get("cohort")
    raw = "raw cosine" if cohort is None else "AS-norm score"
    lines = [
        f"Written by `{meta['command']}` (model {meta['model_id']}, {meta['backend']}; load average "
        f"{meta['load_average_at_start']:.1f} at start of this run; the streams' timings may come from the cache). "
        "Cross-validated: each list is scored with the "
        "duration calibration fitted on the other two. Rates in %. "
        + (
            "Speech-aware: clips trimmed to their speech (`lightsv.speech.trim`, 0.5 s margins), streams through "
            f"the same detector run causally (`lightsv.speech.SpeechGate`, {_margins(meta)}"
            + (
                "), as `Verifier.load()` does by default."
                if _margins(meta) == _margins({})
                else f"; `Verifier.load()` streams keep {_margins({})})."
            )
            if meta.get("vad", False)
            else "Raw (`--no-vad`): clips and streams embedded whole, silence included."
        )
        + (
            ""
            if cohort is None
            else f" Scores: AS-norm against the cohort `{cohort['file']}` ({cohort['size']} speakers, top "
            f"{cohort['top_n']}), as `set_cohort` gives; the streams' running embeddings are normalised at every "
            "update."
        ),
        "",
        "## Duration-aware scores",
        "",
        "`@s`: test side cut to its central s seconds (clips already shorter stay whole; of the trimmed clip when "
        f"speech-aware). EER of the {raw} "
        "and of the LLR; then the half total error rate (mean of miss and false accept) of one decision "
        f"rule for every length: {raw} at one threshold (the EER threshold of the calibration data pooled "
        "over lengths) against LLR >= 0.",
    ]
    for name, r in results["lists"].items():
        d = r["durations"]
        keys = [k for k in d]
        lines += [
            "",
            f"### {name} (fitted on {', '.join(r['fitted_on'])})",
            "",
            "| | " + " | ".join(f"@{k}" if k not in ("whole", "pooled") else k for k in keys) + " |",
            "|---" * (len(keys) + 1) + "|",
            f"| EER {raw} | " + " | ".join(f"{d[k]['eer_raw']:.2f}" for k in keys) + " |",
            "| EER duration-aware LLR | " + " | ".join(f"{d[k]['eer_llr']:.2f}" for k in keys) + " |",
            f"| HTER {raw}, one threshold (miss/FA) | "
            + " | ".join(
                f"{d[k]['raw_one_threshold']['hter']:.2f} ({d[k]['raw_one_threshold']['miss']:.0f}/"
                f"{d[k]['raw_one_threshold']['fa']:.0f})"
                for k in keys
            )
            + " |",
            "| HTER LLR >= 0 (miss/FA) | "
            + " | ".join(
                f"{d[k]['llr_0']['hter']:.2f} ({d[k]['llr_0']['miss']:.0f}/{d[k]['llr_0']['fa']:.0f})" for k in keys
            )
            + " |",
        ]
    stream = meta["stream"]
    vad = meta.get("vad", False)
    spoken = "speech" if vad else "audio"
    lines += [
        "",
        "## Streams",
        "",
        f"Each test clip fed from its start; an update every {stream['hop_seconds']:g} s of audio, blocks of "
        f"{stream['block_seconds']:g} s with {stream['context_seconds']:g} s of context, forced decision at the "
        f"clip's end or {stream['max_seconds']:g} s of audio; the bounds decide only after "
        f"{stream.get('min_speech_seconds', 0):g} s of {spoken}, a reject bound only on audio the speech detector "
        "was sure of (`state.sure`). `asked`: the miss = false-accept rate asked of the "
        "sequential test; `audio s`: seconds of audio heard at the decision, mean / 90th percentile; "
        "`speech s`: of them, seconds of detected speech (speech spans, pauses under 1 s included, margins not; "
        "with `--no-vad` counted by the same detector alongside, not used by the stream); "
        "`early`: share decided by a bound before the clip's end or "
        "max_seconds; "
        "`early miss / FA`: of the targets and non-targets a bound decided, the share decided wrongly (what "
        "the asked rates are about); HTER: mean of miss and false accept. Compared with the whole clip two "
        "ways: `- EER`, the issue's comparison, against the whole clip's EER, whose threshold is picked on the "
        "very trials it is measured on (an oracle no deployed system has); `- HTER whole`, against the whole "
        "clip's HTER at the same calibrated decision rule (LLR >= 0, the calibration fitted on the other lists), "
        "what waiting for the whole clip would have given. Fixed windows: EER of the stream's score after its "
        f"first 1 s / 2 s of {spoken}.",
    ]
    for name, r in results["lists"].items():
        w = r["windows"]
        whole_hter = r["durations"]["whole"]["llr_0"]["hter"]
        lines += [
            "",
            f"### {name}: whole clip EER {w['whole']:.2f}, HTER at LLR >= 0 {whole_hter:.2f}; first 1 s / 2 s "
            f"of {spoken} EER {w['1s']:.2f} / {w['2s']:.2f}; {r['ms_per_update']:.1f} ms per update "
            + (
                "(load average not recorded)"
                if r.get("load_while_timed") is None
                else f"(load average {r['load_while_timed']:.1f} when timed)"
            ),
            "",
            "| asked | audio s mean / p90 | speech s mean / p90 | early | early miss / FA | miss | FA | HTER "
            "| - EER | - HTER whole |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        for s in r["streams"]:
            lines.append(
                f"| {s['error'][0]:g} | {_seconds(s)} | {s['decided_early']:.1f} | {_early(s)} | "
                f"{s['miss']:.2f} | {s['fa']:.2f} | {_hter(s, w, whole_hter)} |"
            )
    lead = meta.get("lead_in", {"seconds": LEAD_IN, "dbfs": LEAD_DB})
    lines += [
        "",
        f"## Streams opened {lead['seconds']:g} s before the speaker starts",
        "",
        f"The same test clips after {lead['seconds']:g} s of a run-up, as when a session opens before the user "
        f"speaks: `faint`, white noise at {lead['dbfs']:g} dBFS (a quiet device); `room`, the clip's own "
        "background (its quietest 50 ms, tiled back and forth). Replayed with the same cross-validated "
        "calibrations (never fitted on these). Seconds count from the session's start, run-up included; "
        "`before speech`: share of trials decided (by a bound, or forced) before any speech was found in the "
        "stream.",
        "",
        "| list | run-up | asked | audio s mean / p90 | speech s mean / p90 | before speech | early miss / FA | HTER "
        "| - EER | - HTER whole |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["lists"].items():
        w, whole_hter = r["windows"], r["durations"]["whole"]["llr_0"]["hter"]
        for kind, key in (("faint", "lead_in"), ("room", "room_in")):
            for s in r.get(key, []):
                lines.append(
                    f"| {Path(name).stem} | {kind} | {s['error'][0]:g} | {_seconds(s)} | "
                    f"{s['decided_before_speech']:.1f} | {_early(s)} | {_hter(s, w, whole_hter)} |"
                )
    lines += [
        "",
        "## Update cadence",
        "",
        f"The same streams replayed with an update every 0.5 s or 1 s of embedded audio instead of every "
        f"{stream['hop_seconds']:g} s (exactly what a session with that `hop_seconds` computes: blocks end on "
        "those updates too). Fewer looks spend less of the error budget and cost fewer embeddings, but each "
        "decision waits for the next look. Not used to pick the default (which was set before these figures).",
        "",
        "| list | asked | hop s | audio s mean / p90 | speech s mean / p90 | early miss / FA | HTER | - EER "
        "| - HTER whole |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in results["lists"].items():
        w, whole_hter = r["windows"], r["durations"]["whole"]["llr_0"]["hter"]
        cadence = r.get("cadence", {})
        asked = {x["error"][0] for runs in cadence.values() for x in runs}
        rows = [(f"{stream['hop_seconds']:g}", [x for x in r["streams"] if x["error"][0] in asked])]
        for hop, runs in rows + list(cadence.items()):
            for s in runs:
                lines.append(
                    f"| {Path(name).stem} | {s['error'][0]:g} | {hop} | {_seconds(s)} | {_early(s)} | "
                    f"{_hter(s, w, whole_hter)} |"
                )
    return "\n".join(lines) + "\n"


def _margins(meta: dict) -> str:
    """The streams' speech margins as run (``{}``: the defaults; results before the onset margin: 0.5 both)."""
    onset = meta.get("stream_onset_margin", meta.get("stream_margin", 0.5)) if meta else STREAM_SPEECH.onset_margin
    after = meta.get("stream_margin", 0.5) if meta else STREAM_SPEECH.margin_s
    return f"{after:g} s margins" if onset == after else f"{onset:g} s before onsets, {after:g} s after speech"


def _relative(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"


def _seconds(s: dict) -> str:
    """A stream summary's audio and speech seconds at the decision: two mean / p90 cells."""
    return (
        f"{s['mean_seconds']:.2f} / {s['p90_seconds']:.2f} | {s['mean_speech_seconds']:.2f} / "
        f"{s['p90_speech_seconds']:.2f}"
    )


def _early(s: dict) -> str:
    return f"{_pct(s['early_miss'])} / {_pct(s['early_fa'])}"


def _hter(s: dict, windows: dict, whole_hter: float) -> str:
    """HTER, and its distance to the whole clip's EER and to the whole clip's HTER: three cells."""
    return f"{s['hter']:.2f} | {s['hter'] - windows['whole']:+.2f} | {s['hter'] - whole_hter:+.2f}"


if __name__ == "__main__":
    sys.exit(main())
