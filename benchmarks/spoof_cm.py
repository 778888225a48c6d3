"""Countermeasures on the spoof set's dev split: EER and t-DCF overall and per system, and the
shortcut-invariance check (the EER after loudness normalisation, codec and resampling round trips
and equal-length crops of every clip).

    python benchmarks/spoof_cm.py --cm side=PATH --cm cnn=PATH [--fuse side+cnn] [--out NAME]
    # writes benchmarks/results/NAME.{md,json} (default spoof_cm)

Needs the data beside the repo (../shared/data). A CM's score is its logit of bona fide; a fusion
is the sum of its members' logits. Dev: the spoof protocol's dev split (22 bona fide, 188 spoof of
32 speakers) and, as a second bona fide check, the same spoofs against real recordings of the speech
corpus's dev speakers (split dev_speech of recipes/spoof/data/protocol.csv, written by the recipe's
stage 0). The shortcut check reports each change with a paired bootstrap interval, on the dev split
and with the speech-corpus bona fide added. The t-DCF uses the shipped speaker model on the dev clips
(lightsv.spoof.asv_scores) at the ASVspoof packages' ASV threshold.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lightsv import metrics
from lightsv.audio import load
from lightsv.spoof.countermeasure import Countermeasure
from lightsv.spoof.data import BONAFIDE, read_protocol
from lightsv.spoof.evaluate import asv_scores, evaluate_scores
from lightsv.spoof.shortcuts import INVARIANCE

REPO = Path(__file__).resolve().parents[1]
DATA = REPO.parent / "shared" / "data"
RESULTS = Path(__file__).parent / "results"
PROTOCOL = REPO / "recipes" / "spoof" / "data" / "protocol.csv"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cm", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--fuse", action="append", default=[], metavar="A+B", help="sum of the members' logits")
    parser.add_argument("--out", default="spoof_cm")
    parser.add_argument("--no-invariance", action="store_true")
    args = parser.parse_args()
    cms = {}
    for item in args.cm:
        name, path = item.split("=", 1)
        cms[name] = Countermeasure.load(path, backend="torch", threshold=0.0)
    dev = read_protocol(PROTOCOL, DATA, "dev")
    extra_bona = read_protocol_bona(PROTOCOL, DATA, "dev_speech")
    wavs = {e.path: load(e.path) for e in dev + extra_bona}
    conditions = {"original": lambda w: w} | ({} if args.no_invariance else INVARIANCE)
    scores: dict[str, dict[str, np.ndarray]] = {}  # condition -> cm -> scores over dev + extra_bona
    clips = dev + extra_bona
    for cond, transform in conditions.items():
        transformed = [transform(wavs[e.path]) for e in tqdm(clips, desc=cond, leave=False)]
        scores[cond] = {name: np.array([cm.score_wav(w) for w in transformed]) for name, cm in cms.items()}
        for fusion in args.fuse:
            scores[cond][fusion] = sum(scores[cond][m] for m in fusion.split("+"))
    systems = list(scores["original"])
    asv = asv_scores(dev)
    n = len(dev)
    labels = np.array([e.label for e in dev])
    pooled = np.r_[labels, np.full(len(extra_bona), BONAFIDE)]  # dev, then the speech corpus's bona fide
    rows = {}
    for name in systems:
        s = scores["original"][name]
        res = evaluate_scores(s[:n], dev, asv, bootstrap=1000, asv_threshold="official")
        spoof = s[:n][labels != BONAFIDE]
        speech_bona = s[n:]
        res["speech_bonafide_eer"] = metrics.eer(
            np.r_[speech_bona, spoof], np.r_[np.ones(len(speech_bona)), np.zeros(len(spoof))]
        )
        res["pooled_bonafide_eer"] = metrics.eer(s, pooled)
        # the goal's check on the spoof set's dev split (22 bona fide: one clip is 4.5 points), then the
        # same with the speech corpus's bona fide added (182), where a change has a finer resolution
        res["invariance"], res["invariance_pooled"] = {}, {}
        for cond in conditions:
            if cond == "original":
                continue
            for key, pick, lab in (("invariance", slice(0, n), labels), ("invariance_pooled", slice(None), pooled)):
                change, low, high = metrics.eer_change_ci(
                    scores["original"][name][pick], scores[cond][name][pick], lab, n_boot=1000
                )
                eer_after = metrics.eer(scores[cond][name][pick], lab)
                res[key][cond] = {"eer": eer_after, "change": change, "change_ci95": [low, high]}
        res.pop("scores")
        res.pop("labels")
        rows[name] = res
    write(args, rows, systems, conditions, len(extra_bona))


def read_protocol_bona(path, root, split):
    from lightsv.errors import ConfigError

    try:
        return read_protocol(path, root, split)
    except ConfigError:  # read_protocol wants both labels; dev_speech is bona fide only
        import csv

        from lightsv.spoof.data import Entry

        rows = [r for r in csv.DictReader(open(path)) if r["split"] == split]
        return [Entry(os.path.join(root, r["path"]), r["speaker"], "bonafide", BONAFIDE, split) for r in rows]


def write(args, rows, systems, conditions, n_extra) -> None:
    RESULTS.mkdir(exist_ok=True)
    first = next(iter(rows.values()))
    names = list(first["systems"])
    lines = [
        f"Written by `python benchmarks/spoof_cm.py {' '.join(f'--cm {c}' for c in args.cm)}"
        f"{''.join(f' --fuse {f}' for f in args.fuse)}{'' if args.out == 'spoof_cm' else f' --out {args.out}'}` "
        f"on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC "
        f"({platform.node() or 'host'}; load average {os.getloadavg()[0]:.1f}).",
        "",
        "Spoof set dev split: 22 bona fide, 188 spoof clips; one bona fide clip moves an EER by 4.5 points. "
        "t-DCF: the shipped speaker model on the dev clips, ASV threshold as the ASVspoof packages set it. "
        f"EER vs speech bona fide: the same spoofs against {n_extra} real recordings of the speech corpus's "
        "dev speakers (other sources, formats and loudness than the spoof set's bona fide).",
        "",
        "| CM | EER % [95 % CI] | t-DCF 2019 | t-DCF 2021 | EER vs speech bona fide | "
        + " | ".join(f"EER {n}" for n in names)
        + " |",
        "|---|---|---|---|---|" + "---|" * len(names),
    ]
    for name in systems:
        r = rows[name]
        o = r["overall"]
        ci = o.get("eer_ci95") or [float("nan")] * 2
        lines.append(
            f"| {name} | {o['eer']:.2f} [{ci[0]:.1f}, {ci[1]:.1f}] | {fmt(o.get('t_dcf_2019'))} | "
            f"{fmt(o.get('t_dcf_2021'))} | {r['speech_bonafide_eer']:.2f} | "
            + " | ".join(f"{r['systems'][n]['eer']:.2f}" for n in names)
            + " |"
        )
    conds = [c for c in conditions if c != "original"]
    if conds:
        lines += [
            "",
            "Invariance: EER % after transforming every clip (bona fide and spoof alike), and its change from "
            "the original in points with a paired bootstrap 95 % interval (the same resampled trials scored "
            "before and after); the goal is within 2 points. `dev`: the spoof set's dev split; `dev + speech`: "
            f"its spoofs against its 22 bona fide and the {n_extra} speech-corpus recordings together.",
            "",
            "| CM | trials | original | " + " | ".join(conds) + " | largest change |",
            "|---|---|---|" + "---|" * len(conds) + "---|",
        ]
        for name in systems:
            r = rows[name]
            for label, key, base in (
                ("dev", "invariance", r["overall"]["eer"]),
                ("dev + speech", "invariance_pooled", r["pooled_bonafide_eer"]),
            ):
                inv = r[key]
                worst = max(conds, key=lambda c: abs(inv[c]["change"]))
                lines.append(
                    f"| {name} | {label} | {base:.2f} | "
                    + " | ".join(_change(inv[c]) for c in conds)
                    + f" | {abs(inv[worst]['change']):.2f} ({worst}) |"
                )
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    (RESULTS / f"{args.out}.json").write_text(json.dumps(rows, indent=1, default=float))
    print("\n".join(lines))


def _change(cell) -> str:
    low, high = cell["change_ci95"]
    return f"{cell['eer']:.2f} ({cell['change']:+.2f} [{low:+.1f}, {high:+.1f}])"


def fmt(v) -> str:
    return "-" if v is None else f"{v:.4f}"


if __name__ == "__main__":
    main()
