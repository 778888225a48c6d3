"""Edge deployment, measured in one run: waveform -> embedding latency on one thread, file sizes, cold
start, peak memory of `lightsv verify`, int8 accuracy, throughput under load.

    python benchmarks/edge.py   # writes benchmarks/results/edge.{csv,md,png}

Systems, each timed on the same 3 s clip, batch 1, 1 thread (median of --repeats runs after warm-up):
the shipped default model in torch (Verifier, torch backend), in onnxruntime (the shipped
default.onnx and default.int8.onnx, and an export with the FFT front-end), through sherpa-onnx
(`lightsv export --format sherpa-onnx`, the extractor computing its own features); untrained
backbones with and without the transformation module in onnxruntime; resemblyzer (pretrained,
`python -m lightsv.extras teacher`); speechbrain's ECAPA-TDNN with 1024 channels (random weights,
`python -m lightsv.extras speechbrain`). The MAC limit is the model's multiply-adds at the
single-core sgemm rate this script measures. EER of fp32 and int8 on trials_dev.txt when the
corpus is beside the repo.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import lightsv
from lightsv.audio import load
from lightsv.edge.export import ExportConfig, WaveformEmbedder, export, export_checkpoint
from lightsv.runtime import DEFAULT_ONNX, DEFAULT_ONNX_INT8, OnnxModel
from lightsv.verifier import DEFAULT_MODEL, EXAMPLES, Verifier

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
SECONDS = 3.0
BACKBONES = ["ecapa_tdnn_small", "resnet18", "amcrn_small"]


def median_ms(fn, repeats: int, warmup: int = 3) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def interleaved_times(fns: list, repeats: int, warmup: int = 3) -> list[np.ndarray]:
    """Seconds per call of each function, one per round, timed round-robin (one call of each per
    round), so that the load of a shared machine, which drifts over minutes, weighs on every system
    alike; round i of one function is comparable with round i of another."""
    for _ in range(warmup):
        for fn in fns:
            fn()
    times: list[list[float]] = [[] for _ in fns]
    for _ in tqdm(range(repeats), desc="timing", file=sys.stderr, leave=False):
        for fn, out in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            out.append(time.perf_counter() - start)
    return [np.array(t) for t in times]


def interleaved_ms(fns: list, repeats: int, warmup: int = 3) -> list[float]:
    """Median ms of each function, timed round-robin (interleaved_times)."""
    return [1000 * statistics.median(t.tolist()) for t in interleaved_times(fns, repeats, warmup)]


def sgemm_macs_per_second() -> float:
    """Single-core float32 matmul rate (MACs/s) of torch's BLAS on a 256 x 256 x 256 product."""
    torch.set_num_threads(1)
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    ms = median_ms(lambda: torch.mm(a, b), 200, warmup=20)
    return 256**3 / (ms / 1000)


