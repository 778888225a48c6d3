"""Scoring a trial list: whole-utterance embeddings (sharded over ranks), cosine scores, EER and
minDCF overall and per source family with bootstrap intervals."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import torch.distributed as dist
from torch import nn

from lightsv import metrics
from lightsv.audio import SAMPLE_RATE, load
from lightsv.data import read_trials
from lightsv.errors import ConfigError
from lightsv.features import Fbank, FbankConfig
from lightsv.train.config import EvalConfig
from lightsv.train.distributed import Context
from lightsv.verifier import embed_batch


def extract(
    model: nn.Module,
    paths: list[str],
    *,
    features: FbankConfig | None = None,
    batch_seconds: float = 120.0,
    max_seconds: float = 30.0,
    ctx: Context | None = None,
    progress: bool = False,
) -> dict[str, np.ndarray]:
    """Unit-length embeddings of whole utterances, batched by length; under a process group each rank
    embeds its share of `paths` and every rank returns all of them."""
    ctx = ctx or Context()
    fbank = Fbank(features).to(ctx.device)
    paths = sorted(set(paths))
    mine = paths[ctx.rank :: ctx.world]
    wavs = {}
    for p in mine:
        wavs[p] = load(p, min_seconds=0.0)[: int(max_seconds * SAMPLE_RATE)]  # embed_batch repeats short ones
    order = sorted(mine, key=lambda p: len(wavs[p]))
    batches: list[list[str]] = []
    current: list[str] = []
    for p in order:  # ascending lengths: the newest one sets the padded size
        if current and (len(current) + 1) * len(wavs[p]) > batch_seconds * SAMPLE_RATE:
            batches.append(current)
            current = []
        current.append(p)
    if current:
        batches.append(current)
    out: dict[str, np.ndarray] = {}
    was_training = model.training
    model.eval()
    if progress:
        from tqdm import tqdm

        batches = tqdm(batches, desc="embed", leave=False, disable=None)
    for batch in batches:
        out.update(zip(batch, embed_batch(model, fbank, [wavs[p] for p in batch]), strict=True))
    model.train(was_training)
    if ctx.world > 1:
        gathered: list[dict[str, np.ndarray]] = [{} for _ in range(ctx.world)]
        dist.all_gather_object(gathered, out)
        out = {k: v for part in gathered for k, v in part.items()}
    return out


def families(manifest: str | os.PathLike | None) -> dict[str, str]:
    """absolute path -> source family (the source tag up to its first '-')."""
    if not manifest:
        return {}
    import csv

    base = Path(manifest).parent
    with open(manifest, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"path", "source"} <= set(reader.fieldnames):
            raise ConfigError(f"manifest {manifest}: needs 'path' and 'source' columns")
        return {os.path.abspath(base / row["path"]): row["source"].split("-")[0] for row in reader}


def evaluate(
    model: nn.Module,
    trials: str,
    root: str,
    *,
    manifest: str | None = None,
    features: FbankConfig | None = None,
    eval_config: EvalConfig | None = None,
    bootstrap: int | None = None,
    ctx: Context | None = None,
    progress: bool = False,
) -> dict:
    """Cosine scoring of a trial list: EER and minDCF overall and per source family, with bootstrap CIs.

    Also returns the raw `scores` and `labels` (lists) for DET plots.
    """
    e = eval_config or EvalConfig()
    bootstrap = e.bootstrap if bootstrap is None else bootstrap
    pairs = read_trials(trials)
    resolve = {p: os.path.abspath(os.path.join(root, p)) for t in pairs for p in (t.enroll, t.test)}
    missing = [p for p in resolve.values() if not os.path.exists(p)]
    if missing:
        raise ConfigError(f"trial list {trials}: {len(missing)} files missing under {root}, e.g. {missing[0]}")
    emb = extract(
        model,
        list(resolve.values()),
        features=features,
        batch_seconds=e.batch_seconds,
        max_seconds=e.max_seconds,
        ctx=ctx,
        progress=progress,
    )
    scores = np.array([float(emb[resolve[t.enroll]] @ emb[resolve[t.test]]) for t in pairs])
    labels = np.array([t.label for t in pairs])
    result: dict[str, Any] = {
        "trials": str(trials),
        "overall": metrics.summary(scores, labels, e.p_target, bootstrap),
        "families": {},
    }
    family = families(manifest)
    if family:
        names = np.array(
            [
                family.get(resolve[t.enroll], "unknown")
                if family.get(resolve[t.enroll]) == family.get(resolve[t.test])
                else "mixed"
                for t in pairs
            ]
        )
        for name in sorted(set(names)):
            pick = names == name
            if 0 < labels[pick].sum() < pick.sum():
                result["families"][name] = metrics.summary(scores[pick], labels[pick], e.p_target, bootstrap)
    result["scores"], result["labels"] = scores.tolist(), labels.tolist()
    return result
