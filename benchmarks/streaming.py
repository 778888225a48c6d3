"""Duration-aware scores and early-deciding streams of the shipped model, on every dev list.

    python benchmarks/streaming.py                      # writes benchmarks/results/streaming.{json,md}
    python benchmarks/streaming.py --calibrate-into lightsv/assets/default.pt   # + the pooled fit into a checkpoint

Needs the dev data beside the repo (../shared/data/speech). Clips go in raw (no speech trimming, as
in benchmarks/default_model.py), embedded by the shipped model in onnxruntime on one thread (the same
model id as default.pt). Embeddings are cached under exp/streaming_cache/ (per model id).

Cross-validated over the lists: the duration calibration that scores list X is fitted on the other
two lists, so no figure comes from a fit that saw its own trials. The calibration data are every
trial of those lists with the test side cut to its central 0.25, 0.5, 1, 2 and 3 s and whole
(enrollment whole). ``--calibrate-into`` fits on all three lists pooled and stores that.

Part 1, duration-aware scores: per test length, EER of the raw cosine and of the LLR, and the error
rates at one decision rule each: raw cosine at the EER threshold of the same calibration data pooled
over lengths (one threshold for every length), LLR >= 0.

Part 2, streams: each test clip is fed from its start through lightsv.streaming.StreamSession (0.25 s
updates, 3 s blocks), and the sequential test decides at the requested error rates, or is forced at
the clip's end or max_seconds. Seconds to decision, the share decided early, miss and false-accept
rates, next to the full-clip EER and fixed 1 s / 2 s windows from the clip's start.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

import lightsv
from lightsv import metrics
from lightsv.audio import SAMPLE_RATE
from lightsv.calibrate import write_calibration
from lightsv.duration import DurationCalibration, fit
from lightsv.streaming import StreamConfig, StreamSession, error_rates, sprt_bounds
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


def centre(wav: np.ndarray, seconds: float) -> np.ndarray:
    n = int(round(seconds * SAMPLE_RATE))
    start = max(0, (len(wav) - n) // 2)
    return wav[start : start + n]


class Embeddings:
    """Whole-clip, centre-cut and stream embeddings of a list's clips, cached on disk."""

    def __init__(self, verifier, root: Path, trials, cache: Path):
        self.v, self.root, self.trials = verifier, root, trials
        self.files = sorted({p for t in trials for p in (t.enroll, t.test)})
        self.tests = sorted({t.test for t in trials})
        cache.mkdir(parents=True, exist_ok=True)
        audio = {}

        def wav(f):
            if f not in audio:
                audio[f] = lightsv.audio.load(root / f)
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
                clips = [centre(wav(f), s) for f in self.tests]
                np.save(path, verifier.embed_many(clips, sample_rate=SAMPLE_RATE, progress=False))
            self.cut[s] = dict(zip(self.tests, np.load(path), strict=True))
        path = cache / "stream.npz"
        if not path.exists():
            start, runs = time.perf_counter(), [stream_trajectory(verifier, wav(f)) for f in self.tests]
            updates = sum(len(r[0]) for r in runs)
            np.savez(
                path,
                seconds=np.concatenate([r[0] for r in runs]),
                emb=np.concatenate([r[1] for r in runs]).astype(np.float32),
                counts=[len(r[0]) for r in runs],
                ms_per_update=1000 * (time.perf_counter() - start) / max(updates, 1),
            )
        data = np.load(path)
        ends = np.cumsum(data["counts"])
        self.ms_per_update = float(data["ms_per_update"])
        self.stream = {
            f: (data["seconds"][e - n : e], data["emb"][e - n : e])
            for f, n, e in zip(self.tests, data["counts"], ends, strict=True)
        }


def stream_trajectory(verifier, wav: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(seconds heard, running embedding) after every update of a session fed the clip in hops.

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
    )
    hop = int(StreamConfig().hop_seconds * SAMPLE_RATE)
    seconds, embs = [], []
    for start in range(0, len(wav), hop):
        before = session.updates
        state = session.feed(wav[start : start + hop])
        if session.updates > before:
            seconds.append(state.seconds)
            embs.append(session.embedding)
        if state.decided:  # max_seconds
            break
    if not session.state.decided:
        before = session.updates
        state = session.close()
        if session.updates > before:
            seconds.append(state.seconds)
            embs.append(session.embedding)
    return np.array(seconds), np.array(embs)


