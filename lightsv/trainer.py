"""Training and evaluation of speaker-embedding models: `python -m lightsv.trainer train CONFIG OUT_DIR`.

The objective is AAM softmax on speaker labels plus distillation onto cached teacher embeddings
(any clip, labelled or not).  Runs single-process or under `torchrun` (DistributedDataParallel,
gloo on CPU, nccl on GPU).  Rank 0 logs and writes checkpoints; every epoch ends with a checkpoint
that resumes exactly (batches and crops are functions of (seed, epoch, batch), see lightsv.data).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import shutil
import sys
import time
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml
from torch import nn

from lightsv import metrics, transform
from lightsv.audio import SAMPLE_RATE, load
from lightsv.augment import AugmentConfig, Augmenter
from lightsv.checkpoint import load_model, save_model
from lightsv.data import (UNLABELED, BalancedBatchSampler, Clip, CropDataset, collate, find_audio, read_list,
                          read_trials, scan, select_split)
from lightsv.errors import ConfigError, LightsvError
from lightsv.plots import det_plot
from lightsv.features import Fbank, FbankConfig
from lightsv.losses import AAMSoftmax, DistillLoss, margin_at
from lightsv.models import build_model
from lightsv.verifier import embed_batch

log = logging.getLogger("lightsv.trainer")


# ----------------------------------------------------------------------------- configuration


@dataclass
class DataConfig:
    root: str = ""  # <root>/<speaker>/<session>/<utt>.<ext>
    splits: str | None = None  # csv speaker,split; none: every speaker trains
    train_split: str = "train"
    unlabeled: list[str] = field(default_factory=list)  # folders or path lists: clips for distillation only
    trials: str | None = None  # dev trial list for model selection, paths relative to trials_root
    trials_root: str | None = None  # default: root
    manifest: str | None = None  # csv path,source (paths relative to its folder): results per source family
    min_seconds: float = 0.2
    preload: bool = True
    workers: int = 0


@dataclass
class ModelConfig:
    name: str = "ecapa_tdnn_small"
    options: dict = field(default_factory=dict)


@dataclass
class TransformConfig:
    subsets: int = 4
    share: bool = False
    fusion: str = "sum"


@dataclass
class LossConfig:
    aam_weight: float = 1.0
    margin: float = 0.2
    scale: float = 30.0
    easy_margin: bool = False
    margin_warmup: tuple[float, float] = (0.0, 0.0)  # epochs: margin 0 until the first, full from the second
    distill_weight: float = 0.0
    teacher_cache: str | None = None  # npz, built on first use when missing
    teacher_rate: float = 2.0  # teacher windows per second when the cache is built
    teacher_center: bool = False  # targets relative to the teacher's mean embedding
    projection: str = "auto"


@dataclass
class OptimConfig:
    name: str = "adamw"  # or sgd
    lr: float = 2e-3
    final_lr: float = 2e-5
    weight_decay: float = 1e-4
    momentum: float = 0.9
    schedule: str = "cosine"  # cosine, exponential or constant, after the warm-up
    warmup_epochs: float = 1.0
    grad_clip: float = 5.0  # 0: off


@dataclass
class EvalConfig:
    every: int = 1  # epochs between dev evaluations
    batch_seconds: float = 120.0  # audio per extraction batch (padding included)
    max_seconds: float = 30.0  # longer utterances are cut
    bootstrap: int = 1000
    p_target: float = 0.01


@dataclass
class FinetuneConfig:
    """Large-margin fine-tuning (Thienpondt et al., 2021): longer crops, bigger margin, lower rate."""
    epochs: int = 0
    crop_seconds: float = 4.0
    margin: float = 0.4
    lr: float = 1e-4
    final_lr: float = 1e-5
    warmup_epochs: float = 0.0
    batch_size: int = 0  # 0: the training batch size
    max_minutes: float = 0.0


@dataclass
class TrainConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    transform: TransformConfig | None = None
    features: FbankConfig = field(default_factory=FbankConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    epochs: int = 20
    max_minutes: float = 0.0  # wall-clock budget of the training loop; 0: none
    steps_per_epoch: int = 0  # 0: labelled clips / batch size
    batch_size: int = 64  # per process
    per_speaker: int = 2
    unlabeled_per_batch: int = 0
    crop_seconds: float = 2.0
    short_clips: str = "join"  # or repeat
    patience: int = 0  # epochs without a better dev EER before stopping; 0: never stop early
    keep_checkpoints: int = 3
    log_every: int = 10
    seed: int = 42
    threads: int = 1
    device: str = "auto"


def _convert(value, kind, where: str):
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (kind,) = [a for a in args if a is not type(None)]
        return _convert(value, kind, where)
    if dataclasses.is_dataclass(kind):
        return _from_dict(kind, {} if value is None else value, where)
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if kind in (int, float):
        ok = isinstance(value, int) if kind is int else isinstance(value, (int, float))
        if not ok or isinstance(value, bool):
            raise ConfigError(f"{where}: expected {'an integer' if kind is int else 'a number'}, got {value!r}")
        return kind(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if kind is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is list or (len(args) == 2 and args[1] is Ellipsis):
            return origin(_convert(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    raise ConfigError(f"{where}: unsupported config type {kind}")


def _from_dict(cls, data, where: str = "config"):
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = [k for k in data if k not in names]
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(names)})")
    return cls(**{k: _convert(v, hints[k], f"{where}.{k}" if where != "config" else k) for k, v in data.items()})


def _set(tree: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
        if not isinstance(tree, dict):
            raise ConfigError(f"override {dotted}: {p} is not a section")
    tree[last] = value


def config_from_dict(data: dict, overrides: list[str] = ()) -> TrainConfig:
    """A TrainConfig from plain data plus `key.sub=value` overrides (values parsed as YAML scalars)."""
    data = json.loads(json.dumps(data or {}))  # a private copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        _set(data, key.strip(), yaml.safe_load(raw))
    config = _from_dict(TrainConfig, data)
    check(config)
    return config


def load_config(path: str | os.PathLike, overrides: list[str] = ()) -> TrainConfig:
    """Read a YAML training config; relative data paths are relative to the working directory."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ConfigError(f"config {path}: no such file") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"config {path}: not valid YAML ({err})") from None
    try:
        return config_from_dict(data if data is not None else {}, overrides)
    except ConfigError as err:
        raise ConfigError(f"config {path}: {err}") from None


