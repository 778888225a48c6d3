"""Speech trimming before embedding (lightsv.speech) on the dev lists: EER with and without it.

    python benchmarks/speech_detection.py [--model M]   # writes benchmarks/results/speech_detection.{md,json,png}

Needs the dev data beside the repo (../shared/data/speech). For each trial list the same model
embeds every clip whole (``vad=False``) and trimmed to its speech (``vad=True``, the default), and
the same again with every clip padded by 2 s of faint noise (-60 dBFS) on each side, the case
speech trimming is for. A clip the detector refuses ("no speech found") is counted and, so that
both columns score the same trials, embedded whole instead.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

import lightsv
import lightsv.speech
from lightsv import metrics
from lightsv.audio import SAMPLE_RATE, load
from lightsv.data import read_trials
from lightsv.errors import AudioError

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
LISTS = ["trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt"]
PAD_SECONDS, PAD_DB = 2.0, -60.0


def padded(wav: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = lambda: (10 ** (PAD_DB / 20) * rng.standard_normal(int(PAD_SECONDS * SAMPLE_RATE))).astype(np.float32)  # noqa: E731
    return np.concatenate([noise(), wav, noise()])


def embed(verifier, wavs: dict[str, np.ndarray], fallback) -> tuple[dict, list[str]]:
    out, refused = {}, []
    for name, wav in tqdm(wavs.items(), desc="embed", leave=False, disable=None):
        try:
            out[name] = verifier.embed(wav, sample_rate=SAMPLE_RATE)
        except AudioError:
            refused.append(name)
            out[name] = fallback.embed(wav, sample_rate=SAMPLE_RATE)
    return out, refused


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the shipped model)")
    args = parser.parse_args()
    whole = lightsv.Verifier.load(args.model, vad=False)
    trimmed = lightsv.Verifier.load(args.model, vad=True)
    rows = []
    started = time.time()
    for name in LISTS:
        trials = read_trials(SPEECH / name)
        files = sorted({p for t in trials for p in (t.enroll, t.test)})
        rng = np.random.default_rng(0)
        raw = {f: load(SPEECH / "wav" / f, min_seconds=0.0) for f in files}
        for condition, wavs in (
            ("as recorded", raw),
            ("2 s of faint noise on each side", {f: padded(w, rng) for f, w in raw.items()}),
        ):
            labels = np.array([t.label for t in trials])
            row = {"trials": name, "condition": condition, "n_trials": len(trials), "n_files": len(files)}
            speech_s = [lightsv.speech.speech_seconds(w) for w in wavs.values()]
            row["mean_seconds"] = float(np.mean([len(w) for w in wavs.values()]) / SAMPLE_RATE)
            row["mean_speech_seconds"] = float(np.mean(speech_s))
            for label, verifier in (("whole", whole), ("trimmed", trimmed)):
                emb, refused = embed(verifier, wavs, whole)
                scores = np.array([float(emb[t.enroll] @ emb[t.test]) for t in trials])
                summary = metrics.summary(scores, labels, 0.01, 1000)
                row[f"eer_{label}"] = summary["eer"]
                row[f"eer_ci_{label}"] = summary["eer_ci95"]
                row[f"min_dcf_{label}"] = summary["min_dcf"]
                row[f"refused_{label}"] = refused
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if not k.startswith("refused")}), flush=True)
    write(rows, args, time.time() - started)


def write(rows: list[dict], args, seconds: float) -> None:
    RESULTS.mkdir(exist_ok=True)
    meta = {
        "command": "python benchmarks/speech_detection.py" + (f" --model {args.model}" if args.model else ""),
        "model": args.model or "lightsv/assets/default.pt",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at the end",
        "speech_config": lightsv.speech.SpeechConfig().__dict__,
        "wall_seconds": round(seconds, 1),
    }
    (RESULTS / "speech_detection.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))

    def ci(row, label):
        low_high = row[f"eer_ci_{label}"]
        return f" [{low_high[0]:.1f}, {low_high[1]:.1f}]" if low_high else ""

    lines = [
        "# Speech trimming before embedding: EER on the dev lists",
        "",
        f"Written by `{meta['command']}` on {meta['date']} ({meta['machine']}; {meta['wall_seconds']} s).",
        f"Model: `{meta['model']}`. Detector: `lightsv.speech` with its defaults. EER % with bootstrap 95 % "
        "intervals; minDCF at p_target 0.01. 'whole' embeds each clip as it is (`vad=False`), 'trimmed' "
        f"its speech with {meta['speech_config']['margin_s']:g} s margins, pauses over "
        f"{meta['speech_config']['bridge_gap_s']:g} s shortened (the default; settings in the JSON). Clips the "
        "detector refuses are embedded whole in both columns and counted.",
        "",
        "| trials | clips | mean s (speech s) | EER whole | EER trimmed | minDCF whole | minDCF trimmed | refused |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['trials']}, {r['condition']} | {r['n_files']} "
            f"| {r['mean_seconds']:.2f} ({r['mean_speech_seconds']:.2f}) "
            f"| {r['eer_whole']:.2f}{ci(r, 'whole')} | {r['eer_trimmed']:.2f}{ci(r, 'trimmed')} "
            f"| {r['min_dcf_whole']:.3f} | {r['min_dcf_trimmed']:.3f} | {len(r['refused_trimmed'])} |"
        )
    refused = sorted({f for r in rows for f in r["refused_trimmed"]})
    lines += ["", f"Refused by the detector ('no speech found'): {', '.join(refused) or 'none'}."]
    (RESULTS / "speech_detection.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(9, 4))
    x = np.arange(len(rows))
    ax.bar(x - 0.2, [r["eer_whole"] for r in rows], 0.4, label="whole clip")
    ax.bar(x + 0.2, [r["eer_trimmed"] for r in rows], 0.4, label="trimmed to speech")
    ax.set_xticks(
        x,
        [
            f"{r['trials'].removesuffix('.txt')}\n{'padded' if 'noise' in r['condition'] else 'as recorded'}"
            for r in rows
        ],
        fontsize=8,
    )
    ax.set_ylabel("EER %")
    ax.legend()
    ax.set_title("Speech trimming before embedding")
    fig.tight_layout()
    fig.savefig(RESULTS / "speech_detection.png", dpi=120)


if __name__ == "__main__":
    main()
