"""Spoof-checked verification, measured in one run: what the countermeasure adds to a verification's
latency, compute and memory, beside the speaker model alone and the field's two-model pipelines.

    python benchmarks/spoof_check.py   # writes benchmarks/results/spoof_check.{json,md,png}

Each row turns the same 3 s waveform (in memory, batch 1, 1 thread) into what its system decides
with; median ms of --repeats rounds, every system timed round-robin in the same rounds. lightsv rows
are the product's calls on each backend (vad=False, so that only the models differ):
`Verifier.verify` alone; with `spoof_check=True` and the shipped countermeasure (side networks on
the speaker trunk, which runs once for both scores); the same with its first side network alone (what
the other members cost); and the two models each reading the clip (`verify`, then the countermeasure's
own pass: what sharing the trunk saves). Peers, in torch: resemblyzer (pretrained) and speechbrain's
ECAPA-TDNN c1024 (the SASV 2022 baseline's speaker model) as speaker models; the countermeasure
backbones of the parameter-efficient papers, XLS-R 300M (Wang et al. 2023 put LoRA on it) and AST-base
(Cappellazzo et al. 2023), with random weights (merged LoRA or adapters change neither size nor
speed much); and the two-model pipeline ECAPA-TDNN c1024 + XLS-R 300M. MACs by torch's FlopCounterMode.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent))
from edge import interleaved_ms, rss_and_time  # noqa: E402

import lightsv  # noqa: E402
from lightsv.audio import load  # noqa: E402
from lightsv.checkpoint import save_model  # noqa: E402
from lightsv.profile import EXTRA_FLOP_FORMULAS  # noqa: E402
from lightsv.spoof import Countermeasure  # noqa: E402
from lightsv.spoof.countermeasure import DEFAULT_CM, DEFAULT_CM_ONNX  # noqa: E402
from lightsv.verifier import DEFAULT_MODEL, EXAMPLES, Verifier, example_clips  # noqa: E402

RESULTS = Path(__file__).parent / "results"
SECONDS = 3.0
SPEAKER = "ls19"


def macs_of(fn) -> int:
    """Multiply-adds of one call (flops / 2), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        fn()
    return counter.get_total_flops() // 2


def params_of(*modules: torch.nn.Module) -> int:
    return sum(p.numel() for m in modules for p in m.parameters())


def first_member(tmp: Path) -> tuple[Path, Path]:
    """The shipped countermeasure with its first side network only, saved and exported like it."""
    from lightsv.edge.export import export_checkpoint

    model, extra = lightsv.load_model(DEFAULT_CM, return_extra=True)
    config = dataclasses.replace(model.config, members=1)
    one = lightsv.build_model("spoof_side", **dataclasses.asdict(config))
    one.trunk.load_state_dict(model.trunk.state_dict())
    one.side.load_state_dict(model.side.members[0].state_dict())
    keep = {k: v for k, v in extra.items() if k in ("features", "calibration", "training_config")}
    pt = save_model(one.eval(), tmp / "cm1.pt", **keep)
    return pt, export_checkpoint(pt, tmp / "cm1.onnx")