def check(c: TrainConfig) -> None:
    """Values and input files; the teacher cache may be missing (it is built on first use)."""
    need = [("data.root", c.data.root, True)] + [(f"data.{k}", getattr(c.data, k), False)
                                                 for k in ("splits", "trials", "trials_root", "manifest")]
    need += [(f"data.unlabeled[{i}]", p, False) for i, p in enumerate(c.data.unlabeled)]
    need += [(f"augment.noise_dirs[{i}]", p, False) for i, p in enumerate(c.augment.noise_dirs)]
    need += [(f"augment.rir_dirs[{i}]", p, False) for i, p in enumerate(c.augment.rir_dirs)]
    for name, path, required in need:
        if required and not path:
            raise ConfigError(f"{name} is required")
        if path and not os.path.exists(path):
            raise ConfigError(f"{name}: {path} does not exist")
    positive = {"epochs": c.epochs, "batch_size": c.batch_size, "per_speaker": c.per_speaker,
                "crop_seconds": c.crop_seconds, "threads": c.threads, "optim.lr": c.optim.lr,
                "loss.scale": c.loss.scale, "eval.every": c.eval.every, "keep_checkpoints": c.keep_checkpoints}
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    nonneg = {"max_minutes": c.max_minutes, "steps_per_epoch": c.steps_per_epoch, "patience": c.patience,
              "loss.aam_weight": c.loss.aam_weight, "loss.distill_weight": c.loss.distill_weight,
              "loss.margin": c.loss.margin, "unlabeled_per_batch": c.unlabeled_per_batch,
              "finetune.epochs": c.finetune.epochs}
    for name, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")
    if c.loss.aam_weight == 0 and c.loss.distill_weight == 0:
        raise ConfigError("loss: aam_weight and distill_weight are both 0; nothing to train")
    if c.loss.distill_weight > 0 and not c.loss.teacher_cache:
        raise ConfigError("loss.distill_weight > 0 needs loss.teacher_cache (a path; built when missing)")
    choices = {"optim.name": (c.optim.name, ("adamw", "sgd")),
               "optim.schedule": (c.optim.schedule, ("cosine", "exponential", "constant")),
               "short_clips": (c.short_clips, ("join", "repeat")),
               "loss.projection": (c.loss.projection, ("auto", "none", "linear")),
               "transform.fusion": (c.transform.fusion if c.transform else "sum", tuple(transform.FUSIONS))}
    for name, (value, allowed) in choices.items():
        if value not in allowed:
            raise ConfigError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    if c.model.options.get("feat_dim", c.features.n_mels) != c.features.n_mels:
        raise ConfigError(f"model.options.feat_dim ({c.model.options['feat_dim']}) != features.n_mels ({c.features.n_mels})")
    c.augment.check()


