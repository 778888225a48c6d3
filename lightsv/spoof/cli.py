"""`lightsv spoof-score PROTOCOL --root DIR`: a countermeasure's EER and t-DCF over a protocol."""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

import numpy as np

from lightsv.errors import LightsvError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "protocol",
        metavar="PROTOCOL",
        help="ASVspoof text protocol ('SPEAKER FILE - SYSTEM KEY') or CSV 'path,speaker,system,label[,split]'",
    )
    parser.add_argument("--root", required=True, metavar="DIR", help="folder the protocol's paths are relative to")
    parser.add_argument("--split", metavar="NAME", help="score one split of a CSV protocol (e.g. dev)")
    parser.add_argument(
        "--model", metavar="CM", help="countermeasure checkpoint or .onnx file (default: the shipped one)"
    )
    parser.add_argument("--backend", choices=["auto", "torch", "onnx"], default="auto", help="default: auto")
    parser.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: 1)")
    parser.add_argument(
        "--asv",
        default="default",
        metavar="MODEL",
        help="speaker model scoring the protocol's own bona fide and spoof clips for the t-DCF "
        "(default: the shipped one; 'none': EER only)",
    )
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")
    parser.add_argument("--plot", metavar="PNG", help="write a DET curve (bona fide vs spoof)")
    parser.add_argument("--out", metavar="FILE", help="write 'path system label score' lines")


def run(args: argparse.Namespace) -> int:
    from lightsv.cli import _progress, _writable
    from lightsv.spoof.countermeasure import Countermeasure
    from lightsv.spoof.data import BONAFIDE, read_protocol
    from lightsv.spoof.evaluate import asv_scores, evaluate_scores

    _writable(args.plot, args.out)
    if not Path(args.root).is_dir():
        raise LightsvError(f"--root {args.root}: no such folder")
    entries = read_protocol(args.protocol, args.root, args.split)
    cm = Countermeasure.load(args.model, backend=args.backend, threads=args.threads)
    scores = np.array([cm.score(e.path) for e in _progress(entries, "CM scores")])
    asv = None
    if args.asv != "none":
        asv = asv_scores(entries, None if args.asv == "default" else args.asv)
    result = evaluate_scores(scores, entries, asv, bootstrap=1000, asv_threshold="official")
    labels = result.pop("labels")
    result.pop("scores")
    overall = result.pop("overall")
    counts = Counter("bonafide" if e.label == BONAFIDE else "spoof" for e in entries)
    out = {
        "protocol": args.protocol,
        "model": cm.source,
        "eer": overall["eer"],
        "eer_ci95": overall.get("eer_ci95"),
        "t_dcf_2019": overall.get("t_dcf_2019"),
        "t_dcf_2021": overall.get("t_dcf_2021"),
        "counts": dict(sorted(counts.items())),
        "systems": result["systems"],
        "threshold": cm.threshold,
        "decision_errors": {  # at the CM's calibrated threshold
            "bonafide_rejected": int(
                sum(1 for s, y in zip(scores, labels, strict=True) if y == 1 and s < cm.threshold)
            ),
            "spoof_accepted": int(sum(1 for s, y in zip(scores, labels, strict=True) if y == 0 and s >= cm.threshold)),
        },
    }
    if asv is not None:
        out["asv"] = {**result["asv"], "model": args.asv, "threshold": "official (ASVspoof 2019/2021 packages)"}
    try:
        if args.out:
            with open(args.out, "w") as f:
                for e, s in zip(entries, scores, strict=True):
                    f.write(f"{e.path} {e.system} {'bonafide' if e.label == BONAFIDE else 'spoof'} {s:.6f}\n")
        if args.plot:
            from lightsv.plots import det_plot

            det_plot({Path(cm.source).name: (scores, labels)}, args.plot, title=Path(args.protocol).name)
    except OSError as err:
        raise LightsvError(f"cannot write {err.filename}: {err.strerror}") from None
    if args.json:
        print(json.dumps(out, indent=2))
        return 0

    def fmt(v) -> str:
        return "-" if v is None else f"{v:.4f}"

    print(
        f"{counts['bonafide']} bona fide, {counts['spoof']} spoof clips\n"
        f"EER {out['eer']:.2f} %  t-DCF 2019 {fmt(out['t_dcf_2019'])}  2021 {fmt(out['t_dcf_2021'])}"
    )
    for name, s in out["systems"].items():
        print(f"  {name}: {s['spoof']} clips, EER {s['eer']:.2f} %", file=sys.stdout)
    return 0
