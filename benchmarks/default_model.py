"""The shipped default model against resemblyzer (pretrained GE2E), scored on the same trials in one run.

    python benchmarks/default_model.py  # writes benchmarks/results/default_model.{json,md} and default_model_det*.png

Needs the dev data beside the repo (../shared/data/speech) and resemblyzer (`python -m lightsv.extras teacher`).
Each system uses its own standard pipeline: lightsv's Verifier on the raw clip; resemblyzer's
`preprocess_wav` (volume normalisation, silence trimming) then `embed_utterance`. Accuracy, on every
dev list: EER with a bootstrap 95 % interval and minDCF (p_target 0.01), overall and per source
family, and EER with the test side cut to 0.25-3 s (the centre of the clip: the Arabic and word clips
have silence around a short word; clips already shorter stay whole; enrollment stays whole). The
model's embeddings are also scored with AS-norm against a cohort (``--cohort``; for the shipped model
by default its shipped cohort), an option of the verifier: a row of its own, never the headline.
Cost: parameters, MACs per second of audio (torch.utils.flop_counter), size on disk and the median
latency of one 3 s clip on one thread, waveform to embedding, as ratios resemblyzer / lightsv. The
systems are timed round-robin (one call of each per round, after all the scoring), so a change in the
machine's load reaches them alike; the ratios are the medians of the per-round ratios, with their
interquartile range.
Everything runs on one torch thread, so a busy machine slows it evenly rather than by oversubscription.
"""

import argparse
import importlib.util
import json
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch.utils.flop_counter import FlopCounterMode

import lightsv
from lightsv import cohort as cohorts
from lightsv import metrics
from lightsv.audio import central_crop
from lightsv.data import read_trials
from lightsv.plots import det_plot
from lightsv.profile import EXTRA_FLOP_FORMULAS
from lightsv.train.evaluation import families
from lightsv.verifier import DEFAULT_MODEL

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge import interleaved_times  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
CLIP_SECONDS = 3.0
LISTS = ("trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt")
SEGMENTS = (0.25, 0.5, 1.0, 2.0, 3.0)  # test-segment lengths, seconds


class Resemblyzer:
    name = "resemblyzer"

    def __init__(self):
        from resemblyzer import VoiceEncoder, preprocess_wav

        self.encoder, self.preprocess = VoiceEncoder("cpu", verbose=False), preprocess_wav
        self.params = sum(p.numel() for p in self.encoder.parameters())

    def embed_many(self, clips):
        return np.stack([self.embed(lightsv.audio.load(c) if isinstance(c, (str, Path)) else c) for c in clips])

    def embed(self, wav):
        trimmed = self.preprocess(wav, source_sr=16000)
        # its VAD can leave nothing of a short segment; then the segment goes in as it is
        return self.encoder.embed_utterance(trimmed if len(trimmed) >= 1600 else wav)

    def embed_raw(self, wav):  # latency and MACs: the network and its features, not the VAD
        return self.encoder.embed_utterance(wav)


class Lightsv:
    def __init__(self, path):
        # The raw clip, as this benchmark has always measured it (speech trimming, on by default in the
        # Verifier, is measured by benchmarks/speech_detection.py): a 0.25 s test segment may hold too
        # little speech for the detector, which would refuse it rather than score it.
        self.verifier = lightsv.Verifier.load(path, vad=False)
        self.whole = self.verifier
        self.name = f"lightsv {Path(path).name}"
        self.params = sum(p.numel() for p in self.verifier.model.parameters())

    def embed_many(self, clips):
        return self.verifier.embed_many(clips, sample_rate=16000, progress=False)

    def embed_raw(self, wav):
        return self.whole.embed(wav, sample_rate=16000)


def cosine_pairs(enrolled: np.ndarray, tests: np.ndarray) -> np.ndarray:
    return np.einsum("nd,nd->n", enrolled, tests)