def build(c: TrainConfig) -> nn.Module:
    """The backbone a config describes (with the transformation module when configured)."""
    model = build_model(c.model.name, **{"feat_dim": c.features.n_mels, **c.model.options})
    if c.transform is not None:
        transform.apply(model, subsets=c.transform.subsets, share=c.transform.share, fusion=c.transform.fusion)
    return model


# ----------------------------------------------------------------------------- distributed


@dataclass
class Context:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


def setup(device: str = "auto") -> Context:
    """Join the process group torchrun describes (WORLD_SIZE etc.), or use one already initialised."""
    if not dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        dist.init_process_group("nccl" if device != "cpu" and torch.cuda.is_available() else "gloo")
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        local = int(os.environ.get("LOCAL_RANK", rank % max(torch.cuda.device_count(), 1)))
        torch.cuda.set_device(local)
        device = f"cuda:{local}"
    return Context(rank, world, torch.device(device))


# ----------------------------------------------------------------------------- embeddings and scoring


def extract(model: nn.Module, paths: list[str], *, features: FbankConfig | None = None, batch_seconds: float = 120.0,
            max_seconds: float = 30.0, ctx: Context | None = None, progress: bool = False) -> dict[str, np.ndarray]:
    """Unit-length embeddings of whole utterances, batched by length; under a process group each rank
    embeds its share of `paths` and every rank returns all of them."""
    ctx = ctx or Context()
    fbank = Fbank(features).to(ctx.device)
    paths = sorted(set(paths))
    mine = paths[ctx.rank::ctx.world]
    wavs = {}
    for p in mine:
        wav = load(p, min_seconds=0.0)[: int(max_seconds * SAMPLE_RATE)]
        if len(wav) < SAMPLE_RATE // 2:  # too few frames for statistics pooling: repeat
            wav = np.resize(wav, SAMPLE_RATE // 2)
        wavs[p] = wav
    order = sorted(mine, key=lambda p: len(wavs[p]))
    batches, current = [], []
    for p in order:  # ascending lengths: the newest one sets the padded size
        if current and (len(current) + 1) * len(wavs[p]) > batch_seconds * SAMPLE_RATE:
            batches.append(current)
            current = []
        current.append(p)
    if current:
        batches.append(current)
    out = {}
    was_training = model.training
    model.eval()
    if progress:
        from tqdm import tqdm
        batches = tqdm(batches, desc="embed", leave=False, disable=None)
    for batch in batches:
        out.update(zip(batch, embed_batch(model, fbank, [wavs[p] for p in batch])))
    model.train(was_training)
    if ctx.world > 1:
        gathered = [None] * ctx.world
        dist.all_gather_object(gathered, out)
        out = {k: v for part in gathered for k, v in part.items()}
    return out


def _families(manifest: str | None) -> dict[str, str]:
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


def evaluate(model: nn.Module, trials: str, root: str, *, manifest: str | None = None, features: FbankConfig | None = None,
             eval_config: EvalConfig | None = None, bootstrap: int | None = None, ctx: Context | None = None,
             progress: bool = False) -> dict:
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
    emb = extract(model, list(resolve.values()), features=features, batch_seconds=e.batch_seconds,
                  max_seconds=e.max_seconds, ctx=ctx, progress=progress)
    scores = np.array([float(emb[resolve[t.enroll]] @ emb[resolve[t.test]]) for t in pairs])
    labels = np.array([t.label for t in pairs])
    result = {"trials": str(trials), "overall": metrics.summary(scores, labels, e.p_target, bootstrap), "families": {}}
    family = _families(manifest)
    if family:
        names = np.array([family.get(resolve[t.enroll], "unknown") if family.get(resolve[t.enroll]) == family.get(resolve[t.test])
                          else "mixed" for t in pairs])
        for name in sorted(set(names)):
            pick = names == name
            if 0 < labels[pick].sum() < pick.sum():
                result["families"][name] = metrics.summary(scores[pick], labels[pick], e.p_target, bootstrap)
    result["scores"], result["labels"] = scores.tolist(), labels.tolist()
    return result


# ----------------------------------------------------------------------------- training


class Objective(nn.Module):
    """The backbone with its training heads, so DDP synchronises all their gradients in one module."""

    def __init__(self, model: nn.Module, aam: AAMSoftmax | None, distill: DistillLoss | None,
                 aam_weight: float, distill_weight: float):
        super().__init__()
        self.model, self.aam, self.distill = model, aam, distill
        self.aam_weight, self.distill_weight = aam_weight, distill_weight

    def forward(self, feats, labels, targets, weights):
        emb = self.model(feats)
        zero = emb.new_zeros(())
        aam, acc = self.aam(emb, labels) if self.aam is not None else (zero, zero)
        distill = self.distill(emb, targets, weights) if self.distill is not None else zero
        loss = self.aam_weight * aam + self.distill_weight * distill
        return loss, torch.stack([loss.detach(), aam.detach(), acc.detach(), distill.detach()])


def training_clips(c: TrainConfig) -> tuple[list[Clip], list[str]]:
    """(labelled clips then unlabeled ones, speaker names in label order)."""
    utts = select_split(scan(c.data.root), c.data.splits, c.data.train_split if c.data.splits else None)
    utts = [u for u in utts if _seconds(u.path) >= c.data.min_seconds]
    speakers = sorted({u.speaker for u in utts})
    label = {s: i for i, s in enumerate(speakers)}
    clips = [Clip(os.path.abspath(u.path), label[u.speaker]) for u in utts]
    seen = {clip.path for clip in clips}
    for source in c.data.unlabeled:
        paths = find_audio(source) if os.path.isdir(source) else read_list(source)
        for p in map(os.path.abspath, paths):
            if p not in seen and _seconds(p) >= c.data.min_seconds:
                seen.add(p)
                clips.append(Clip(p, UNLABELED))
    return clips, speakers


def _seconds(path: str) -> float:
    import soundfile as sf
    meta = sf.info(path)
    return meta.frames / meta.samplerate


def teacher_cache(c: TrainConfig, clips: list[Clip] | None = None, ctx: Context | None = None, progress: bool = True):
    """Load the configured teacher cache, embedding whatever clips it lacks (rank 0 builds, others wait)."""
    from lightsv.teacher import ResemblyzerTeacher, TeacherCache, build_cache
    ctx = ctx or Context()
    clips = clips if clips is not None else training_clips(c)[0]
    path = Path(c.loss.teacher_cache)
    if ctx.main:
        existing = TeacherCache.load(path) if path.exists() else None
        missing = [clip.path for clip in clips if existing is None or clip.path not in existing]
        if missing:
            log.info("teacher: embedding %d clips into %s", len(missing), path)
            teacher = ResemblyzerTeacher(rate=c.loss.teacher_rate)
            build_cache([clip.path for clip in clips] + (existing.keys if existing else []), teacher, existing,
                        progress=progress).save(path)
    ctx.barrier()
    return TeacherCache.load(path)


def _stage(c: TrainConfig, stage: str) -> TrainConfig:
    if stage == "train":
        return c
    if stage != "finetune":
        raise ConfigError(f"unknown stage {stage!r}; use train or finetune")
    f = c.finetune
    if f.epochs <= 0:
        raise ConfigError("finetune.epochs is 0: no fine-tuning stage configured")
    return dataclasses.replace(
        c, epochs=f.epochs, crop_seconds=f.crop_seconds, max_minutes=f.max_minutes,
        batch_size=f.batch_size or c.batch_size, steps_per_epoch=c.steps_per_epoch,
        loss=dataclasses.replace(c.loss, margin=f.margin, margin_warmup=(0.0, 0.0)),
        optim=dataclasses.replace(c.optim, lr=f.lr, final_lr=f.final_lr, warmup_epochs=f.warmup_epochs))


def _lr_factor(c: OptimConfig, total: int, warmup: int):
    final = c.final_lr / c.lr

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if c.schedule == "constant":
            return 1.0
        t = min(1.0, (step - warmup) / max(1, total - warmup))
        if c.schedule == "cosine":
            return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * t))
        return final ** t

    return factor


