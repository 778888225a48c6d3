"""Spoofing-aware speaker verification on the spoof set's dev speakers: SV-EER, SPF-EER, SASV-EER
(SASV 2022) and a-DCF (ASVspoof 5 costs) for the speaker model alone and with a countermeasure.

    python benchmarks/sasv.py [--cm NAME=PATH ...]   # default: the shipped countermeasure
    # writes benchmarks/results/sasv.{md,json} and the trial list benchmarks/results/sasv_trials_dev.txt

Trials (lightsv.spoof.sasv.sasv_trials on the dev split of ../shared/data/spoof/protocol.csv):
target = two bona fide clips of one speaker, non-target = bona fide clips of two speakers, spoof =
a spoofed clip of a speaker's voice against that speaker's bona fide clip. Every clip is scored
whole (no speech trimming), as the CM scores it. Systems, one score per trial:

- speaker model alone: the cosine of the shipped speaker model;
- score sum: cosine + CM logit of the test clip (the SASV 2022 score-sum baseline, raw scores);
- spoof check: the decision rule of `Verifier.verify(spoof_check=True)` as one score: the cosine
  where the CM passes the test clip at its calibrated threshold, else the cosine minus 10 (below
  every passing trial). With the shipped CM this is the joint model: the side network reads the
  speaker model's own trunk. Its a-DCF is also given at the decisions `verify` makes (the speaker
  score's duration-aware LLR >= 0 at each test clip's length, the CM at its calibrated threshold),
  beside the minimum over thresholds.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

import lightsv
from lightsv import metrics
from lightsv.audio import SAMPLE_RATE, load
from lightsv.spoof.countermeasure import Countermeasure
from lightsv.spoof.data import read_protocol
from lightsv.spoof.sasv import sasv_trials

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
GATE = 10.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cm", action="append", default=[], metavar="NAME=PATH")
    args = parser.parse_args()
    cms = {"shipped CM": Countermeasure.load(backend="torch")}
    for item in args.cm:
        name, path = item.split("=", 1)
        cms[name] = Countermeasure.load(path, backend="torch")
    entries = read_protocol(DATA / "spoof" / "protocol.csv", DATA, "dev")
    trials = sasv_trials(entries)
    RESULTS.mkdir(exist_ok=True)
    rel = lambda p: os.path.relpath(p, DATA)  # noqa: E731
    (RESULTS / "sasv_trials_dev.txt").write_text("".join(f"{rel(a)} {rel(b)} {k}\n" for a, b, k in trials))
    clips = sorted({p for a, b, _ in trials for p in (a, b)})
    verifier = lightsv.Verifier.load(vad=False)
    emb = dict(zip(clips, verifier.embed_many(clips, progress=False), strict=True))
    cosine = np.array([float(emb[a] @ emb[b]) for a, b, _ in trials])
    keys = np.array([k for _, _, k in trials])
    tests = sorted({b for _, b, _ in trials})
    # verify's rule (the shipped model is duration-calibrated): LLR at the test clip's length >= 0
    assert verifier.duration is not None, "the shipped model has a duration-aware calibration"
    seconds = {p: len(load(p)) / SAMPLE_RATE for p in tests}
    llr = verifier.duration.llr(cosine, np.array([seconds[b] for _, b, _ in trials]))
    llr = llr - verifier.duration.llr_threshold(None)
    # per system: the score, and the score verify's decision compares with 0 (None: no such decision)
    systems: dict[str, tuple[np.ndarray, np.ndarray | None]] = {"speaker model alone": (cosine, llr)}
    # the target trials each spoof check rejects at verify's decisions, and why: with 12 targets one
    # rejected trial is 8.3 points of every EER, so the table alone does not say what happened
    missed: dict[str, list[dict]] = {}
    for name, cm in cms.items():
        cm_score = {p: cm.score(p) for p in tests}
        logit = np.array([cm_score[b] for _, b, _ in trials])
        passed = logit >= cm.threshold
        missed[name] = [
            {
                "enroll": rel(a),
                "test": rel(b),
                "speaker_llr": round(float(llr[i]), 3),
                "cm_score": round(float(logit[i]), 3),
                "cm_threshold": round(float(cm.threshold), 3),
                "rejected_by": " and ".join(
                    why for why, hit in (("countermeasure", not passed[i]), ("speaker score", llr[i] < 0)) if hit
                ),
            }
            for i, (a, b, k) in enumerate(trials)
            if k == "target" and (not passed[i] or llr[i] < 0)
        ]
        systems[f"score sum, {name}"] = (cosine + logit, None)
        systems[f"spoof check, {name}"] = (
            np.where(passed, cosine, cosine - GATE),
            np.where(passed, llr, np.minimum(llr, 0.0) - GATE),  # judged spoofed: rejected
        )
    rows = {}
    for name, (score, decided) in systems.items():
        tar, non, spf = score[keys == "target"], score[keys == "nontarget"], score[keys == "spoof"]
        row = {**metrics.sasv_eers(tar, non, spf), "a_dcf": metrics.a_dcf(tar, non, spf)}
        if decided is not None:
            d = {k: decided[keys == k] for k in ("target", "nontarget", "spoof")}
            row["a_dcf_at_threshold"] = metrics.a_dcf(d["target"], d["nontarget"], d["spoof"], threshold=0.0)
            row["accepted"] = {k: int((v >= 0).sum()) for k, v in d.items()}
        rows[name] = row
    counts = {k: int((keys == k).sum()) for k in ("target", "nontarget", "spoof")}
    lines = [
        f"Written by `python benchmarks/sasv.py{''.join(f' --cm {c}' for c in args.cm)}` on "
        f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC ({platform.node() or 'host'}; "
        f"load average {os.getloadavg()[0]:.1f}).",
        "",
        f"Trials (`sasv_trials_dev.txt`): {counts['target']} target, {counts['nontarget']} non-target, "
        f"{counts['spoof']} spoof, from the {len(entries)} dev entries of the spoof set (speakers with bona fide "
        "clips only). EERs in %; a-DCF normalised, ASVspoof 5 costs (P_tar 0.9405, P_non 0.0095, P_spf 0.05, "
        "C_miss 1, C_fa,asv 10, C_fa,cm 10); min: over all thresholds; at threshold: the decisions `verify` "
        "makes: the speaker score's duration-aware LLR >= 0 at the test clip's length (the shipped calibration, "
        "EER operating point), and the CM's calibrated threshold.",
        "",
        "| system | SV-EER | SPF-EER | SASV-EER | min a-DCF | a-DCF at threshold |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in rows.items():
        at = r.get("a_dcf_at_threshold")
        lines.append(
            f"| {name} | {r['sv_eer']:.2f} | {r['spf_eer']:.2f} | {r['sasv_eer']:.2f} | {r['a_dcf']:.4f} | "
            f"{'-' if at is None else f'{at:.4f}'} |"
        )
    for name, trials_missed in missed.items():
        lines += ["", f"Target trials the spoof check with the {name} rejects at `verify`'s decisions:", ""]
        lines += ["| enroll | test | speaker LLR | CM score (threshold) | rejected by |", "|---|---|---|---|---|"]
        lines += [
            f"| `{m['enroll']}` | `{m['test']}` | {m['speaker_llr']:+.3f} | "
            f"{m['cm_score']:.3f} ({m['cm_threshold']:.3f}) | {m['rejected_by']} |"
            for m in trials_missed
        ]
    (RESULTS / "sasv.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "sasv.json").write_text(
        json.dumps({"counts": counts, "systems": rows, "targets_rejected": missed}, indent=1)
    )
    print("\n".join(lines))


if __name__ == "__main__":
    main()
