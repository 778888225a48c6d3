"""An AS-norm cohort for a model: its training speakers' mean embeddings, with thresholds for AS-norm scores.

    python local/make_cohort.py --model CKPT --trials TRIALS --out cohort.npz [--clips-per-speaker 4]

Each training speaker (splits.csv) contributes the mean of up to ``--clips-per-speaker`` of its clips
(drawn with a fixed seed), so speakers with many clips do not dominate the cohort. The thresholds are
calibrated, like stage 5's, on ``--trials`` scored with AS-norm against this cohort; the file records
the model id, so it is refused by any other model (lightsv.cohort).
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path

import numpy as np

from lightsv import cohort, metrics
from lightsv.calibrate import calibration
from lightsv.data import AUDIO_EXTENSIONS, read_trials
from lightsv.verifier import TOP_N, Verifier

SPEECH = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "speech"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint or .onnx (default: the shipped model)")
    ap.add_argument("--speech", type=Path, default=SPEECH, help="corpus folder with wav/ and splits.csv")
    ap.add_argument("--trials", type=Path, required=True, help="trial list (VoxCeleb1 format) to calibrate on")
    ap.add_argument("--wav-root", type=Path, help="folder the trial paths are relative to (default: SPEECH/wav)")
    ap.add_argument("--clips-per-speaker", type=int, default=4)
    ap.add_argument("--top-n", type=int, default=TOP_N)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    root = args.wav_root or args.speech / "wav"

    with open(args.speech / "splits.csv", newline="") as f:
        speakers = sorted(r["speaker"] for r in csv.DictReader(f) if r["split"] == "train")
    rng, clips, owner = random.Random(0), [], []
    for speaker in speakers:
        files = sorted(p for p in (args.speech / "wav" / speaker).rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS)
        for path in rng.sample(files, min(args.clips_per_speaker, len(files))):
            clips.append(path)
            owner.append(speaker)

    with Verifier.load(args.model, threads=1) as v:
        emb = v.embed_many(clips)
        owners = np.array(owner)
        means = np.stack([emb[owners == s].mean(axis=0) for s in sorted(set(owner))])
        means /= np.linalg.norm(means, axis=1, keepdims=True)
        print(f"cohort: {len(means)} training speakers from {len(clips)} clips")

        trials = read_trials(args.trials)
        files = sorted({p for t in trials for p in (t.enroll, t.test)})
        index = {f: i for i, f in enumerate(files)}
        dev = v.embed_many([root / f for f in files])
        v.set_cohort(means, top_n=args.top_n)
        scores = np.array([v.score(dev[index[t.enroll]], dev[index[t.test]]) for t in trials])
        labels = np.array([t.label for t in trials])
        raw = np.array([float(dev[index[t.enroll]] @ dev[index[t.test]]) for t in trials])
        cal = calibration(scores, labels, trials=args.trials.name, score_norm="asnorm", top_n=args.top_n)
        print(f"{args.trials.name}: EER raw {metrics.eer(raw, labels):.2f} %, AS-norm {cal['eer']:.2f} %")
        cohort.save(
            args.out,
            means,
            model_id=v.model_id,
            top_n=args.top_n,
            calibration=cal,
            speakers=len(means),
            clips=len(clips),
            source=f"training split of {args.speech.name}, up to {args.clips_per_speaker} clips per speaker",
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