def calibration_data(lists: dict[str, Embeddings], names) -> tuple[np.ndarray, ...]:
    """(scores, labels, test seconds, enroll seconds) over lists ``names``: every trial with its test
    side whole, cut to its centre (what ``verify`` sees of a trimmed clip) and cut from its start as a
    stream hears it (the stream's running embedding after 0.25-3 s), each of SEGMENTS long."""
    rows = []
    for name in names:
        e = lists[name]
        for t in e.trials:
            enr, enroll_seconds = e.emb[t.enroll], e.seconds[t.enroll]
            length = e.seconds[t.test]
            heard, stream = e.stream[t.test]
            for s in SEGMENTS:
                rows.append((float(enr @ e.cut[s][t.test]), t.label, min(s, length), enroll_seconds))
                k = min(int(np.searchsorted(heard, s - 1e-9)), len(heard) - 1)
                rows.append((float(enr @ stream[k]), t.label, heard[k], enroll_seconds))
            rows.append((float(enr @ e.emb[t.test]), t.label, length, enroll_seconds))
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
        tests = e.emb if s == "whole" else e.cut[s]
        raw = np.array([float(e.emb[t.enroll] @ tests[t.test]) for t in e.trials])
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


def replay(e: Embeddings, cal: DurationCalibration, error) -> dict:
    """The sequential test of StreamSession on the recorded trajectories, for every trial."""
    reject, accept = sprt_bounds(*error_rates(error))
    middle = 0.5 * (reject + accept)
    labels = np.array([t.label for t in e.trials])
    seconds, decisions, early = [], [], []
    for t in e.trials:
        heard, emb = e.stream[t.test]
        llr = cal.llr(emb @ e.emb[t.enroll], heard, e.seconds[t.enroll])
        crossed = np.flatnonzero((llr >= accept) | (llr <= reject))
        k = int(crossed[0]) if crossed.size else len(llr) - 1
        seconds.append(heard[k])
        decisions.append(llr[k] >= accept if crossed.size else llr[k] >= middle)
        early.append(bool(crossed.size))
    seconds_a, accepted, early_a = np.array(seconds), np.array(decisions), np.array(early)
    targets, nontargets = early_a & (labels == 1), early_a & (labels == 0)
    return {
        "error": list(error_rates(error)),
        "mean_seconds": float(seconds_a.mean()),
        "p90_seconds": float(np.percentile(seconds_a, 90)),
        "decided_early": 100 * float(np.mean(early)),
        # of the trials a bound decided: targets rejected, non-targets accepted
        "early_miss": 100 * float(np.mean(~accepted[targets])) if targets.any() else None,
        "early_fa": 100 * float(np.mean(accepted[nontargets])) if nontargets.any() else None,
        **rates(accepted, labels),
    }


