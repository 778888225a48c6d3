"""Where the shipped model's threshold errors come from: calibration across source families and lists.

    python benchmarks/calibration_study.py     # writes benchmarks/results/calibration_study.{md,json}

Two questions that the issues leave open (12: "score calibration per source family"; 16: the
duration calibration fitted on two dev lists transfers poorly to the third):

1. Per-family calibration on `trials_dev.txt`. Its pooled EER mixes three families whose scores sit
   on different scales. Each family's scores are mapped by its own linear calibration (a Gaussian
   with the two classes' shared variance), fitted on that family's own trials: an oracle that knows
   the family and sees the answers, so it bounds what any per-family calibration could reach. Raw
   cosine and AS-norm (the shipped cohort).
2. Cross-list transfer. For each dev list, calibrations fitted on the other two lists (every trial,
   test side whole and cut to its central 0.25-3 s) score it; the half total error rate at LLR >= 0
   against the LLR's own EER says how much the transferred threshold costs. Quality measures:
   `durations` (the shipped form, `lightsv.duration`: score weight and offset linear in the two
   log-durations), `+ impostor means` (the mean of each side's top cohort scores, the quality
   measure of the VoxSRC systems' QMF calibration), `+ impostor means and spreads`, and `AS-norm +
   durations` (the AS-norm score in the durations form, as `--cohort default` ships).

Clips trimmed to their speech as `Verifier.load()` does; the shipped model in onnxruntime, one thread.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import numpy as np
from tqdm import tqdm

import lightsv
from lightsv import cohort as cohorts
from lightsv import metrics, speech
from lightsv.audio import SAMPLE_RATE, central_crop, load
from lightsv.duration import design, fit_llr
from lightsv.train.evaluation import families
from lightsv.trials import read_trials
from lightsv.verifier import TOP_N

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
LISTS = ("trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt")
SEGMENTS = (0.25, 0.5, 1.0, 2.0, 3.0)
KINDS = ("durations", "+ impostor means", "+ impostor means and spreads", "AS-norm + durations")


def list_rows(verifier, cohort, name: str) -> tuple[np.ndarray, list]:
    """Columns: raw cosine, label, test s, enroll s, enroll top mean, std, test top mean, std, whole (1/0);
    one row per trial and test length (SEGMENTS, then whole)."""
    trials = read_trials(SPEECH / name)
    files = sorted({p for t in trials for p in (t.enroll, t.test)})
    tests = sorted({t.test for t in trials})
    wav = {}
    for f in tqdm(files, desc=f"{name}: trim", leave=False):
        wav[f] = speech.trim(load(SPEECH / "wav" / f), min_seconds=verifier.min_seconds, name=f)
    whole = verifier.embed_many([wav[f] for f in files], sample_rate=SAMPLE_RATE, progress=False)

    def stats(rows: np.ndarray) -> np.ndarray:
        return np.stack(cohorts.top_stats(rows @ cohort.embeddings.T, cohort.top_n or TOP_N), axis=1)

    emb, seconds = dict(zip(files, whole, strict=True)), {f: len(wav[f]) / SAMPLE_RATE for f in files}
    whole_stats = dict(zip(files, stats(whole), strict=True))
    rows = []
    for s in (*SEGMENTS, "whole"):
        if s == "whole":
            test_emb, test_stats = emb, whole_stats
        else:
            cut = verifier.embed_many([central_crop(wav[f], s) for f in tests], sample_rate=SAMPLE_RATE, progress=False)
            test_emb, test_stats = dict(zip(tests, cut, strict=True)), dict(zip(tests, stats(cut), strict=True))
        for t in trials:
            length = seconds[t.test] if s == "whole" else min(s, seconds[t.test])
            rows.append(
                (float(emb[t.enroll] @ test_emb[t.test]), t.label, length, seconds[t.enroll])
                + tuple(whole_stats[t.enroll])
                + tuple(test_stats[t.test])
                + (float(s == "whole"),)
            )
    return np.array(rows), trials


def features(rows: np.ndarray, kind: str, ranges) -> np.ndarray:
    """The calibration's inputs: lightsv.duration's design (durations clamped to the fitted ``ranges``
    as it does), then the kind's quality measures."""
    score = rows[:, 0]
    (t_lo, t_hi), (e_lo, e_hi) = ranges
    mean_e, std_e, mean_t, std_t = rows[:, 4], rows[:, 5], rows[:, 6], rows[:, 7]
    if kind == "AS-norm + durations":
        score = cohorts.asnorm(score, (mean_e, std_e), (mean_t, std_t))
    x = design(score, np.clip(rows[:, 2], t_lo, t_hi), np.clip(rows[:, 3], e_lo, e_hi))
    if kind.startswith("+ impostor means"):
        x = np.column_stack([x, mean_e, mean_t])
    if kind == "+ impostor means and spreads":
        x = np.column_stack([x, std_e, std_t])
    return x


