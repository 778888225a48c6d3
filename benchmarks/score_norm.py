"""AS-norm with the shipped cohort against raw cosine scores, the shipped model, every dev list.

    python benchmarks/score_norm.py   # writes benchmarks/results/score_norm.{md,json} and score_norm_det.png

The cohort (lightsv/assets/cohort.npz, made by recipes/voxceleb/local/make_cohort.py) holds the mean
embeddings of the 445 training speakers; its thresholds, like the model's raw-score thresholds, were
calibrated on the three dev lists pooled, so the decision columns are in-sample for both. EER and
minDCF do not depend on any threshold.
"""

from __future__ import annotations

import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lightsv import metrics
from lightsv.data import read_trials
from lightsv.plots import det_plot
from lightsv.train.evaluation import families
from lightsv.verifier import Verifier

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
LISTS = ["trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt"]


def summary(scores, labels, speakers, threshold: float) -> dict:
    lo, hi = metrics.eer_ci(scores, labels, n_boot=1000, groups=speakers)
    miss = float(np.mean(scores[labels == 1] < threshold))
    fa = float(np.mean(scores[labels == 0] >= threshold))
    return {
        "eer": metrics.eer(scores, labels),
        "eer_lo": lo,
        "eer_hi": hi,
        "min_dcf": metrics.min_dcf(scores, labels, p_target=0.01),
        "hter": 50 * (miss + fa),
        "miss": 100 * miss,
        "fa": 100 * fa,
    }


def main() -> None:
    family = families(SPEECH / "manifest.csv")
    results: dict = {}
    systems: dict = {}
    with Verifier.load(backend="onnx", threads=1) as v:
        raw_threshold = v.threshold
        v.set_cohort("default")
        norm_threshold, top_n, cohort_size = v.threshold, v.top_n, v.cohort_size
        for name in LISTS:
            trials = read_trials(SPEECH / name)
            files = sorted({p for t in trials for p in (t.enroll, t.test)})
            index = {f: i for i, f in enumerate(files)}
            emb = v.embed_many([SPEECH / "wav" / f for f in files])
            pairs = [(emb[index[t.enroll]], emb[index[t.test]]) for t in trials]
            raw = np.array([float(a @ b) for a, b in pairs])
            normed = np.array([v.score(a, b) for a, b in pairs])
            labels = np.array([t.label for t in trials])
            speakers = np.array([t.enroll.split("/")[0] for t in trials])
            fam = np.array([family.get(os.path.abspath(SPEECH / "wav" / t.enroll), "unknown") for t in trials])
            entry = {"raw": summary(raw, labels, speakers, raw_threshold), "asnorm": {}, "families": {}}
            entry["asnorm"] = summary(normed, labels, speakers, norm_threshold)
            for f in sorted(set(fam)):
                pick = fam == f
                if 0 < labels[pick].sum() < pick.sum():
                    entry["families"][f] = {
                        "raw": metrics.eer(raw[pick], labels[pick]),
                        "asnorm": metrics.eer(normed[pick], labels[pick]),
                    }
            results[name] = entry
            systems[f"{name} raw"] = (raw, labels)
            systems[f"{name} AS-norm"] = (normed, labels)
            print(name, f"raw {entry['raw']['eer']:.2f}", f"AS-norm {entry['asnorm']['eer']:.2f}", flush=True)
        model_id = v.model_id
    meta = {
        "command": "python benchmarks/score_norm.py",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "model_id": model_id,
        "cohort": {"size": cohort_size, "top_n": top_n},
        "thresholds": {"raw": raw_threshold, "asnorm": norm_threshold},
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "score_norm.json").write_text(json.dumps({"meta": meta, "lists": results}, indent=1))
    det_plot(systems, RESULTS / "score_norm_det.png", title="Shipped model: raw cosine and AS-norm")
    (RESULTS / "score_norm.md").write_text(markdown(meta, results))
    print((RESULTS / "score_norm.md").read_text())


def markdown(meta: dict, results: dict) -> str:
    t = meta["thresholds"]
    lines = [
        "# AS-norm with the shipped cohort",
        "",
        f"Written by `{meta['command']}` on {meta['date']} (model {meta['model_id']}, ONNX backend). Cohort: "
        f"{meta['cohort']['size']} training speakers' mean embeddings (`lightsv/assets/cohort.npz`), top "
        f"{meta['cohort']['top_n']} scores per side. EER % with a 95 % interval from resampling enrolled speakers; "
        f"minDCF at p_target 0.01. Decisions at each score type's calibrated EER threshold (raw {t['raw']:.4f}, "
        f"AS-norm {t['asnorm']:.4f}), both calibrated on the three lists pooled, so in-sample for both. "
        '`lightsv verify --cohort default` / `Verifier.set_cohort("default")` score this way.',
        "",
        "| list | EER raw | EER AS-norm | minDCF raw | minDCF AS-norm | HTER raw (miss/FA) | HTER AS-norm (miss/FA) |",
        "|---|---|---|---:|---:|---|---|",
    ]
    for name, e in results.items():
        r, a = e["raw"], e["asnorm"]
        lines.append(
            f"| {name} | {r['eer']:.2f} [{r['eer_lo']:.1f}, {r['eer_hi']:.1f}] "
            f"| {a['eer']:.2f} [{a['eer_lo']:.1f}, {a['eer_hi']:.1f}] | {r['min_dcf']:.3f} | {a['min_dcf']:.3f} "
            f"| {r['hter']:.2f} ({r['miss']:.1f}/{r['fa']:.1f}) | {a['hter']:.2f} ({a['miss']:.1f}/{a['fa']:.1f}) |"
        )
    lines += ["", "## Per source family: EER % raw -> AS-norm", ""]
    lines += ["| list | family | raw | AS-norm |", "|---|---|---:|---:|"]
    for name, e in results.items():
        for f, x in e["families"].items():
            lines.append(f"| {name} | {f} | {x['raw']:.2f} | {x['asnorm']:.2f} |")
    lines += ["", "DET curves: `score_norm_det.png`."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