def windows(e: Embeddings) -> dict:
    """EER of the stream's score after the first 1 s / 2 s (or the whole clip if shorter), and whole."""
    labels = np.array([t.label for t in e.trials])
    out = {"whole": metrics.eer([float(e.emb[t.enroll] @ e.emb[t.test]) for t in e.trials], labels)}
    for w in WINDOWS:
        scores = []
        for t in e.trials:
            heard, emb = e.stream[t.test]
            k = min(int(np.searchsorted(heard, w - 1e-9)), len(heard) - 1)
            scores.append(float(emb[k] @ e.emb[t.enroll]))
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
        "--calibrate-into", type=Path, help="also fit on every list pooled and store it in this checkpoint"
    )
    args = parser.parse_args(argv)
    verifier = lightsv.Verifier.load(args.model, backend="auto" if args.model else "onnx", vad=False, threads=1)
    if args.calibrate_into:  # checked before the long part: the fit holds only for the model that scored
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
        cache = args.cache / verifier.model_id.replace(":", "_") / Path(name).stem
        lists[name] = Embeddings(verifier, args.speech / "wav", read_trials(args.speech / name), cache)
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
            "ms_per_update": e.ms_per_update,
        }
    meta = {
        "command": "python benchmarks/streaming.py",
        "model_id": verifier.model_id,
        "backend": f"{_relative(verifier.source)}, 1 thread",
        "stream": {**StreamConfig().__dict__, "max_seconds": MAX_SECONDS},
        "load_average_at_start": load,
    }
    results["meta"] = meta
    if args.calibrate_into:
        s, y, t, en = calibration_data(lists, list(lists))
        how = " (test side whole and cut to 0.25-3 s from its centre and from its start)"
        cal = fit(s, y, t, en, trials=" + ".join(lists) + how)
        from lightsv.checkpoint import read_checkpoint

        calibration = dict(read_checkpoint(args.calibrate_into).get("extra", {}).get("calibration") or {})
        write_calibration(args.calibrate_into, {**calibration, "duration": cal.as_dict()})
        results["shipped_calibration"] = cal.as_dict()
        print(f"duration calibration written into {args.calibrate_into}", file=sys.stderr)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "streaming.json").write_text(json.dumps(results, indent=2))
    (args.out / "streaming.md").write_text(markdown(results))
    print(markdown(results))
    return 0


def markdown(results: dict) -> str:
    meta = results["meta"]
    lines = [
        f"Written by `{meta['command']}` (model {meta['model_id']}, {meta['backend']}; load average "
        f"{meta['load_average_at_start']:.1f} at start). Cross-validated: each list is scored with the "
        "duration calibration fitted on the other two. Rates in %.",
        "",
        "## Duration-aware scores",
        "",
        "`@s`: test side cut to its central s seconds (clips already shorter stay whole). EER of the raw "
        "cosine and of the LLR; then the half total error rate (mean of miss and false accept) of one decision "
        "rule for every length: raw cosine at one threshold (the EER threshold of the calibration data pooled "
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
            "| EER raw cosine | " + " | ".join(f"{d[k]['eer_raw']:.2f}" for k in keys) + " |",
            "| EER duration-aware LLR | " + " | ".join(f"{d[k]['eer_llr']:.2f}" for k in keys) + " |",
            "| HTER raw, one threshold (miss/FA) | "
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
    lines += [
        "",
        "## Streams",
        "",
        f"Each test clip fed from its start; an update every {stream['hop_seconds']:g} s of audio, blocks of "
        f"{stream['block_seconds']:g} s with {stream['context_seconds']:g} s of context, forced decision at the "
        f"clip's end or {stream['max_seconds']:g} s. `asked`: the miss = false-accept rate asked of the "
        "sequential test; `s mean / p90`: seconds of audio heard at the decision; `early`: share decided by a "
        "bound before the clip's end or max_seconds; "
        "`early miss / FA`: of the targets and non-targets a bound decided, the share decided wrongly (what "
        "the asked rates are about); HTER: mean of miss and false accept. Fixed-length systems: "
        "EER of the whole clip and of its first 1 s / 2 s.",
    ]
    for name, r in results["lists"].items():
        w = r["windows"]
        lines += [
            "",
            f"### {name}: EER whole clip {w['whole']:.2f}, first 1 s {w['1s']:.2f}, first 2 s {w['2s']:.2f}; "
            f"{r['ms_per_update']:.1f} ms per update",
            "",
            "| asked | s mean | s p90 | early | early miss / FA | miss | FA | HTER | HTER - whole-clip EER |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for s in r["streams"]:
            lines.append(
                f"| {s['error'][0]:g} | {s['mean_seconds']:.2f} | {s['p90_seconds']:.2f} | {s['decided_early']:.1f} | "
                f"{_pct(s['early_miss'])} / {_pct(s['early_fa'])} | "
                f"{s['miss']:.2f} | {s['fa']:.2f} | {s['hter']:.2f} | {s['hter'] - w['whole']:+.2f} |"
            )
    return "\n".join(lines) + "\n"


def _relative(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO)) if p.is_relative_to(REPO) else path


def _pct(value) -> str:
    return "-" if value is None else f"{value:.1f}"


if __name__ == "__main__":
    sys.exit(main())