def rates(llr: np.ndarray, labels: np.ndarray) -> dict:
    miss = 100 * float(np.mean(llr[labels == 1] < 0))
    fa = 100 * float(np.mean(llr[labels == 0] >= 0))
    return {"eer_llr": metrics.eer(llr, labels), "hter": (miss + fa) / 2, "miss": miss, "fa": fa}


def per_family(rows: np.ndarray, trials) -> dict:
    whole = rows[rows[:, 8] == 1]
    labels = whole[:, 1]
    family = families(SPEECH / "manifest.csv")  # keyed by absolute path
    fams = np.array([family[os.path.abspath(SPEECH / "wav" / t.enroll)] for t in trials])
    cosine = whole[:, 0]
    norm = cohorts.asnorm(cosine, (whole[:, 4], whole[:, 5]), (whole[:, 6], whole[:, 7]))
    out = {}
    for name, score in (("cosine", cosine), ("AS-norm", norm)):
        calibrated = np.empty_like(score)
        fam_eer = {}
        for f in sorted(set(fams)):
            m = fams == f
            tar, non = score[m & (labels == 1)], score[m & (labels == 0)]
            spread = np.sqrt(0.5 * (tar.var() + non.var()))
            calibrated[m] = (tar.mean() - non.mean()) / spread**2 * (score[m] - 0.5 * (tar.mean() + non.mean()))
            fam_eer[f] = {"trials": int(m.sum()), "eer": metrics.eer(score[m], labels[m])}
        out[name] = {
            "pooled": (metrics.eer(score, labels), *metrics.eer_ci(score, labels)),
            "per_family_calibrated": (metrics.eer(calibrated, labels), *metrics.eer_ci(calibrated, labels)),
            "families": fam_eer,
        }
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    verifier = lightsv.Verifier.load(backend="onnx", vad=False, threads=1)
    cohort = cohorts.read(cohorts.DEFAULT_COHORT, verifier.model_id)
    data = {name: list_rows(verifier, cohort, name) for name in tqdm(LISTS, desc="lists")}
    result = {"model": verifier.model_id, "per_family": per_family(*data["trials_dev.txt"]), "transfer": {}}
    for kind in KINDS:
        for held in LISTS:
            train = np.concatenate([data[n][0] for n in LISTS if n != held])
            ranges = ((train[:, 2].min(), train[:, 2].max()), (train[:, 3].min(), train[:, 3].max()))
            w = fit_llr(features(train, kind, ranges), train[:, 1])
            rows = data[held][0]
            llr = features(rows, kind, ranges) @ w
            whole = rows[:, 8] == 1
            result["transfer"][f"{kind} | {held}"] = {
                "whole": rates(llr[whole], rows[whole, 1]),
                "pooled": rates(llr, rows[:, 1]),
            }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "calibration_study.json").write_text(json.dumps(result, indent=1))
    text = markdown(result)
    (RESULTS / "calibration_study.md").write_text(text)
    print(text)
    return 0


def markdown(r: dict) -> str:
    ci = lambda e: f"{e[0]:.2f} [{e[1]:.1f}, {e[2]:.1f}]"  # noqa: E731
    families = list(r["per_family"]["cosine"]["families"])
    lines = [
        "# Calibration across source families and lists",
        "",
        f"Written by `python benchmarks/calibration_study.py` (model {r['model']}, onnxruntime, 1 thread; "
        "clips trimmed to their speech). EER % [bootstrap 95 % interval].",
        "",
        "## Per-family calibration on trials_dev.txt (an oracle: each family fitted on its own trials)",
        "",
        "| scores | pooled EER | per-family calibrated EER | " + " | ".join(families) + " |",
        "|---|---|---|" + "---|" * len(families),
    ]
    for name, row in r["per_family"].items():
        fams = " | ".join(f"{v['eer']:.2f} ({v['trials']} trials)" for v in row["families"].values())
        lines.append(f"| {name} | {ci(row['pooled'])} | {ci(row['per_family_calibrated'])} | {fams} |")
    lines += [
        "",
        "## Cross-list transfer (fitted on the other two lists)",
        "",
        "EER of the LLR, and the half total error rate (miss / false accept) at LLR >= 0; `whole`: whole "
        "test clips, `pooled`: whole and cut to 0.25, 0.5, 1, 2 and 3 s together.",
        "",
        "| calibration | list | EER whole | HTER whole (miss/FA) | EER pooled | HTER pooled (miss/FA) |",
        "|---|---|---|---|---|---|",
    ]
    for key, row in r["transfer"].items():
        kind, held = key.split(" | ")
        w, p = row["whole"], row["pooled"]
        lines.append(
            f"| {kind} | {held} | {w['eer_llr']:.2f} | {w['hter']:.2f} ({w['miss']:.1f}/{w['fa']:.1f}) | "
            f"{p['eer_llr']:.2f} | {p['hter']:.2f} ({p['miss']:.1f}/{p['fa']:.1f}) |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