def lightsv_rows(tmp: Path, clip: np.ndarray, cm1: tuple[Path, Path]) -> tuple[list[tuple], dict]:
    """(system, backend, fn, params, macs) for the product's calls on each backend, and checks that the
    spoof-checked calls made one trunk pass."""
    speaker_model = lightsv.load_model(DEFAULT_MODEL)
    feats_fn = Verifier.load(backend="torch", threads=1, vad=False).backend.fbank
    feats, frames = feats_fn(torch.from_numpy(clip)[None])
    cm_torch = {"shipped": Countermeasure.load(DEFAULT_CM, backend="torch", threads=1)}
    cm_torch["first"] = Countermeasure.load(cm1[0], backend="torch", threads=1)
    members = cm_torch["shipped"].model.config.members
    speaker_macs = macs_of(lambda: speaker_model(feats, frames))
    cm_macs = {k: macs_of(lambda cm=cm: cm.model(feats, frames)) for k, cm in cm_torch.items()}
    cm_params = {k: params_of(cm.model) for k, cm in cm_torch.items()}
    sp_params = params_of(speaker_model)
    rows: list[tuple] = []
    checks = {}
    clips = example_clips()[SPEAKER]
    for backend, cm_paths in (("torch", (DEFAULT_CM, cm1[0])), ("onnx", (DEFAULT_CM_ONNX, cm1[1]))):
        v = Verifier.load(backend=backend, threads=1, vad=False, db=tmp / f"{backend}.db")
        v.enroll(SPEAKER, clips[:2])
        cms = {n: Countermeasure.load(p, backend=backend, threads=1) for n, p in zip(cm_torch, cm_paths, strict=True)}
        for n, cm in cms.items():
            checks[f"{backend}, {n} CM: one trunk pass"] = v.verify(
                SPEAKER, clip, sample_rate=16000, spoof_check=True, countermeasure=cm
            ).shared_pass
        rows.append(
            (
                "lightsv verify (speaker only)",
                backend,
                lambda v=v: v.verify(SPEAKER, clip, sample_rate=16000),
                sp_params,
                speaker_macs,
            )
        )
        labels = {"shipped": f"shipped CM, {members} side networks", "first": "its first side network alone"}
        for n, label in labels.items():
            rows.append(
                (
                    f"lightsv verify --spoof-check ({label}; shared trunk)",
                    backend,
                    lambda v=v, cm=cms[n]: v.verify(
                        SPEAKER, clip, sample_rate=16000, spoof_check=True, countermeasure=cm
                    ),
                    cm_params[n],  # the trunk is the speaker model's
                    cm_macs[n],
                )
            )
        rows.append(
            (
                "lightsv verify, then the shipped CM reading the clip again (no sharing)",
                backend,
                lambda v=v, cm=cms["shipped"]: (v.verify(SPEAKER, clip, sample_rate=16000), cm.score_wav(clip)),
                cm_params["shipped"],
                speaker_macs + cm_macs["shipped"],
            )
        )
    return rows, checks


def peer_rows(clip: np.ndarray) -> list[tuple]:
    rows: list[tuple] = []
    wav = torch.from_numpy(clip)[None]
    try:
        from resemblyzer import VoiceEncoder

        encoder = VoiceEncoder("cpu", verbose=False)
        rows.append(
            (
                "resemblyzer (pretrained; speaker only)",
                "torch",
                lambda: encoder.embed_utterance(clip),
                params_of(encoder),
                macs_of(lambda: encoder.embed_utterance(clip)),
            )
        )
    except ImportError:
        print("resemblyzer not installed (python -m lightsv.extras teacher): no row", file=sys.stderr)
    ecapa = None
    try:
        import torchaudio.compliance.kaldi as kaldi
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        torch.manual_seed(0)
        ecapa = ECAPA_TDNN(input_size=80, lin_neurons=192, channels=[1024, 1024, 1024, 1024, 3072]).eval()

        def run_ecapa():
            with torch.no_grad():
                feats = kaldi.fbank(wav * 32768, num_mel_bins=80)[None]
                return ecapa(feats - feats.mean(1, keepdim=True))

        ecapa_macs = macs_of(run_ecapa)
        rows.append(
            ("speechbrain ECAPA-TDNN c1024 (random weights; speaker only)", "torch", run_ecapa, params_of(ecapa))
            + (ecapa_macs,)
        )
    except ImportError:
        print("speechbrain not installed (python -m lightsv.extras speechbrain): no row", file=sys.stderr)
    torch.manual_seed(0)
    xlsr = lightsv.build_model("ssl", size="xlsr_300m").eval()
    lengths = torch.tensor([len(clip)])

    def run_xlsr():
        with torch.no_grad():
            return xlsr(wav[..., None], lengths)

    xlsr_macs = macs_of(run_xlsr)
    rows.append(("XLS-R 300M CM (random weights; CM only)", "torch", run_xlsr, params_of(xlsr), xlsr_macs))
    from lightsv.features import Fbank, FbankConfig

    ast = lightsv.build_model("ssl", size="ast_base").eval()
    ast_fbank = Fbank(FbankConfig(n_mels=128, window="hann", mean_norm=False))

    def run_ast():
        with torch.no_grad():
            feats, frames = ast_fbank(wav)
            return ast(feats, frames)

    rows.append(("AST-base CM (random weights; CM only)", "torch", run_ast, params_of(ast), macs_of(run_ast)))
    if ecapa is not None:
        rows.append(
            (
                "ECAPA-TDNN c1024 + XLS-R 300M CM (two models)",
                "torch",
                lambda: (run_ecapa(), run_xlsr()),
                params_of(ecapa, xlsr),
                ecapa_macs + xlsr_macs,
            )
        )
    return rows


