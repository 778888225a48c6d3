"""Quiet context around trimmed speech: does the shipped model score better with it, and why?

    python benchmarks/context_padding.py [--model M]   # writes benchmarks/results/context_padding.{md,json}

`speech_detection.md` found that clips padded with faint noise and then trimmed score better than
the clips as recorded. This separates the two things padding changes: the frames the network reads
and the mean the filterbank subtracts (per-utterance mean normalisation). Every clip is trimmed to
its speech as `Verifier.load()` does, then embedded five ways (torch, one thread):

- plain: the trimmed clip, as `verify` embeds it;
- padded: 0.5 s of white noise at -60 dBFS added on each side;
- padded, mean of the speech: the padded clip's frames, minus the mean of the unpadded clip's frames;
- unpadded, mean of the padded clip: the unpadded clip's frames, minus the padded clip's mean;
- padded with room tone: 0.5 s of the recording's own background on each side
  (`lightsv.speech.room_tone`: its quietest 50 ms, tiled), which needs no chosen noise level.

EER change against plain in points with a paired bootstrap 95 % interval (the same trials scored
both ways). A measurement, not a setting: `verify` does not pad.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

import lightsv
from lightsv import metrics
from lightsv.audio import SAMPLE_RATE, load
from lightsv.data import read_trials
from lightsv.errors import AudioError
from lightsv.features import Fbank
from lightsv.speech import room_tone, trim
from lightsv.verifier import repeat_short

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO.parent / "shared" / "data" / "speech"
RESULTS = Path(__file__).parent / "results"
LISTS = ["trials_dev.txt", "trials_dev_ocean.txt", "trials_dev_words.txt"]
PAD_SECONDS, PAD_DB = 0.5, -60.0
WAYS = [
    "plain",
    "padded",
    "padded, mean of the speech",
    "unpadded, mean of the padded clip",
    "padded with room tone",
]


def embeddings(wav: np.ndarray, model, fbank: Fbank, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The clip's unit embedding each of the five ways."""
    n = int(PAD_SECONDS * SAMPLE_RATE)
    noise = lambda: (10 ** (PAD_DB / 20) * rng.standard_normal(n)).astype(np.float32)  # noqa: E731
    padded = np.concatenate([noise(), wav, noise()])
    tone = room_tone(wav, PAD_SECONDS)
    room = np.concatenate([tone, wav, tone[::-1]])
    with torch.inference_mode():
        room_feats = fbank(torch.from_numpy(room)[None])[0][0]
        plain_feats = fbank(torch.from_numpy(wav)[None])[0][0]  # [T, F], not mean-normalised
        pad_feats = fbank(torch.from_numpy(padded)[None])[0][0]
        extra = (pad_feats.shape[0] - plain_feats.shape[0]) // 2
        speech = pad_feats[extra : pad_feats.shape[0] - extra]
        feats = {
            "plain": plain_feats - plain_feats.mean(0),
            "padded": pad_feats - pad_feats.mean(0),
            "padded, mean of the speech": pad_feats - speech.mean(0),
            "unpadded, mean of the padded clip": plain_feats - pad_feats.mean(0),
            "padded with room tone": room_feats - room_feats.mean(0),
        }
        out = {}
        for way, f in feats.items():
            e = model(f[None], None).float()[0]
            out[way] = (e / e.norm()).numpy()
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="checkpoint (default: the shipped model)")
    parser.add_argument("--speech", type=Path, default=SPEECH)
    parser.add_argument("--bootstrap", type=int, default=1000)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    verifier = lightsv.Verifier.load(args.model, backend="torch", vad=False, threads=1)
    model, fbank = verifier.backend.model, verifier.backend.fbank
    if not fbank.config.mean_norm:
        parser.error("the model's filterbank does not mean-normalise: nothing to separate")
    raw_fbank = Fbank(dataclasses.replace(fbank.config, mean_norm=False))
    rng = np.random.default_rng(0)
    rows, lines = [], []
    for name in LISTS:
        trials = read_trials(args.speech / name)
        files = sorted({p for t in trials for p in (t.enroll, t.test)})
        emb = {}
        for f in tqdm(files, desc=name, leave=False):
            wav = load(args.speech / "wav" / f)
            try:
                wav = trim(wav, min_seconds=verifier.min_seconds, name=f)
            except AudioError:
                pass  # embedded whole, as in speech_detection.py
            (wav,) = repeat_short([wav])  # as verify embeds a short clip
            emb[f] = embeddings(wav.astype(np.float32), model, raw_fbank, rng)
        labels = np.array([t.label for t in trials])
        scores = {w: np.array([emb[t.enroll][w] @ emb[t.test][w] for t in trials]) for w in WAYS}
        row = {"list": name, "trials": len(trials), "eer": {w: metrics.eer(scores[w], labels) for w in WAYS}}
        row["change"] = {
            w: metrics.eer_change_ci(scores["plain"], scores[w], labels, n_boot=args.bootstrap) for w in WAYS[1:]
        }
        rows.append(row)
        cells = [f"{row['eer']['plain']:.2f}"]
        for w in WAYS[1:]:
            change, low, high = row["change"][w]
            cells.append(f"{row['eer'][w]:.2f} ({change:+.2f} [{low:+.1f}, {high:+.1f}])")
        lines.append(f"| {name} | {len(trials)} | " + " | ".join(cells) + " |")
    head = [
        "# Quiet context around trimmed speech",
        "",
        f"Written by `python benchmarks/context_padding.py{' --model ' + args.model if args.model else ''}` "
        f"(model {verifier.model_id}, torch, 1 thread). Clips trimmed to their speech as `Verifier.load()` does; "
        f"padding: {PAD_SECONDS:g} s of white noise at {PAD_DB:g} dBFS on each side (room tone: of the clip's "
        "own quietest 50 ms, tiled); 'mean': the vector the "
        "per-utterance mean normalisation subtracts. EER %, and in brackets the change against plain in points "
        "with its paired bootstrap 95 % interval.",
        "",
        "| list | trials | " + " | ".join(WAYS) + " |",
        "|---|---|" + "---|" * len(WAYS),
    ]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "context_padding.md").write_text("\n".join(head + lines) + "\n")
    (RESULTS / "context_padding.json").write_text(json.dumps(rows, indent=1))
    print("\n".join(head + lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
