"""What centring does to the teacher's own scores: resemblyzer (the GE2E teacher) on the dev trials,
plain cosine against cosine after subtracting its mean dev embedding, overall and per family.

    python teacher_centring.py        # writes results/teacher_centring.json

Needs the teacher extra (python -m lightsv.extras teacher) and the corpus beside the repository.
Embeddings are lightsv.train.teacher.OnlineTeacher's (resemblyzer's encoder and mel, no silence trimming).
"""

import json
import os
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from lightsv import metrics
from lightsv.audio import load
from lightsv.data import read_trials
from lightsv.train.evaluation import families
from lightsv.train.teacher import OnlineTeacher

SPEECH = Path(__file__).resolve().parents[3] / "shared" / "data" / "speech"
OUT = Path(__file__).resolve().parent / "results" / "teacher_centring.json"


def main() -> None:
    torch.set_num_threads(1)
    source = families(SPEECH / "manifest.csv")  # keyed by absolute path
    trials = read_trials(SPEECH / "trials_dev.txt")
    family = {u: source[os.path.abspath(SPEECH / "wav" / u)] for t in trials for u in (t.enroll, t.test)}
    teacher = OnlineTeacher()
    utts = sorted({u for t in trials for u in (t.enroll, t.test)})
    emb = {u: teacher(torch.from_numpy(load(SPEECH / "wav" / u))[None])[0].numpy() for u in tqdm(utts, desc="teacher")}
    mean = np.mean(list(emb.values()), axis=0)
    views = {"plain": lambda e: e, "centred": lambda e: (e - mean) / np.linalg.norm(e - mean)}
    result = {}
    for name, view in views.items():
        result[name] = {}
        for fam in ["overall", *sorted(set(family[t.enroll] for t in trials))]:
            chosen = [t for t in trials if fam == "overall" or family[t.enroll] == fam]
            scores = np.array([float(view(emb[t.enroll]) @ view(emb[t.test])) for t in chosen])
            result[name][fam] = round(metrics.eer(scores, np.array([t.label for t in chosen])), 2)
    OUT.write_text(json.dumps({"eer_percent": result, "trials": "shared/data/speech/trials_dev.txt"}, indent=2))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