def cold_start(tmp: Path) -> list[dict]:
    """Peak RSS and wall time of `lightsv verify` with and without --spoof-check, as fresh processes."""
    cli = [sys.executable, "-m", "lightsv"]
    clips = example_clips()[SPEAKER]
    rows = []
    for backend in ("torch", "onnx"):
        db = tmp / f"cold_{backend}.db"
        common = ["--db", str(db), "--backend", backend]
        subprocess.run([*cli, "enroll", *common, SPEAKER, *map(str, clips[:2])], check=True, capture_output=True)
        for flag in ([], ["--spoof-check"]):
            runs = [rss_and_time([*cli, "verify", *common, *flag, SPEAKER, str(clips[2])]) for _ in range(3)]
            rows.append(
                {
                    "command": " ".join(["lightsv verify", f"--backend {backend}", *flag]),
                    "peak_rss_mb": max(r[0] for r in runs),
                    "process_start_to_decision_s": statistics.median(r[1] for r in runs),
                }
            )
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    clip = np.resize(load(EXAMPLES / "ls19" / "19-198-0001.flac"), int(SECONDS * 16000)).astype(np.float32)
    steps = tqdm(total=4, desc="spoof-check benchmark", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        ours, checks = lightsv_rows(tmp, clip, first_member(tmp))
        if not all(checks.values()):  # the rows would time two passes where they claim one
            raise SystemExit(f"a spoof-checked call did not share the trunk: {checks}")
        steps.update()
        systems = ours + peer_rows(clip)
        steps.update()
        times = interleaved_ms([s[2] for s in systems], args.repeats)
        steps.update()
        cold = cold_start(tmp)
        steps.update()
    steps.close()
    rows = [
        {"system": name, "backend": backend, "params": params, "macs": macs, "latency_ms": ms}
        for (name, backend, _, params, macs), ms in zip(systems, times, strict=True)
    ]
    meta = {
        "command": "python benchmarks/spoof_check.py",
        "load_average_at_start": load_start,
        "cpu_count": os.cpu_count(),
        "clip_seconds": SECONDS,
        "repeats": args.repeats,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "shared_pass_checks": checks,
        "note": "absolute timings move with what else runs on the machine, ratios within this run are what count",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    results = {"meta": meta, "latency": rows, "cold_start": cold}
    (args.out / "spoof_check.json").write_text(json.dumps(results, indent=2))
    text = markdown(rows, cold, meta)
    (args.out / "spoof_check.md").write_text(text)
    plot(rows, args.out / "spoof_check.png")
    print(text)
    return 0


def markdown(rows: list[dict], cold: list[dict], meta: dict) -> str:
    alone = {r["backend"]: r["latency_ms"] for r in rows if r["system"] == "lightsv verify (speaker only)"}
    checked = {
        r["backend"]: r["latency_ms"] for r in rows if r["system"].startswith("lightsv verify --spoof-check (shipped")
    }
    lines = [
        f"Written by `{meta['command']}` (load average {meta['load_average_at_start']:.1f} at start, "
        f"{meta['cpu_count']} CPUs; {meta['note']}).",
        f"One {meta['clip_seconds']:g} s waveform to what each system decides with, batch 1, 1 thread, median ms of "
        f"{meta['repeats']} rounds (all systems timed round-robin in the same rounds). Params: those the row runs "
        "(a shared-trunk CM counts its trunk, which is the speaker model's); MACs per clip by FlopCounterMode, "
        "lightsv's without the filterbank. Each shared-trunk row was checked to make both scores in one trunk pass "
        "(`SpoofAwareVerification.shared_pass`).",
        "",
        "| system | backend | params | M MACs | latency ms | x lightsv speaker only (same backend) "
        "| x lightsv spoof-checked (same backend) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        b = r["backend"]
        lines.append(
            f"| {r['system']} | {b} | {r['params']:,} | {r['macs'] / 1e6:,.1f} | {r['latency_ms']:.2f} | "
            f"{r['latency_ms'] / alone[b]:.2f} | {r['latency_ms'] / checked[b]:.2f} |"
        )
    lines += [
        "",
        "As fresh processes (enrolled beforehand; median of 3 runs, peak RSS the largest):",
        "",
        "| command | peak RSS MB | process start to decision s |",
        "|---|---|---|",
    ]
    lines += [f"| {c['command']} | {c['peak_rss_mb']:.0f} | {c['process_start_to_decision_s']:.2f} |" for c in cold]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [f"{r['system']} [{r['backend']}]" for r in rows][::-1]
    fig, ax = plt.subplots(figsize=(10, 0.35 * len(rows) + 1))
    ax.barh(names, [r["latency_ms"] for r in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel(f"ms per {SECONDS:g} s clip, 1 thread (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