def asnorm_pairs(verifier, cohort: str):
    """Pair scores with AS-norm against a cohort file, as ``set_cohort`` (``--cohort``) scores them;
    the cohort changes scoring only, so the verifier's embeddings serve both rows."""
    verifier.set_cohort(cohort)  # refuses a cohort made with another model
    members, top_n = verifier._cohort, verifier.top_n

    def pairs(enrolled: np.ndarray, tests: np.ndarray) -> np.ndarray:
        stats = [cohorts.top_stats(side @ members.T, top_n) for side in (enrolled, tests)]
        return cohorts.asnorm(cosine_pairs(enrolled, tests), *stats)

    return pairs


class LightsvOnnx:
    """The same model exported with its filterbank (export/export_onnx.py), run by onnxruntime on
    one thread: the deployment path. Accuracy is the torch model's; only cost is measured."""

    def __init__(self, path, tmp: Path):
        import onnxruntime as ort

        spec = importlib.util.spec_from_file_location("export_onnx", REPO / "export" / "export_onnx.py")
        exporter = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(exporter)
        model = lightsv.load_model(path)
        onnx_path = exporter.export(model, str(tmp / "model.onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = 1
        self.session = ort.InferenceSession(onnx_path, options)
        self.name = f"lightsv {Path(path).name} (onnxruntime)"
        self.params = sum(p.numel() for p in model.parameters())

    def embed_raw(self, wav):
        return self.session.run(None, {"wav": wav[None], "lengths": np.array([len(wav)])})[0]


def embeddings(system, clips: list) -> np.ndarray:
    emb = system.embed_many(clips)
    return emb / np.linalg.norm(emb, axis=1, keepdims=True)


def accuracy(system, trials, root: Path, family: dict[str, str], bootstrap: int, scorers: dict) -> dict:
    """{name: (result, scores)} for each of ``scorers`` ({name: pair-score function}), all on the same
    embeddings of ``system``."""
    files = sorted({p for t in trials for p in (t.enroll, t.test)})
    emb = dict(zip(files, embeddings(system, [root / f for f in files]), strict=True))
    enrolled = np.stack([emb[t.enroll] for t in trials])
    whole = np.stack([emb[t.test] for t in trials])
    labels = np.array([t.label for t in trials])
    names = np.array([family.get(os.path.abspath(root / t.enroll), "unknown") for t in trials])
    tests = sorted({t.test for t in trials})
    audio = {f: lightsv.audio.load(root / f) for f in tests}
    cuts = {}
    for seconds in SEGMENTS:
        cut = dict(zip(tests, embeddings(system, [central_crop(audio[f], seconds) for f in tests]), strict=True))
        cuts[seconds] = np.stack([cut[t.test] for t in trials])
    out = {}
    for name, pair in scorers.items():
        scores = pair(enrolled, whole)
        result = {
            "overall": metrics.summary(scores, labels, bootstrap=bootstrap),
            "families": {
                n: metrics.summary(scores[names == n], labels[names == n], bootstrap=bootstrap)
                for n in sorted(set(names))
                if 0 < labels[names == n].sum() < (names == n).sum()
            },
            "segments": {
                str(seconds): metrics.summary(pair(enrolled, cut), labels, bootstrap=bootstrap)
                for seconds, cut in cuts.items()
            },
        }
        out[name] = (result, scores)
    return out


def cost(system, wav: np.ndarray) -> dict:
    with FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
        system.embed_raw(wav)
    return {"params": system.params, "macs_per_second": counter.get_total_flops() / 2 / CLIP_SECONDS}


def ratio(slow: np.ndarray, fast: np.ndarray) -> dict:
    """The median and interquartile range of the per-round ratios slow / fast."""
    per_round = slow / fast
    return {"median": float(np.median(per_round)), "iqr": [float(q) for q in np.percentile(per_round, [25, 75])]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    parser.add_argument("--speech", type=Path, default=SPEECH)
    parser.add_argument("--lists", nargs="+", default=list(LISTS), help="trial lists in --speech")
    parser.add_argument("--repeats", type=int, default=100, help="timing rounds")
    parser.add_argument("--bootstrap", type=int, default=1000)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument(
        "--cohort",
        help="also score the model with AS-norm against this cohort file (default: 'default', the shipped "
        "cohort, for the shipped model; 'none': leave it out)",
    )
    args = parser.parse_args(argv)
    cohort = args.cohort or ("default" if args.model.resolve() == DEFAULT_MODEL.resolve() else "none")
    torch.set_num_threads(1)
    lists = {name: read_trials(args.speech / name) for name in args.lists}
    family = families(args.speech / "manifest.csv")  # keyed by absolute path
    first = next(iter(lists.values()))[0]
    clip = lightsv.audio.load(args.speech / "wav" / first.enroll)
    clip = np.resize(clip, int(CLIP_SECONDS * 16000))  # repeat a short clip up to the timed length
    load = os.getloadavg()[0]

    rows: dict[str, dict] = {}
    curves: dict[str, dict] = {name: {} for name in lists}
    systems = (Lightsv(args.model), Resemblyzer())
    scorers = {system: {system.name: cosine_pairs} for system in systems}
    if cohort != "none":  # (the AS-norm row is the same model: its cost is the model's)
        scorers[systems[0]][f"{systems[0].name} + AS-norm"] = asnorm_pairs(systems[0].verifier, cohort)
    for system in systems:
        for row in scorers[system]:
            rows[row] = {"lists": {}}
        for name, trials in lists.items():
            print(f"scoring {system.name} on {name} ...", file=sys.stderr)
            results = accuracy(system, trials, args.speech / "wav", family, args.bootstrap, scorers[system])
            for row, (result, scores) in results.items():
                rows[row]["lists"][name] = result
                curves[name][row] = (scores, [t.label for t in trials])
    for system in systems:
        rows[system.name].update(cost(system, clip))
    ours, peer = rows[systems[0].name], rows[systems[1].name]
    ours["size_bytes"] = args.model.stat().st_size
    timed = {"torch": systems[0], "resemblyzer": systems[1]}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            timed["onnxruntime"] = LightsvOnnx(args.model, Path(tmp))
    except ImportError:
        print("onnxruntime not installed: no ONNX latency", file=sys.stderr)
    print(f"timing {', '.join(timed)} round-robin ...", file=sys.stderr)
    calls = [lambda system=system: system.embed_raw(clip) for system in timed.values()]
    times = dict(zip(timed, interleaved_times(calls, args.repeats), strict=True))  # on main's one thread
    ours["latency_ms"] = 1000 * float(np.median(times["torch"]))
    peer["latency_ms"] = 1000 * float(np.median(times["resemblyzer"]))
    ratios: dict = {"latency": ratio(times["resemblyzer"], times["torch"])}
    if "onnxruntime" in times:
        ours["onnxruntime"] = {"latency_ms": 1000 * float(np.median(times["onnxruntime"]))}
        ratios["latency_onnxruntime"] = ratio(times["resemblyzer"], times["onnxruntime"])
    ratios.update(
        params=peer["params"] / ours["params"],
        macs=peer["macs_per_second"] / ours["macs_per_second"],
    )
    meta = {
        "command": " ".join(["python benchmarks/default_model.py", *sys.argv[1:]]),
        "model": str(args.model.relative_to(REPO) if args.model.is_relative_to(REPO) else args.model),
        "lists": list(lists),
        "segments_seconds": list(SEGMENTS),
        "load_average_at_start": load,
        "threads": 1,
        "timing_rounds": args.repeats,
        "clip_seconds": CLIP_SECONDS,
        "torch": torch.__version__,
        "cohort": None if cohort == "none" else cohort,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "default_model.json").write_text(
        json.dumps({"meta": meta, "systems": rows, "resemblyzer_over_lightsv": ratios}, indent=2)
    )
    for name, curve in curves.items():
        det_plot(curve, args.out / det_name(name), title=name)
    (args.out / "default_model.md").write_text(markdown(rows, ratios, meta))
    print(markdown(rows, ratios, meta))
    return 0


def det_name(trial_list: str) -> str:
    """default_model_det.png for trials_dev.txt, default_model_det_<suffix>.png for the others."""
    suffix = Path(trial_list).stem.removeprefix("trials_dev").lstrip("_")
    return f"default_model_det{'_' + suffix if suffix else ''}.png"


def markdown(rows: dict, ratios: dict, meta: dict) -> str:
    cell = lambda s: f"{s['eer']:.2f} [{s['eer_ci95'][0]:.1f}, {s['eer_ci95'][1]:.1f}]"  # noqa: E731
    lines = [
        f"Written by `{meta['command']}` for `{meta['model']}` (load average {meta['load_average_at_start']:.1f} "
        "at start). EER % [bootstrap 95 % interval]; minDCF at p_target 0.01; `EER@s`: test side cut to "
        "its central s seconds; latency: one 3 s clip, 1 thread, waveform to embedding."
        + (
            f" `+ AS-norm`: the same embeddings scored with AS-norm against the cohort `{meta['cohort']}` "
            "(`set_cohort`, `--cohort`), an option of the verifier, not its default."
            if meta.get("cohort")
            else ""
        ),
    ]
    for trial_list in meta["lists"]:
        results = {name: r["lists"][trial_list] for name, r in rows.items()}
        fams = sorted({f for r in results.values() for f in r["families"]})
        segs = meta["segments_seconds"]
        lines += [
            "",
            f"### {trial_list} (DET: `{det_name(trial_list)}`)",
            "",
            "| system | EER | minDCF | "
            + " | ".join(f"EER {f}" for f in fams)
            + " | "
            + " | ".join(f"EER@{s:g}" for s in segs)
            + " |",
            "|---" * (3 + len(fams) + len(segs)) + "|",
        ]
        for name, r in results.items():
            lines.append(
                f"| {name} | {cell(r['overall'])} | {r['overall']['min_dcf']:.3f} | "
                + " | ".join(cell(r["families"][f]) if f in r["families"] else "-" for f in fams)
                + " | "
                + " | ".join(f"{r['segments'][str(s)]['eer']:.2f}" for s in segs)
                + " |"
            )
    ours = next(iter(rows.values()))
    lines += ["", "| system | params | M MACs/s | latency ms |", "|---|---|---|---|"]
    lines += [
        f"| {name} | {r['params']:,} | {r['macs_per_second'] / 1e6:.1f} | {r['latency_ms']:.1f} |"
        for name, r in rows.items()
        if "latency_ms" in r  # (the AS-norm row is the same model: its cost is the model's)
    ]
    lines += [
        "",
        f"resemblyzer / lightsv: latency {_ratio(ratios['latency'])} (torch)"
        + (
            f", {_ratio(ratios['latency_onnxruntime'])} (lightsv in onnxruntime, "
            f"{ours['onnxruntime']['latency_ms']:.1f} ms)"
            if "latency_onnxruntime" in ratios
            else ""
        )
        + f"; parameters x{ratios['params']:.1f}; MACs x{ratios['macs']:.1f}. "
        f"lightsv model file: {ours['size_bytes']:,} bytes. Latency ratios: median of "
        f"{meta.get('timing_rounds', 30)} round-robin rounds [interquartile range].",
    ]
    return "\n".join(lines) + "\n"


def _ratio(r) -> str:
    """A latency ratio: the per-round median [IQR] (or, in results before round-robin timing, one number)."""
    if isinstance(r, dict):
        return f"x{r['median']:.1f} [{r['iqr'][0]:.1f}, {r['iqr'][1]:.1f}]"
    return f"x{r:.1f}"


if __name__ == "__main__":
    sys.exit(main())
