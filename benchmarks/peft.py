"""Cost of parameter-efficient tuning against full fine-tuning, at real sizes with random weights.

    python benchmarks/peft.py            # writes benchmarks/results/peft.{csv,md,png}

Rows: XLS-R 300M (wav2vec2 large) with LoRA r=4 on the query and value projections, and AST-base
with every adapter variant, deep prompts, prefix tuning and LoRA, each against full fine-tuning
of the same model with Adam; every model carries the attentive pooling head of a countermeasure.
A training step is forward, binary cross-entropy, backward and an Adam step on the trainable
parameters, for a batch of two 4 s clips (random audio; AST reads its 128-bin fbank).

Each row runs in a fresh subprocess, one at a time, so that one row's memory never counts for the
next: train_peak_mb is the process's peak resident memory over the timed steps (VmHWM, reset
after a warm-up step that allocates the optimizer state) minus its resident memory before the
model was built. It therefore counts weights, gradients, optimizer state and activations, as a
training run on this CPU holds them. step_s is the median of the timed steps on one thread.
Random weights change no cost. The load average is recorded: other work shares the machine.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

# Run as a script, this file's folder comes first on sys.path, and this file would shadow the peft
# package that lightsv's LoRA imports.
sys.path = [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

RESULTS = Path(__file__).parent / "results"
# Reduction rates that give every adapter variant about the same budget (~0.27 % of AST-base):
# Houlsby adapts twice as many sublayers as Pfeiffer, and a conformer adapter's GLU doubles its input
# projection, so both get a larger reduction.
REDUCTION = {
    ("bottleneck", "pfeiffer"): 64,
    ("bottleneck", "houlsby"): 128,
    ("conformer", "pfeiffer"): 96,
    ("conformer", "houlsby"): 192,
}
ADAPTERS = [
    (k, p, m) for k in ("bottleneck", "conformer") for p in ("pfeiffer", "houlsby") for m in ("parallel", "sequential")
]
# (model size, method name, tuner records); "full": no tuner, every weight trains
ROWS: list[tuple[str, str, list[dict]]] = [
    ("xlsr_300m", "full", []),
    ("xlsr_300m", "lora_r4_qv", [{"kind": "lora", "options": {"r": 4, "alpha": 8, "targets": ["q", "v"]}}]),
    ("ast_base", "full", []),
    *[
        (
            "ast_base",
            f"adapter_{k}_{p}_{m}",
            [{"kind": "adapter", "options": {"kind": k, "placement": p, "mode": m, "reduction": REDUCTION[k, p]}}],
        )
        for k, p, m in ADAPTERS
    ],
    ("ast_base", "prompt_deep_24", [{"kind": "prompt", "options": {"length": 24}}]),
    ("ast_base", "prefix_24", [{"kind": "prefix", "options": {"length": 24}}]),
    ("ast_base", "lora_r4_qv", [{"kind": "lora", "options": {"r": 4, "alpha": 8, "targets": ["q", "v"]}}]),
]
FIELDS = [
    "model",
    "method",
    "trainable_params",
    "total_params",
    "trainable_pct",
    "tuner_params",
    "tuner_pct",
    "train_peak_mb",
    "step_s",
]


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def measure(size: str, tuners: list[dict], seconds: float, steps: int) -> dict:
    """One row, in this process (run by `main` in a fresh subprocess)."""
    import torch

    import lightsv
    from lightsv.features import FbankConfig, features_for
    from lightsv.peft import tuner_parameters
    from lightsv.tuners import replay

    torch.set_num_threads(1)
    torch.manual_seed(0)
    before = _rss_mb("VmRSS")
    finetune = "tuners" if tuners else "full"
    model: Any = replay(lightsv.build_model("ssl", size=size, finetune=finetune), tuners)
    model.prepare_training()
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-5)
    wav = torch.randn(2, int(seconds * 16000)) * 0.1
    with torch.no_grad():
        feats, _ = features_for(model, FbankConfig(n_mels=128, window="hann", mean_norm=False))(wav)
    labels = torch.tensor([0.0, 1.0])

    def step() -> float:
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(feats)[:, 0], labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    step()  # allocates Adam's state and warms up the kernels
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    times = [step() for _ in range(steps)]
    return {
        "model": size,
        "trainable_params": sum(p.numel() for p in params),
        "total_params": sum(p.numel() for p in model.parameters()),
        "tuner_params": sum(p.numel() for _, p in tuner_parameters(model)),
        "train_peak_mb": round(_rss_mb("VmHWM") - before, 1),
        "step_s": round(statistics.median(times), 3),
    }


def table(rows: list[dict]) -> str:
    head = [*FIELDS, "peak_x_full", "step_x_full"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(
            "| "
            + " | ".join(
                f"{r[k]:,}" if isinstance(r[k], int) else f"{r[k]:.4g}" if isinstance(r[k], float) else str(r[k])
                for k in head
            )
            + " |"
        )
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 0.35 * len(rows) + 1.5), sharey=True)
    labels = [f"{r['model']} {r['method']}" for r in rows]
    for ax, key, title, log in (
        (axes[0], "trainable_params", "trainable parameters", True),
        (axes[1], "train_peak_mb", "train-step peak memory (MB)", False),
        (axes[2], "step_s", "train-step time (s, 1 thread)", False),
    ):
        ax.barh(
            labels, [r[key] for r in rows], color=["tab:red" if r["method"] == "full" else "tab:blue" for r in rows]
        )
        ax.set_title(title)
        if log:
            ax.set_xscale("log")
    axes[0].invert_yaxis()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per row (after one warm-up step)")
    parser.add_argument("--only", help="run the rows of this model size only")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--row", type=int, help=argparse.SUPPRESS)  # internal: measure one row, print JSON
    args = parser.parse_args(argv)
    if args.row is not None:
        size, method, tuners = ROWS[args.row]
        print(json.dumps({**measure(size, tuners, args.seconds, args.steps), "method": method}))
        return 0

    from tqdm import tqdm

    load = os.getloadavg()
    rows = []
    picked = [i for i, (size, _, _) in enumerate(ROWS) if args.only in (None, size)]
    for i in tqdm(picked, desc="rows"):
        cmd = [sys.executable, __file__, "--row", str(i), "--seconds", str(args.seconds), "--steps", str(args.steps)]
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode:
            raise SystemExit(f"row {ROWS[i][:2]} failed:\n{done.stderr[-3000:]}")
        rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    load_end = os.getloadavg()
    for r in rows:
        full = next(f for f in rows if f["model"] == r["model"] and f["method"] == "full")
        r["trainable_pct"] = round(100.0 * r["trainable_params"] / r["total_params"], 4)
        r["tuner_pct"] = round(100.0 * r["tuner_params"] / r["total_params"], 4)
        r["peak_x_full"] = round(r["train_peak_mb"] / full["train_peak_mb"], 3)
        r["step_x_full"] = round(r["step_s"] / full["step_s"], 3)
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "peft.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, [*FIELDS, "peak_x_full", "step_x_full"])
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "peft.png")
    import torch

    header = (
        f"# Parameter-efficient tuning vs full fine-tuning\n\n"
        f"`python benchmarks/peft.py` ({args.seconds:g} s of audio, batch 2, Adam, one thread, median of "
        f"{args.steps} steps after a warm-up; torch {torch.__version__}, {platform.machine()}, load average "
        f"{load[0]:.2f} at the start and {load_end[0]:.2f} at the end: other work was running on this "
        f"shared 2-core machine, so step times carry its noise). Random weights at the real sizes. "
        f"train_peak_mb: peak resident memory over the "
        f"timed steps minus the resident memory before the model was built (weights + gradients + Adam "
        f"state + activations), each row in a fresh process. trainable_params include the attentive head "
        f"(every row has it); tuner_params are the tuner's own.\n\n"
    )
    (args.out / "peft.md").write_text(header + table(rows) + "\n\nPlot: `peft.png`.\n")
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