def waveform_macs(model: torch.nn.Module, wav: np.ndarray) -> tuple[int, int]:
    """(front-end MACs, model MACs) of one clip, counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    from lightsv.profile import EXTRA_FLOP_FORMULAS

    graph = WaveformEmbedder(model).eval()
    x, n = torch.from_numpy(wav)[None], torch.tensor([len(wav)])
    counter = FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS)
    with torch.no_grad(), counter:
        graph(x, n)
    counts = counter.get_flop_counts()
    front = sum(sum(c.values()) for name, c in counts.items() if name.endswith(".fbank"))
    return front // 2, (counter.get_total_flops() - front) // 2


def onnx_nodes(path: Path) -> int:
    """Operators in an ONNX file, not counting the Casts that widen its float16-stored weights
    (onnxruntime folds those when it loads the file)."""
    import onnx

    graph = onnx.load(path).graph
    weights = {i.name for i in graph.initializer}
    return sum(not (n.op_type == "Cast" and n.input[0] in weights) for n in graph.node)


def ort_session(path: Path):
    return OnnxModel(path, threads=1)


def rss_and_time(cmd: list[str]) -> tuple[float, float]:
    """Peak RSS (MB) and wall seconds of a command, measured by GNU time.

    Not by os.wait4 on our own child: Linux carries the parent's RSS high-water mark across fork and
    exec, so a child of this (1 GB) process would report at least that much.
    """
    start = time.perf_counter()
    proc = subprocess.run(["/usr/bin/time", "-f", "%M", *cmd], capture_output=True, text=True)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-300:]}")
    return int(proc.stderr.strip().splitlines()[-1]) / 1024, wall


def cold_start(tmp: Path) -> list[dict]:
    """Peak RSS and wall time of `lightsv verify` (process start to decision) on each backend."""
    lightsv_bin = [sys.executable, "-m", "lightsv"]
    clips = lightsv.verifier.example_clips()["ls19"]
    db = tmp / "cold.db"
    rows = []
    for backend, model in (("torch", DEFAULT_MODEL), ("onnx", DEFAULT_ONNX), ("onnx", DEFAULT_ONNX_INT8)):
        db.unlink(missing_ok=True)
        common = ["--db", str(db), "--model", str(model), "--backend", backend]
        subprocess.run([*lightsv_bin, "enroll", *common, "ls19", *map(str, clips[:2])], check=True, capture_output=True)
        runs = [rss_and_time([*lightsv_bin, "verify", *common, "ls19", str(clips[2])]) for _ in range(3)]
        rows.append(
            {
                "system": f"lightsv verify --backend {backend} ({model.name})",
                "peak_rss_mb": max(r[0] for r in runs),
                "cold_start_s": statistics.median(r[1] for r in runs),
            }
        )
    return rows


def eer_on_dev(path: Path) -> float | None:
    """EER (%) of an ONNX model on trials_dev.txt, or None without the corpus."""
    from lightsv import metrics
    from lightsv.data import read_trials

    trials_path = SPEECH / "trials_dev.txt"
    if not trials_path.is_file():
        return None
    trials = read_trials(trials_path)
    files = sorted({p for t in trials for p in (t.enroll, t.test)})
    v = Verifier.load(path, vad=False)  # results predate the VAD; whole clips
    emb = dict(zip(files, v.embed_many([SPEECH / "wav" / f for f in files], progress=False), strict=True))
    scores = np.array([float(emb[t.enroll] @ emb[t.test]) for t in trials])
    return metrics.eer(scores, np.array([t.label for t in trials]))


def throughput(paths: list[Path], busy: bool) -> list[dict]:
    """Clips per second of Verifier.embed_many on each backend and thread count, optionally while
    another process keeps one core busy (the situation of a shared machine)."""
    rows = []
    hog = subprocess.Popen([sys.executable, "-c", "while True: pass"], stdout=subprocess.DEVNULL) if busy else None
    try:
        for backend, model in (("torch", None), ("onnx", None)):
            for threads in (1, 2):
                v = Verifier.load(model, backend=backend, threads=threads, vad=False)
                v.embed_many(paths[:4], progress=False)
                seconds = []
                for _ in range(2):  # the faster of two passes: the first may still read files from disk
                    start = time.perf_counter()
                    v.embed_many(paths, progress=False)
                    seconds.append(time.perf_counter() - start)
                rate = len(paths) / min(seconds)
                rows.append({"backend": backend, "threads": threads, "competing_process": busy, "clips_per_s": rate})
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--no-eer", action="store_true", help="skip the int8 EER on trials_dev.txt")
    parser.add_argument("--backbones", nargs="*", default=BACKBONES, help="untrained backbones to time in ORT")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    load_start = os.getloadavg()[0]
    clip = np.resize(load(EXAMPLES / "ls19" / "19-198-0001.flac"), int(SECONDS * 16000)).astype(np.float32)
    sgemm = sgemm_macs_per_second()
    rows: list[dict] = []
    model, extra = lightsv.load_model(DEFAULT_MODEL, return_extra=True)
    front_macs, model_macs = waveform_macs(model, clip)

    timed: list = []  # (row, fn): timed together at the end, round-robin, so load changes hit all alike

    def add(system: str, fn, size: int | None = None, macs: int | None = None, onnx: Path | None = None) -> None:
        row: dict = {"system": system, "size_bytes": size}
        if onnx is not None:
            row["onnx_nodes"] = onnx_nodes(onnx)
        if macs:
            row["macs_per_clip"] = macs
            row["mac_limit_ms"] = 1000 * macs / sgemm
        timed.append((row, fn))

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        steps = tqdm(total=9, desc="edge benchmark", file=sys.stderr)
        v = Verifier.load(backend="torch", threads=1, vad=False)
        add(
            "default model, torch",
            lambda: v.embed(clip, sample_rate=16000),
            DEFAULT_MODEL.stat().st_size,
            front_macs + model_macs,
        )
        steps.update()
        for name, path in (("ORT fp32", DEFAULT_ONNX), ("ORT int8", DEFAULT_ONNX_INT8)):
            m = ort_session(path)
            add(
                f"default model, {name}",
                lambda m=m: m.embed([clip]),
                path.stat().st_size,
                front_macs + model_macs,
                path,
            )
        steps.update()
        fft = export_checkpoint(None, tmp / "fft.onnx", config=ExportConfig(frontend="fft"))
        fft_model = ort_session(fft)
        add(
            "default model, ORT fp32, FFT front-end",
            lambda: fft_model.embed([clip]),
            fft.stat().st_size,
            model_macs,
            fft,
        )
        steps.update()
        for system, fn, size in sherpa_row(tmp, clip):
            add(system, fn, size, front_macs + model_macs)
        steps.update()
        for name in args.backbones:
            for subsets in (None, 4):
                torch.manual_seed(0)
                net = lightsv.build_model(name)
                if subsets:
                    lightsv.transform.apply(net, subsets=subsets)
                path = export(net.eval(), tmp / f"{name}.onnx")
                m = ort_session(path)
                f, mm = waveform_macs(net, clip)
                add(
                    f"{name}{' K=4' if subsets else ''} (untrained), ORT fp32",
                    lambda m=m: m.embed([clip]),
                    path.stat().st_size,
                    f + mm,
                    path,
                )
        steps.update()
        for system, fn in peer_rows(clip):
            add(system, fn)
        for row, ms in zip((r for r, _ in timed), interleaved_ms([fn for _, fn in timed], args.repeats), strict=True):
            row.update(latency_ms=ms, rtf=ms / 1000 / SECONDS)
            if "mac_limit_ms" in row:
                row["x_mac_limit"] = ms / row["mac_limit_ms"]
            rows.append(row)
        steps.update()
        cold = cold_start(tmp)
        steps.update()
        dev_paths = sorted((SPEECH / "wav").rglob("*.flac"))[:60] if SPEECH.is_dir() else []
        dev_paths = dev_paths or [c for cs in lightsv.verifier.example_clips().values() for c in cs]
        load_rows = throughput(dev_paths, busy=False) + throughput(dev_paths, busy=True)
        steps.update()
        eer = {}
        if not args.no_eer:
            eer = {"fp32": eer_on_dev(DEFAULT_ONNX), "int8": eer_on_dev(DEFAULT_ONNX_INT8)}
        steps.update()
        steps.close()

    meta = {
        "command": "python benchmarks/edge.py",
        "load_average_at_start": load_start,
        "cpu_count": os.cpu_count(),
        "sgemm_gmacs_per_s": sgemm / 1e9,
        "clip_seconds": SECONDS,
        "default_front_end_macs": front_macs,
        "default_model_macs": model_macs,
        "torch": torch.__version__,
        "onnxruntime": __import__("onnxruntime").__version__,
        "eer_dev": eer,
        # the load average says whether other work shared the machine; the rounds interleave systems
        "note": "absolute timings move with what else runs on the machine, ratios within this run are what count",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "edge.csv", "w", newline="") as f:
        keys = sorted({k for r in rows for k in r}, key=lambda k: (k != "system", k))
        writer = csv.DictWriter(f, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    (args.out / "edge.json").write_text(
        json.dumps({"meta": meta, "latency": rows, "cold_start": cold, "throughput": load_rows}, indent=2)
    )
    text = markdown(rows, cold, load_rows, meta)
    (args.out / "edge.md").write_text(text)
    plot(rows, args.out / "edge.png")
    print(text)
    return 0


def sherpa_row(tmp: Path, clip: np.ndarray) -> list[tuple]:
    try:
        import sherpa_onnx
    except ImportError:
        print("sherpa-onnx not installed: no sherpa-onnx row", file=sys.stderr)
        return []
    path = export_checkpoint(None, tmp / "sherpa.onnx", config=ExportConfig(format="sherpa-onnx"))
    extractor = sherpa_onnx.SpeakerEmbeddingExtractor(
        sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(path), num_threads=1)
    )

    def run():
        stream = extractor.create_stream()
        stream.accept_waveform(16000, clip)
        stream.input_finished()
        return extractor.compute(stream)

    return [("default model, sherpa-onnx (its own fbank)", run, path.stat().st_size)]


def peer_rows(clip: np.ndarray) -> list[tuple]:
    rows: list[tuple] = []
    try:
        from resemblyzer import VoiceEncoder

        encoder = VoiceEncoder("cpu", verbose=False)
        rows.append(("resemblyzer (pretrained), torch", lambda: encoder.embed_utterance(clip)))
    except ImportError:
        print("resemblyzer not installed (python -m lightsv.extras teacher): no row", file=sys.stderr)
    try:
        import torchaudio.compliance.kaldi as kaldi
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN

        net = ECAPA_TDNN(input_size=80, lin_neurons=192, channels=[1024, 1024, 1024, 1024, 3072]).eval()
        wav = torch.from_numpy(clip)[None]

        def run():
            with torch.no_grad():
                feats = kaldi.fbank(wav * 32768, num_mel_bins=80)[None]
                return net(feats - feats.mean(1, keepdim=True))

        rows.append(("speechbrain ECAPA-TDNN c1024 (random weights), torch", run))
    except ImportError:
        print("speechbrain not installed (python -m lightsv.extras speechbrain): no row", file=sys.stderr)
    return rows


def markdown(rows: list[dict], cold: list[dict], load_rows: list[dict], meta: dict) -> str:
    by = {r["system"]: r for r in rows}
    ort = by["default model, ORT fp32"]["latency_ms"]
    lines = [
        f"Written by `{meta['command']}` (load average {meta['load_average_at_start']:.1f} at start, "
        f"{meta['cpu_count']} CPUs; {meta['note']}).",
        f"Waveform -> embedding, one {meta['clip_seconds']:g} s clip, batch 1, 1 thread, median ms "
        "(all systems timed round-robin in the same rounds). "
        f"MAC limit: multiply-adds at the single-core sgemm rate measured here "
        f"({meta['sgemm_gmacs_per_s']:.1f} G MACs/s); default model: "
        f"{meta['default_front_end_macs'] / 1e6:.1f} M MACs front-end + "
        f"{meta['default_model_macs'] / 1e6:.1f} M model. ONNX nodes: operators in the file, not counting "
        "the Casts of its float16-stored weights (folded when onnxruntime loads it).",
        "",
        "| system | latency ms | RTF | file bytes | ONNX nodes | x MAC limit | x slower than default ORT fp32 |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        size = f"{r['size_bytes']:,}" if r.get("size_bytes") else "-"
        nodes = str(r["onnx_nodes"]) if r.get("onnx_nodes") else "-"
        limit = f"{r['x_mac_limit']:.1f}" if r.get("x_mac_limit") else "-"
        lines.append(
            f"| {r['system']} | {r['latency_ms']:.2f} | {r['rtf']:.4f} | {size} | {nodes} | {limit} | "
            f"{r['latency_ms'] / ort:.2f} |"
        )
    lines += [
        "",
        "`lightsv verify` as a fresh process (median of 3 runs; peak RSS the largest):",
        "",
        "| command | peak RSS MB | process start to decision s |",
        "|---|---|---|",
    ]
    lines += [f"| {c['system']} | {c['peak_rss_mb']:.0f} | {c['cold_start_s']:.2f} |" for c in cold]
    lines += [
        "",
        "Throughput of `Verifier.embed_many` (the work of `lightsv score`), clips per second:",
        "",
        "| backend | threads | another process busy | clips/s |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {r['backend']} | {r['threads']} | {'yes' if r['competing_process'] else 'no'} | {r['clips_per_s']:.1f} |"
        for r in load_rows
    ]
    eer = meta["eer_dev"]
    if eer and eer.get("fp32") is not None:
        lines += [
            "",
            f"EER on trials_dev.txt: ORT fp32 {eer['fp32']:.2f} %, ORT int8 {eer['int8']:.2f} % "
            f"(difference {eer['int8'] - eer['fp32']:+.2f} points).",
        ]
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 0.35 * len(rows) + 1))
    names = [r["system"] for r in rows][::-1]
    ax.barh(names, [r["latency_ms"] for r in rows][::-1])
    ax.set_xscale("log")
    ax.set_xlabel("ms per 3 s clip, 1 thread (log scale)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