def _logger(out: Path, ctx: Context) -> None:
    log.setLevel(logging.INFO)
    for h in list(log.handlers):
        log.removeHandler(h)
        h.close()
    if not ctx.main:
        log.addHandler(logging.NullHandler())
        return
    fmt = logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S")
    for handler in (logging.FileHandler(out / "train.log"), logging.StreamHandler(sys.stderr)):
        handler.setFormatter(fmt)
        log.addHandler(handler)
    log.propagate = False


def _checkpoints(out: Path) -> list[Path]:
    return sorted((out / "checkpoints").glob("step_*.pt"))


@dataclass
class Trained:
    model: nn.Module
    results: dict
    out_dir: Path


def train(config: TrainConfig, out_dir: str | os.PathLike, resume: bool = True, stage: str = "train",
          progress: bool = True) -> Trained:
    """Train (stage "train") or large-margin fine-tune the trained model (stage "finetune", into
    `out_dir/finetune`); returns the selected model and the results written to results.json."""
    c = _stage(config, stage)
    ctx = setup(c.device)
    torch.set_num_threads(c.threads)
    root_out = Path(out_dir)
    out = root_out / "finetune" if stage == "finetune" else root_out
    if ctx.main:
        (out / "checkpoints").mkdir(parents=True, exist_ok=True)
    ctx.barrier()
    _logger(out, ctx)
    started = time.monotonic()

    clips, speakers = training_clips(c)
    n_labelled = sum(clip.label != UNLABELED for clip in clips)
    cache = teacher_cache(c, clips, ctx, progress) if c.loss.distill_weight > 0 else None
    if cache is not None and c.loss.teacher_center:
        cache.centre()
    aug = c.augment
    speed_classes = 1 + (len(aug.speeds) if aug.speed_prob > 0 and aug.speed_as_new_speakers else 0)
    dataset = CropDataset(clips, c.crop_seconds, short=c.short_clips, preload=c.data.preload,
                          target=cache.target if cache else None, target_dim=cache.dim if cache else 0,
                          num_labels=len(speakers))
    augmenter = Augmenter(aug, babble=lambda rng, n: dataset.random_crop(rng, n))
    dataset.augment = augmenter if augmenter.enabled else None
    dataset.speed = augmenter.speed if aug.speed_prob > 0 else None
    steps = c.steps_per_epoch or max(1, math.ceil(n_labelled / (c.batch_size * ctx.world)))
    sampler = BalancedBatchSampler([clip.label for clip in clips], c.batch_size, steps, per_speaker=c.per_speaker,
                                   unlabeled=c.unlabeled_per_batch, seed=c.seed, rank=ctx.rank, world_size=ctx.world)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                         num_workers=c.data.workers, persistent_workers=False)

    torch.manual_seed(c.seed)
    if stage == "finetune":
        model = load_model(root_out / "model.pt").train()
    else:
        model = build(c)
    aam = AAMSoftmax(model.embed_dim, len(speakers) * speed_classes, c.loss.margin, c.loss.scale,
                     c.loss.easy_margin) if c.loss.aam_weight > 0 else None
    distill = DistillLoss(model.embed_dim, cache.dim, c.loss.projection) if cache else None
    objective = Objective(model, aam, distill, c.loss.aam_weight, c.loss.distill_weight)
    if stage == "finetune" and (root_out / "heads.pt").exists():
        heads = torch.load(root_out / "heads.pt", map_location="cpu", weights_only=True)
        for name, module in (("aam", aam), ("distill", distill)):
            if module is not None and name in heads:
                module.load_state_dict(heads[name])
    objective.to(ctx.device)
    fbank = Fbank(c.features).to(ctx.device)
    ddp = nn.parallel.DistributedDataParallel(objective) if ctx.world > 1 else objective

    params = [p for p in objective.parameters() if p.requires_grad]
    if c.optim.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=c.optim.lr, weight_decay=c.optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(params, lr=c.optim.lr, momentum=c.optim.momentum,
                                    weight_decay=c.optim.weight_decay, nesterov=True)
    total_steps = c.epochs * steps
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(c.optim, total_steps, int(round(c.optim.warmup_epochs * steps))))

    state = {"epoch": 0, "batch": 0, "step": 0, "elapsed": 0.0, "best_eer": None, "best_step": None,
             "stale": 0, "history": [], "stopped": None}
    found = _checkpoints(out) if resume else []
    if found:
        ckpt = torch.load(found[-1], map_location="cpu", weights_only=False)
        objective.load_state_dict(ckpt["objective"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        state.update(ckpt["state"])
        torch.set_rng_state(ckpt["rng"])
        log.info("resumed from %s (epoch %d, batch %d)", found[-1].name, state["epoch"], state["batch"])
    else:
        params_count = sum(p.numel() for p in model.parameters())
        log.info("%s: %d labelled clips of %d speakers, %d unlabeled; %s with %d parameters; %d steps/epoch x %d",
                 stage, n_labelled, len(speakers), len(clips) - n_labelled, c.model.name, params_count, steps, c.epochs)
    resumed_elapsed = state["elapsed"]

    def save_checkpoint():
        if not ctx.main:
            return
        path = out / "checkpoints" / f"step_{state['step']:07d}.pt"
        torch.save({"objective": objective.state_dict(), "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "state": state, "rng": torch.get_rng_state(),
                    "config": dataclasses.asdict(config)}, path.with_suffix(".tmp"))
        os.replace(path.with_suffix(".tmp"), path)
        for old in _checkpoints(out)[:-c.keep_checkpoints]:
            old.unlink()

    def sync_buffers():
        # DDP copies rank 0's buffers at the start of each forward, so after the last step every
        # rank holds batch-norm statistics of its own batch; evaluation and saving need one model
        if ctx.world > 1:
            for buffer in objective.buffers():
                dist.broadcast(buffer.data, 0)

    def dev_check(tag: str) -> float | None:
        sync_buffers()
        if not c.data.trials:
            return None
        result = evaluate(model, c.data.trials, c.data.trials_root or c.data.root, features=c.features,
                          eval_config=c.eval, bootstrap=0, ctx=ctx)
        eer = result["overall"]["eer"]
        if state["best_eer"] is None or eer < state["best_eer"]:
            state.update(best_eer=eer, best_step=state["step"], stale=0)
            if ctx.main:
                save_model(model, out / "best.pt", dev_eer=eer, step=state["step"], epoch=state["epoch"])
                torch.save({"aam": aam.state_dict() if aam else {}, "distill": distill.state_dict() if distill else {}},
                           out / "heads.pt")
        else:
            state["stale"] += 1
        log.info("%s: dev EER %.2f%% minDCF %.3f (best %.2f%% at step %d)", tag, eer, result["overall"]["min_dcf"],
                 state["best_eer"], state["best_step"])
        return eer

    def over_budget() -> bool:
        elapsed = resumed_elapsed + time.monotonic() - started
        stop = torch.tensor([float(bool(c.max_minutes) and elapsed > 60.0 * c.max_minutes)], device=ctx.device)
        if ctx.world > 1:  # clocks differ: every rank must stop at the same batch or DDP hangs
            dist.broadcast(stop, 0)
        return bool(stop.item())

    if state["stopped"] == "time budget" and not over_budget():
        state["stopped"] = None  # resumed with a larger budget

    while state["stopped"] is None and state["epoch"] < c.epochs:
        epoch = state["epoch"]
        sampler.set_epoch(epoch, start=state["batch"])
        objective.train()
        sums, count = torch.zeros(4), 0
        bar = loader
        if progress and ctx.main:
            from tqdm import tqdm
            bar = tqdm(loader, desc=f"{stage} epoch {epoch + 1}/{c.epochs}", leave=False, disable=None)
        for wav, labels, targets, weights in bar:
            if aam is not None:
                aam.margin = margin_at(epoch + state["batch"] / steps, c.loss.margin, c.loss.margin_warmup)
            with torch.no_grad():
                feats, _ = fbank(wav.to(ctx.device))
            loss, parts = ddp(feats, labels.to(ctx.device), targets.to(ctx.device), weights.to(ctx.device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if c.optim.grad_clip:
                nn.utils.clip_grad_norm_(params, c.optim.grad_clip)
            optimizer.step()
            scheduler.step()
            state["batch"] += 1
            state["step"] += 1
            sums += parts.cpu()
            count += 1
            if state["step"] % c.log_every == 0:
                m = sums / count
                log.info("%s epoch %d batch %d/%d: loss %.4f aam %.4f acc %.3f distill %.4f lr %.2e", stage, epoch + 1,
                         state["batch"], steps, m[0], m[1], m[2], m[3], scheduler.get_last_lr()[0])
            if over_budget():
                state["stopped"] = "time budget"
                break
        state["elapsed"] = resumed_elapsed + time.monotonic() - started
        finished = state["batch"] >= steps
        m = (sums / max(count, 1)).tolist()
        entry = {"epoch": epoch + 1, "step": state["step"], "loss": m[0], "aam": m[1], "accuracy": m[2],
                 "distill": m[3], "minutes": state["elapsed"] / 60.0}
        if finished:
            state["epoch"] += 1
            state["batch"] = 0
        if finished and (state["epoch"] % c.eval.every == 0 or state["epoch"] == c.epochs) or state["stopped"]:
            entry["dev_eer"] = dev_check(f"epoch {epoch + 1}" + ("" if finished else f" (stopped at batch {state['batch']})"))
            if c.patience and state["stale"] >= c.patience:
                state["stopped"] = f"no dev improvement in {c.patience} evaluations"
        state["history"].append(entry)
        save_checkpoint()
        ctx.barrier()
    if state["stopped"]:
        log.info("stopped: %s", state["stopped"])
    sync_buffers()

    if c.data.trials and (out / "best.pt").exists():
        model = load_model(out / "best.pt").to(ctx.device)
    model.eval()
    results = {"stage": stage, "model": c.model.name, "params": sum(p.numel() for p in model.parameters()),
               "steps": state["step"], "best_step": state["best_step"], "minutes": state["elapsed"] / 60.0,
               "stopped": state["stopped"], "history": state["history"]}
    if c.data.trials:
        result = evaluate(model, c.data.trials, c.data.trials_root or c.data.root, manifest=c.data.manifest,
                          features=c.features, eval_config=c.eval, ctx=ctx)
        results["dev"] = {k: v for k, v in result.items() if k not in ("scores", "labels")}
    if ctx.main:
        extra = {"dev_eer": results.get("dev", {}).get("overall", {}).get("eer")}
        save_model(model, out / "model.pt", training_config=dataclasses.asdict(config), stage=stage,
                   steps=state["step"], eer=extra["dev_eer"],
                   min_dcf=results.get("dev", {}).get("overall", {}).get("min_dcf"))
        if not (out / "heads.pt").exists():
            torch.save({"aam": aam.state_dict() if aam else {}, "distill": distill.state_dict() if distill else {}},
                       out / "heads.pt")
        results["size_bytes"] = (out / "model.pt").stat().st_size
        (out / "results.json").write_text(json.dumps(results, indent=2))
        summary = results.get("dev", {}).get("overall")
        if summary:
            log.info("final: dev EER %.2f%% (95%% CI %.2f-%.2f) minDCF %.3f; model %s", summary["eer"],
                     *summary["eer_ci95"], summary["min_dcf"], out / "model.pt")
    ctx.barrier()
    return Trained(model, results, out)


def export(exp_dir: str | os.PathLike, dest: str | os.PathLike, half: bool = False) -> Path:
    """Copy the model with the lowest dev EER of `exp_dir` (trained or fine-tuned) to `dest`;
    `half` stores its weights as float16 (the shipped size)."""
    exp_dir = Path(exp_dir)
    candidates = []
    for sub in (exp_dir, exp_dir / "finetune"):
        if (sub / "model.pt").exists():
            result = json.loads((sub / "results.json").read_text()) if (sub / "results.json").exists() else {}
            eer = result.get("dev", {}).get("overall", {}).get("eer", math.inf)
            candidates.append((eer, sub / "model.pt"))
    if not candidates:
        raise ConfigError(f"{exp_dir}: no model.pt to export (run the training stage first)")
    eer, best = min(candidates, key=lambda x: x[0])
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    if not half:
        shutil.copyfile(best, dest)
        return Path(dest)
    model, extra = load_model(best, return_extra=True)
    return save_model(model, dest, half=True, **extra)


# ----------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m lightsv.trainer", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    overrides = dict(action="append", default=[], metavar="KEY=VALUE", help="override a config value (repeatable)")
    for name, text in (("train", "train a model"), ("finetune", "large-margin fine-tune a trained model")):
        p = sub.add_parser(name, help=text)
        p.add_argument("config")
        p.add_argument("out_dir", nargs="?", help="experiment folder (default: exp/<config name>)")
        p.add_argument("--set", dest="overrides", **overrides)
        p.add_argument("--no-resume", action="store_true", help="start over even if checkpoints exist")
    p = sub.add_parser("teacher", help="build the teacher embedding cache of a config")
    p.add_argument("config")
    p.add_argument("--set", dest="overrides", **overrides)
    p = sub.add_parser("evaluate", help="score a trial list with a saved model; write JSON and a DET plot")
    p.add_argument("config")
    p.add_argument("model")
    p.add_argument("--set", dest="overrides", **overrides)
    p.add_argument("--trials", help="trial list (default: data.trials)")
    p.add_argument("--root", help="folder the trial paths are relative to (default: data.trials_root or data.root)")
    p.add_argument("--manifest", help="csv path,source for per-family results (default: data.manifest)")
    p.add_argument("--out", required=True, help="folder for results.json and det.png")
    p = sub.add_parser("export", help="copy the best model of an experiment folder")
    p.add_argument("exp_dir")
    p.add_argument("dest")
    p.add_argument("--half", action="store_true", help="store the weights as float16 (half the file)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of `python -m lightsv.trainer`; `lightsv train CONFIG OUT_DIR` maps to main(["train", ...])."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "export":
            print(export(args.exp_dir, args.dest, half=args.half))
            return 0
        config = load_config(args.config, args.overrides)
        if args.command in ("train", "finetune"):
            out_dir = args.out_dir or Path("exp") / Path(args.config).stem
            trained = train(config, out_dir, resume=not args.no_resume, stage=args.command)
            print(json.dumps(trained.results.get("dev", {}).get("overall", {}), indent=2))
        elif args.command == "teacher":
            setup(config.device)
            torch.set_num_threads(config.threads)
            logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
            cache = teacher_cache(config)
            print(f"{config.loss.teacher_cache}: {len(cache)} clips, {cache.windows.shape[0]} windows")
        else:
            ctx = setup(config.device)
            torch.set_num_threads(config.threads)
            model = load_model(args.model).to(ctx.device)
            result = evaluate(model, args.trials or config.data.trials,
                              args.root or config.data.trials_root or config.data.root,
                              manifest=args.manifest or config.data.manifest, features=config.features,
                              eval_config=config.eval, ctx=ctx, progress=True)
            if ctx.main:
                out = Path(args.out)
                out.mkdir(parents=True, exist_ok=True)
                scores = {k: v for k, v in result.items() if k not in ("scores", "labels")}
                (out / "results.json").write_text(json.dumps(scores, indent=2))
                det_plot({Path(args.model).name: (result["scores"], result["labels"])}, out / "det.png",
                         title=Path(args.trials or config.data.trials).name)
                print(json.dumps(scores["overall"], indent=2))
        return 0
    except (LightsvError, FileNotFoundError) as err:
        print(f"lightsv train: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.destroy_process_group()


if __name__ == "__main__":
    raise SystemExit(main())
