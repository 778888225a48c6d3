"""The transformation-module study: every backbone plain and with the module, trained the same way.

    python benchmarks/transform_study.py train [--shard I/N]   # trains what is missing into exp/study/
    python benchmarks/transform_study.py evaluate [--reverse]  # accuracy + ONNX of each trained model, cached
    python benchmarks/transform_study.py report                # -> benchmarks/results/transform_study.*

Training uses recipes/voxceleb/conf/study.yaml for every variant; only model.* and transform.* differ.
Runs resume (the trainer's checkpoints), so `train` can be stopped and started again; `--shard I/N`
splits the variants into N queues balanced by an estimated cost, one per process.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "recipes" / "voxceleb"
CONFIG = RECIPE / "conf" / "study.yaml"
EXP = ROOT / "exp" / "study"
RESULTS = ROOT / "benchmarks" / "results"
SPEECH = ROOT.parent / "shared" / "data" / "speech"
LISTS = ("trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt")
SEGMENTS = (1.0, 2.0, 3.0)  # test side cut to its central s seconds, on trials_dev.txt

# Small, stated sizes that fit a 2-core machine; each keeps its family's depth and structure.
BACKBONES = {
    "ecapa_tdnn": ("ecapa_tdnn_small", "{channels: 128, mfa_channels: 384, embed_dim: 256, scale: 2}"),
    "resnet34": ("resnet34", "{base_width: 8}"),
    "amcrn": ("amcrn_small", "{}"),
}
# relative cost of one training step, measured on one thread (ResNet's narrow 2-D convs are slow on CPU)
STEP_COST = {"ecapa_tdnn": 1.0, "resnet34": 3.0, "amcrn": 1.0}


@dataclass(frozen=True)
class Variant:
    backbone: str
    subsets: int = 0  # 0: plain
    shared: bool = False
    fusion: str = "sum"

    @property
    def variant(self) -> str:
        return "plain" if not self.subsets else "transform"

    @property
    def name(self) -> str:
        if not self.subsets:
            return f"{self.backbone}-plain"
        return f"{self.backbone}-k{self.subsets}-{'shared' if self.shared else 'split'}-{self.fusion}"

    def overrides(self) -> list[str]:
        model, options = BACKBONES[self.backbone]
        transform = "null"
        if self.subsets:
            transform = f"{{subsets: {self.subsets}, share: {str(self.shared).lower()}, fusion: {self.fusion}}}"
        return [f"model.name={model}", f"model.options={options}", f"transform={transform}"]

    @property
    def cost(self) -> float:
        return STEP_COST[self.backbone] * (1.0 if not self.subsets else 1.0 + 0.3 * (not self.shared) * self.subsets)


def variants() -> list[Variant]:
    out = []
    for backbone in BACKBONES:
        out.append(Variant(backbone))
        for k in (2, 4):
            for shared in (False, True):
                out.append(Variant(backbone, k, shared))
    # the fusion variants at K=4 for one backbone
    out += [Variant("ecapa_tdnn", 4, False, fusion) for fusion in ("concat", "pool")]
    return out


def shard(items: list[Variant], index: int, count: int) -> list[Variant]:
    """Greedy longest-first split into `count` queues of similar estimated cost."""
    queues: list[list[Variant]] = [[] for _ in range(count)]
    loads = [0.0] * count
    for v in sorted(items, key=lambda v: -v.cost):
        i = loads.index(min(loads))
        queues[i].append(v)
        loads[i] += v.cost
    # cheapest first within a queue, so whole backbones finish early and the long runs (which
    # resume where they stopped) come last
    return sorted(queues[index], key=lambda v: v.cost)


def train(args: argparse.Namespace) -> None:
    index, count = (int(x) for x in args.shard.split("/"))
    todo = [v for v in shard(variants(), index, count) if not (EXP / v.name / "model.pt").exists()]
    print(f"shard {index}/{count}: {', '.join(v.name for v in todo) or 'nothing to train'}", flush=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for v in todo:
        out = EXP / v.name
        out.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "lightsv.train", "train", str(CONFIG), str(out)]
        cmd += [arg for o in v.overrides() for arg in ("--set", o)]
        print(f"training {v.name}", flush=True)
        with open(out / "train.out", "a") as log:
            subprocess.run(cmd, cwd=RECIPE, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train the missing variants")
    t.add_argument("--shard", default="0/1", help="I/N: train the I-th of N balanced queues")
    r = sub.add_parser("report", help="evaluate every trained variant and write the results")
    r.add_argument("--bootstrap", type=int, default=1000)
    r.add_argument("--repeats", type=int, default=20, help="timed runs per latency figure")
    r.add_argument("--speech", type=Path, default=SPEECH)
    e = sub.add_parser("evaluate", help="only the cached accuracy and ONNX export of every trained variant")
    e.add_argument("--bootstrap", type=int, default=1000)
    e.add_argument("--speech", type=Path, default=SPEECH)
    e.add_argument("--reverse", action="store_true", help="last variant first (a second worker)")
    args = parser.parse_args()
    {"train": train, "evaluate": evaluate_all, "report": report}[args.command](args)


# ----------------------------------------------------------------------------- report


def accuracy(model, features, speech: Path, bootstrap: int) -> dict:
    """EER, speaker-bootstrap interval and minDCF on every dev list (per family), and on trials_dev.txt
    with the test side cut to 1, 2 and 3 s. Enrollment always stays whole."""
    import numpy as np

    from lightsv import metrics
    from lightsv.audio import central_crop, load
    from lightsv.data import read_trials
    from lightsv.features import Fbank
    from lightsv.train.evaluation import extract, families
    from lightsv.verifier import embed_batch

    family = families(speech / "manifest.csv")
    root = speech / "wav"

    def summary(scores, labels, speakers) -> dict:
        lo, hi = metrics.eer_ci(scores, labels, n_boot=bootstrap, groups=speakers)
        return {
            "eer": metrics.eer(scores, labels),
            "eer_lo": lo,
            "eer_hi": hi,
            "min_dcf": metrics.min_dcf(scores, labels, p_target=0.01),
            "trials": len(labels),
        }

    out: dict = {"lists": {}, "segments": {}}
    for name in LISTS:
        trials = read_trials(speech / name)
        files = sorted({p for t in trials for p in (t.enroll, t.test)})
        emb = extract(model, [str(root / f) for f in files], features=features)
        emb = {f: emb[str(root / f)] for f in files}
        scores = np.array([float(emb[t.enroll] @ emb[t.test]) for t in trials])
        labels = np.array([t.label for t in trials])
        speakers = np.array([t.enroll.split("/")[0] for t in trials])
        fam = np.array([family.get(os.path.abspath(root / t.enroll), "unknown") for t in trials])
        result = {"overall": summary(scores, labels, speakers), "families": {}}
        for f in sorted(set(fam)):
            pick = fam == f
            if 0 < labels[pick].sum() < pick.sum():
                result["families"][f] = summary(scores[pick], labels[pick], speakers[pick])
        out["lists"][name] = result
        if name != LISTS[0]:
            continue
        fbank = Fbank(features)
        tests = sorted({t.test for t in trials})
        audio = {f: load(root / f, min_seconds=0.0) for f in tests}
        for seconds in SEGMENTS:
            cut = {}
            for i in range(0, len(tests), 32):
                batch = tests[i : i + 32]
                cut.update(
                    zip(batch, embed_batch(model, fbank, [central_crop(audio[f], seconds) for f in batch]), strict=True)
                )
            cut_scores = np.array([float(emb[t.enroll] @ cut[t.test]) for t in trials])
            out["segments"][str(seconds)] = summary(cut_scores, labels, speakers)
    return out


def cost(model, onnx_path: Path, repeats: int) -> dict:
    """Parameters, MACs per second of audio, peak memory (lightsv.profile) and onnxruntime latency of
    one 3 s clip, waveform to embedding, one thread."""
    import statistics
    import time

    import numpy as np

    from lightsv.profile import profile
    from lightsv.runtime import OnnxModel

    p = profile(model, seconds=3.0, repeats=repeats)
    session = OnnxModel(onnx_path, threads=1)
    wav = np.random.default_rng(0).uniform(-0.3, 0.3, 48000).astype(np.float32)
    for _ in range(3):
        session.embed([wav])
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session.embed([wav])
        times.append(time.perf_counter() - start)
    return {
        "params": p["params"],
        "macs_per_second": p["macs_per_second"],
        "train_peak_mb": p["peak_memory_train_bytes"] / 2**20,
        "infer_peak_mb": p["peak_memory_inference_bytes"] / 2**20,
        "torch_ms_3s": p["latency_ms"],
        "ort_ms_3s": 1000 * statistics.median(times),
    }


COLUMNS = [
    "backbone", "variant", "subsets", "shared", "fusion", "params", "macs_per_second", "train_peak_mb",
    "infer_peak_mb", "ort_ms_3s", "eer", "eer_lo", "eer_hi", "min_dcf", "eer_1s", "eer_2s", "eer_3s",
    "train_acc", "eer_mean_3_lists",
]  # fmt: skip
#: Below this training accuracy (%) at the end of the schedule a model has barely left its initialisation:
#: its EERs compare untrained networks, so its rows are not evidence for or against the module.
BARELY_TRAINED = 3.0


def train_accuracy(folder: Path, last: int = 10) -> float:
    """Mean classification accuracy (%) on the training batches of the last `last` log lines."""
    log = (folder / "train.log").read_text()
    accs = [float(m.group(1)) for m in re.finditer(r"^.* train epoch .* acc ([0-9.]+)", log, re.M)]
    return 100 * sum(accs[-last:]) / max(1, len(accs[-last:]))


def evaluate(v: Variant, speech: Path, bootstrap: int):
    """The trained model, its accuracy and its ONNX export, computed once and cached in its folder
    (they do not change between report runs; cost is measured again each time)."""
    import json

    from lightsv.checkpoint import load_model
    from lightsv.edge.export import export_checkpoint
    from lightsv.verifier import _features

    folder = EXP / v.name
    model, extra = load_model(folder / "model.pt", return_extra=True)
    model.eval()
    cached = folder / "study_accuracy.json"
    if not cached.exists():
        result = accuracy(model, _features(extra, v.name), speech, bootstrap)
        cached.write_text(json.dumps(result, indent=1))
    if not (folder / "model.onnx").exists():  # written aside, then renamed: a second worker may be at it too
        part = export_checkpoint(folder / "model.pt", folder / f"model.{os.getpid()}.onnx")
        os.replace(part, folder / "model.onnx")
    return model, json.loads(cached.read_text())


def evaluate_all(args: argparse.Namespace) -> None:
    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    done = [v for v in variants() if (EXP / v.name / "model.pt").exists()]
    for v in tqdm(done[::-1] if args.reverse else done, desc="evaluate"):
        evaluate(v, args.speech, args.bootstrap)


def report(args: argparse.Namespace) -> None:
    import csv
    import json

    import torch
    from tqdm import tqdm

    torch.set_num_threads(1)
    load = os.getloadavg()[0]
    done = [v for v in variants() if (EXP / v.name / "model.pt").exists()]
    missing = [v.name for v in variants() if v not in done]
    rows, details = [], {}
    for v in tqdm(done, desc="variants"):
        model, acc = evaluate(v, args.speech, args.bootstrap)
        c = cost(model, EXP / v.name / "model.onnx", args.repeats)
        overall, seg = acc["lists"][LISTS[0]]["overall"], acc["segments"]
        rows.append(
            {
                "backbone": v.backbone,
                "variant": v.variant,
                "subsets": v.subsets or 1,
                "shared": v.shared if v.subsets else "",
                "fusion": v.fusion if v.subsets else "",
                **{k: c[k] for k in ("params", "macs_per_second", "train_peak_mb", "infer_peak_mb", "ort_ms_3s")},
                **{k: overall[k] for k in ("eer", "eer_lo", "eer_hi", "min_dcf")},
                **{f"eer_{s:g}s": seg[str(s)]["eer"] for s in SEGMENTS},
                "train_acc": train_accuracy(EXP / v.name),
                "eer_mean_3_lists": sum(acc["lists"][lst]["overall"]["eer"] for lst in LISTS) / len(LISTS),
            }
        )
        details[v.name] = {"cost": c, "accuracy": acc}
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(RESULTS / "transform_study.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: round(x, 4) if isinstance(x, float) else x for k, x in row.items()})
    meta = {
        "command": "python benchmarks/transform_study.py report",
        "config": str(CONFIG.relative_to(ROOT)),
        "load_average_at_start": load,
        "torch": torch.__version__,
        "missing": missing,
    }
    (RESULTS / "transform_study.json").write_text(json.dumps({"meta": meta, "models": details}, indent=1))
    (RESULTS / "transform_study.md").write_text(markdown(rows, details, meta))
    plot(rows, RESULTS / "transform_study.png")
    print((RESULTS / "transform_study.md").read_text())


def _plain(rows: list[dict], backbone: str) -> dict | None:
    return next((r for r in rows if r["backbone"] == backbone and r["variant"] == "plain"), None)


def _label(row: dict) -> str:
    if row["variant"] == "plain":
        return "plain"
    return f"K={row['subsets']} {'shared' if row['shared'] else 'split'} {row['fusion']}"


def markdown(rows: list[dict], details: dict, meta: dict) -> str:
    lines = [
        "# The transformation-module study",
        "",
        f"Written by `{meta['command']}` (load average {meta['load_average_at_start']:.1f} at start; torch "
        f"{meta['torch']}). Every model trained by `python benchmarks/transform_study.py train` with "
        f"`{meta['config']}`: same data (the speech corpus's train split), schedule, augmentation and seed; "
        "only the backbone and the module differ. EER % on `trials_dev.txt` with a 95 % interval from "
        "resampling enrolled speakers; `EER@s`: test side cut to its central s seconds. Cost: parameters "
        "of the embedding network, MACs per second of audio (torch.utils.flop_counter), peak memory of a "
        "training step (batch 2, Adam) and of inference, and the onnxruntime latency of one 3 s clip, "
        "waveform to embedding, one thread. Ratios are to the plain backbone.",
        "",
    ]
    if meta["missing"]:
        lines += [f"Not trained yet (no row): {', '.join(meta['missing'])}.", ""]
    lines += [
        "| backbone | variant | params | x | M MACs/s | x | train MB | infer MB | ORT ms | EER % [95 %] | x | minDCF "
        "| EER@1s | EER@2s | EER@3s | train acc % |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        p = _plain(rows, r["backbone"]) or r
        lines.append(
            f"| {r['backbone']} | {_label(r)} | {r['params']:,} | {r['params'] / p['params']:.2f} "
            f"| {r['macs_per_second'] / 1e6:.1f} | {r['macs_per_second'] / p['macs_per_second']:.2f} "
            f"| {r['train_peak_mb']:.1f} | {r['infer_peak_mb']:.1f} | {r['ort_ms_3s']:.1f} "
            f"| {r['eer']:.2f} [{r['eer_lo']:.1f}, {r['eer_hi']:.1f}] | {r['eer'] / p['eer']:.2f} | {r['min_dcf']:.3f} "
            f"| {r['eer_1s']:.2f} | {r['eer_2s']:.2f} | {r['eer_3s']:.2f} | {r['train_acc']:.1f} |"
        )
    lines += ["", "## Goals at K=4 (parameters <= 35 %, MACs <= 40 %, EER <= 1.1x of the plain backbone)", ""]
    lines += [
        "The issue judges EER on `trials_dev.txt`; `mean EER x` is the ratio of the mean EER over the three "
        "dev lists, a check that a verdict holds beyond one list.",
        "",
        "| backbone | variant | params x | MACs x | EER x | EER inside plain's interval | met | mean EER x, 3 lists "
        "| holds on 3 lists | trained |",
        "|---|---|---:|---:|---:|---|---|---:|---|---|",
    ]
    for r in rows:
        p = _plain(rows, r["backbone"])
        if r["subsets"] != 4 or p is None:
            continue
        px, mx, ex = r["params"] / p["params"], r["macs_per_second"] / p["macs_per_second"], r["eer"] / p["eer"]
        inside = p["eer_lo"] <= r["eer"] <= p["eer_hi"]
        met = px <= 0.35 and mx <= 0.40 and ex <= 1.1
        mean_x = r["eer_mean_3_lists"] / p["eer_mean_3_lists"]
        trained = min(r["train_acc"], p["train_acc"]) >= BARELY_TRAINED
        lines.append(
            f"| {r['backbone']} | {_label(r)} | {px:.2f} | {mx:.2f} | {ex:.2f} | {'yes' if inside else 'no'} "
            f"| {'yes' if met else 'no'} | {mean_x:.2f} | {'yes' if met and mean_x <= 1.1 else 'no'} "
            f"| {'yes' if trained else 'no: not evidence'} |"
        )
    barely = sorted({r["backbone"] for r in rows if r["train_acc"] < BARELY_TRAINED})
    lines += [
        "",
        "What the budget allows: 600 steps of batch 32 per model (the recipe scaled to a 2-core machine), so "
        "absolute EERs are far from the shipped model's and the speaker-resampled intervals are wide "
        "(trials_dev.txt has few enrolled speakers per family): read a difference as real only where it "
        "leaves the plain backbone's interval. ResNet34 (base width 8) costs 3-10x more per step on CPU "
        "than the other two (2-D convolutions; split narrow blocks make many small ones), so its "
        "variants train last and resume across sessions (`train` picks up each run's last epoch).",
    ]
    if barely:
        lines += [
            "",
            f"`trained`: both the variant and its plain backbone end the schedule above {BARELY_TRAINED:g} % "
            "training accuracy (mean of the last 10 logged batches; `train acc %` above). Below it "
            f"({', '.join(barely)}) the networks have barely left their initialisation at this budget: their "
            "EERs sit near chance on some lists and swing from list to list, so their rows say nothing for or "
            "against the module. Judging them needs a longer schedule than this machine could give them.",
        ]
    lines += ["", "## Every dev list (full length): EER % [95 %, speakers resampled]", ""]
    lines += ["| model | " + " | ".join(LISTS) + " |", "|---|" + "---|" * len(LISTS)]
    for name, d in details.items():
        cells = []
        for lst in LISTS:
            o = d["accuracy"]["lists"][lst]["overall"]
            cells.append(f"{o['eer']:.2f} [{o['eer_lo']:.1f}, {o['eer_hi']:.1f}]")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    for lst in LISTS:
        fams = sorted({f for d in details.values() for f in d["accuracy"]["lists"][lst]["families"]})
        if not fams:
            continue
        lines += ["", f"## Per source family, `{lst}`: EER %", ""]
        lines += ["| model | " + " | ".join(fams) + " |", "|---|" + "---|" * len(fams)]
        for name, d in details.items():
            got = d["accuracy"]["lists"][lst]["families"]
            lines.append(f"| {name} | " + " | ".join(f"{got[f]['eer']:.2f}" if f in got else "-" for f in fams) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.5))
    colours = dict(zip(BACKBONES, ("tab:blue", "tab:orange", "tab:green"), strict=True))
    markers = {1: "o", 2: "s", 4: "D"}
    for r in rows:
        x, y = r["macs_per_second"] / 1e6, r["eer"]
        ax.errorbar(
            x, y, yerr=[[y - r["eer_lo"]], [r["eer_hi"] - y]], color=colours[r["backbone"]],
            marker=markers[r["subsets"]], mfc="white" if r["shared"] is True else colours[r["backbone"]],
            capsize=3, linestyle="none",
        )  # fmt: skip
        ax.annotate(_label(r), (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6)
    for name, c in colours.items():
        ax.plot([], [], color=c, marker="o", linestyle="none", label=name)
    ax.plot([], [], color="grey", marker="o", linestyle="none", label="o plain, s K=2, D K=4")
    ax.plot([], [], color="grey", marker="D", mfc="white", linestyle="none", label="open: shared narrow block")
    ax.set_xscale("log")
    ax.set_xlabel("M MACs per second of audio")
    ax.set_ylabel("EER % on trials_dev.txt (95 % interval, speakers resampled)")
    ax.set_title("Transformation module: error against compute")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out, dpi=130)
    plt.close(fig)


if __name__ == "__main__":
    main()
