"""The training loop (`python -m lightsv.train train CONFIG OUT_DIR`).

The objective is AAM softmax on speaker labels plus distillation onto teacher embeddings of any
clip, labelled or not: cached once, or computed on each crop as it is drawn (`loss.teacher:
online`); with a `spoof:` section, a binary bona fide / spoof cross-entropy on a countermeasure's
score (and, with `spoof.teacher`, one towards a teacher countermeasure's probabilities on the same
crops), with balanced batches and dev EER / t-DCF (lightsv.spoof).  Runs single-process or under
`torchrun` (DistributedDataParallel, gloo on CPU, nccl on GPU).  Rank 0 logs and writes
checkpoints; every epoch ends with a checkpoint that resumes exactly (batches and crops are
functions of (seed, epoch, batch), see lightsv.data).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from lightsv.audio import SAMPLE_RATE
from lightsv.checkpoint import load_model, save_model
from lightsv.data import (
    UNLABELED,
    BalancedBatchSampler,
    Clip,
    CropDataset,
    collate,
    find_audio,
    mix_seed,
    read_list,
    scan,
    select_split,
)
from lightsv.errors import ConfigError
from lightsv.features import features_for
from lightsv.plots import det_plot
from lightsv.spoof.data import entries as spoof_entries
from lightsv.spoof.evaluate import asv_scores, evaluate_cm
from lightsv.train.augment import Augmenter, spec_augment
from lightsv.train.config import OptimConfig, TrainConfig, build
from lightsv.train.distributed import Context, setup
from lightsv.train.evaluation import evaluate
from lightsv.train.losses import AAMSoftmax, DistillLoss, margin_at

log = logging.getLogger("lightsv.train")


# ----------------------------------------------------------------------------- training


class Objective(nn.Module):
    """The backbone with its training heads, so DDP synchronises all their gradients in one module."""

    def __init__(
        self,
        model: nn.Module,
        aam: AAMSoftmax | None,
        distill: DistillLoss | None,
        aam_weight: float,
        distill_weight: float,
        binary: bool = False,
        teacher_weight: float = 0.0,
    ):
        super().__init__()
        self.model, self.aam, self.distill = model, aam, distill
        self.aam_weight, self.distill_weight = aam_weight, distill_weight
        self.binary, self.teacher_weight = binary, teacher_weight

    def forward(self, feats, labels, targets, weights):
        emb = self.model(feats)
        zero = emb.new_zeros(())
        if self.binary:  # a countermeasure: emb[:, 0] is the logit of bona fide (label 1)
            bce = nn.functional.binary_cross_entropy_with_logits(emb[:, 0], labels.to(emb.dtype))
            acc = ((emb[:, 0] > 0).long() == labels).to(emb.dtype).mean()
            soft = zero
            if self.teacher_weight:  # `targets`: a teacher countermeasure's logits
                soft = nn.functional.binary_cross_entropy_with_logits(emb[:, 0], torch.sigmoid(targets))
            loss = (1.0 - self.teacher_weight) * bce + self.teacher_weight * soft
            return loss, torch.stack([loss.detach(), bce.detach(), acc.detach(), soft.detach()])
        aam, acc = self.aam(emb, labels) if self.aam is not None else (zero, zero)
        distill = self.distill(emb, targets, weights) if self.distill is not None else zero
        loss = self.aam_weight * aam + self.distill_weight * distill
        return loss, torch.stack([loss.detach(), aam.detach(), acc.detach(), distill.detach()])


def spoof_teacher(c: TrainConfig, model: nn.Module) -> nn.Module | None:
    """The countermeasure `spoof.teacher` names, frozen; ConfigError if it is not one or reads other input."""
    if c.spoof is None or not c.spoof.teacher:
        return None
    from lightsv.verifier import _features

    path = c.spoof.teacher
    if not Path(path).is_file():
        raise ConfigError(f"spoof.teacher {path}: no such file")
    teacher, extra = load_model(path, return_extra=True)
    if getattr(teacher, "embed_dim", None) != 1:
        raise ConfigError(f"spoof.teacher {path}: not a countermeasure (it gives {teacher.embed_dim} values, not 1)")
    kind = getattr(model, "input_kind", "fbank")
    if getattr(teacher, "input_kind", "fbank") != kind or (kind == "fbank" and _features(extra, path) != c.features):
        raise ConfigError(f"spoof.teacher {path}: reads other input than the model (a filterbank, or the waveform)")
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher.eval()


def training_clips(c: TrainConfig) -> tuple[list[Clip], list[str]]:
    """(labelled clips then unlabeled ones, speaker names in label order); for a countermeasure the
    protocol's training entries, with the classes ["spoof", "bonafide"] as labels 0 and 1."""
    if c.spoof is not None:
        return [Clip(e.path, e.label) for e in spoof_entries(c.spoof, c.data.root, "train")], ["spoof", "bonafide"]
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
    from lightsv.train.teacher import ResemblyzerTeacher, TeacherCache, build_cache

    ctx = ctx or Context()
    clips = clips if clips is not None else training_clips(c)[0]
    if not c.loss.teacher_cache:
        raise ConfigError("loss.teacher_cache: no path for the teacher cache")
    path = Path(c.loss.teacher_cache)
    if ctx.main:
        existing = TeacherCache.load(path) if path.exists() else None
        missing = [clip.path for clip in clips if existing is None or clip.path not in existing]
        if missing:
            log.info("teacher: embedding %d clips into %s", len(missing), path)
            teacher = ResemblyzerTeacher(rate=c.loss.teacher_rate)
            build_cache(
                [clip.path for clip in clips] + (existing.keys if existing else []),
                teacher,
                existing,
                progress=progress,
            ).save(path)
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
        c,
        epochs=f.epochs,
        crop_seconds=f.crop_seconds,
        max_minutes=f.max_minutes,
        batch_size=f.batch_size or c.batch_size,
        steps_per_epoch=c.steps_per_epoch,
        loss=dataclasses.replace(c.loss, margin=f.margin, margin_warmup=(0.0, 0.0)),
        optim=dataclasses.replace(c.optim, lr=f.lr, final_lr=f.final_lr, warmup_epochs=f.warmup_epochs),
    )


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
        return final**t

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


def _data(c: TrainConfig, ctx: Context, clips: list[Clip], num_labels: int, steps: int, cache, online: bool):
    """The training crops and their batches of `steps` per epoch: (dataset, sampler, loader, label
    classes per speaker: speed-perturbed copies count as new speakers)."""
    aug = c.augment
    speed_classes = 1 + (len(aug.speeds) if aug.speed_prob > 0 and aug.speed_as_new_speakers else 0)
    dataset = CropDataset(
        clips,
        c.crop_seconds,
        short=c.short_clips,
        preload=c.data.preload,
        target=cache.target if cache else None,
        target_dim=cache.dim if cache else 0,
        num_labels=num_labels,
        keep_clean=online,
    )
    augmenter = Augmenter(aug, babble=lambda rng, n: dataset.random_crop(rng, n))
    dataset.augment = augmenter if augmenter.enabled else None
    dataset.speed = augmenter.speed if aug.speed_prob > 0 else None
    crop_range = None
    if c.crop_min_seconds:
        crop_range = (int(round(c.crop_min_seconds * SAMPLE_RATE)), int(round(c.crop_seconds * SAMPLE_RATE)))
    sampler = BalancedBatchSampler(
        [clip.label for clip in clips],
        c.batch_size,
        steps,
        per_speaker=c.per_speaker,
        unlabeled=c.unlabeled_per_batch,
        seed=c.seed,
        rank=ctx.rank,
        world_size=ctx.world,
        crop_range=crop_range,
    )
    loader = torch.utils.data.DataLoader(
        dataset, batch_sampler=sampler, collate_fn=collate, num_workers=c.data.workers, persistent_workers=False
    )
    return dataset, sampler, loader, speed_classes


def _optimizer(c: TrainConfig, params: list[nn.Parameter], steps: int):
    """The optimizer and its per-step learning-rate schedule (warm-up, then the configured decay)."""
    optimizer: torch.optim.Optimizer
    if c.optim.name == "adamw":
        optimizer = torch.optim.AdamW(params, lr=c.optim.lr, weight_decay=c.optim.weight_decay)
    else:
        optimizer = torch.optim.SGD(
            params, lr=c.optim.lr, momentum=c.optim.momentum, weight_decay=c.optim.weight_decay, nesterov=True
        )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, _lr_factor(c.optim, c.epochs * steps, int(round(c.optim.warmup_epochs * steps)))
    )
    return optimizer, scheduler


@dataclass
class Trained:
    model: nn.Module
    results: dict
    out_dir: Path


def train(
    config: TrainConfig, out_dir: str | os.PathLike, resume: bool = True, stage: str = "train", progress: bool = True
) -> Trained:
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
    online = c.loss.distill_weight > 0 and c.loss.teacher == "online"
    cache = teacher_cache(c, clips, ctx, progress) if c.loss.distill_weight > 0 and not online else None
    if cache is not None and c.loss.teacher_center:
        cache.centre()
    steps = c.steps_per_epoch or max(1, math.ceil(n_labelled / (c.batch_size * ctx.world)))
    dataset, sampler, loader, speed_classes = _data(c, ctx, clips, len(speakers), steps, cache, online)
    teacher = None
    if online:
        from lightsv.train.teacher import OnlineTeacher

        teacher = OnlineTeacher().to(ctx.device)
        if c.loss.teacher_center:
            # the centre comes from a fixed draw of clean crops, so every rank and every resume agrees
            draw = [dataset[(i * len(clips) // 256, mix_seed(c.seed, i))][4] for i in range(256)]
            teacher.centre(torch.stack(draw).to(ctx.device))
    teacher_dim = cache.dim if cache else teacher.dim if teacher else 0

    torch.manual_seed(c.seed)
    if stage == "finetune":
        model = load_model(root_out / "model.pt")
        prepare = getattr(model, "prepare_training", None)
        if prepare is not None:  # a frozen encoder stays frozen in the second stage too
            prepare()
        model.train()
    else:
        model = build(c)
    aam = (
        AAMSoftmax(
            model.embed_dim,
            len(speakers) * speed_classes,
            c.loss.margin,
            c.loss.scale,
            c.loss.easy_margin,
            c.loss.subcenters,
        )
        if c.loss.aam_weight > 0 and c.spoof is None
        else None
    )
    distill = DistillLoss(model.embed_dim, teacher_dim, c.loss.projection) if teacher_dim else None
    cm_teacher = spoof_teacher(c, model)
    objective = Objective(
        model,
        aam,
        distill,
        c.loss.aam_weight,
        c.loss.distill_weight,
        binary=c.spoof is not None,
        teacher_weight=c.spoof.teacher_weight if cm_teacher is not None and c.spoof is not None else 0.0,
    )
    if stage == "finetune" and (root_out / "heads.pt").exists():
        heads = torch.load(root_out / "heads.pt", map_location="cpu", weights_only=True)
        for name, module in (("aam", aam), ("distill", distill)):
            if module is not None and name in heads:
                module.load_state_dict(heads[name])
    objective.to(ctx.device)
    fbank = features_for(model, c.features).to(ctx.device)
    if c.augment.spec_prob > 0 and getattr(model, "input_kind", "fbank") != "fbank":
        raise ConfigError("augment.spec_prob masks filterbank features; this model takes the waveform")
    if cm_teacher is not None:
        cm_teacher.to(ctx.device)
    ddp = nn.parallel.DistributedDataParallel(objective) if ctx.world > 1 else objective

    params = [p for p in objective.parameters() if p.requires_grad]
    optimizer, scheduler = _optimizer(c, params, steps)

    state: dict[str, Any] = {
        "epoch": 0,
        "batch": 0,
        "step": 0,
        "elapsed": 0.0,
        "best_eer": None,
        "best_step": None,
        "stale": 0,
        "history": [],
        "stopped": None,
    }
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
        log.info(
            "%s: %d labelled clips of %d %s, %d unlabeled; %s with %d parameters (%d trainable); %d steps/epoch x %d",
            stage,
            n_labelled,
            len(speakers),
            "classes" if c.spoof is not None else "speakers",
            len(clips) - n_labelled,
            c.model.name,
            params_count,
            sum(p.numel() for p in model.parameters() if p.requires_grad),
            steps,
            c.epochs,
        )
    resumed_elapsed = state["elapsed"]

    dev_entries = spoof_entries(c.spoof, c.data.root, "dev") if c.spoof is not None else []
    asv = None
    if c.spoof is not None and c.spoof.asv is not None:
        # the ASV half of the t-DCF: scored once per experiment by a fixed speaker model
        asv_file = out / "asv_scores.json"
        if not asv_file.exists() and ctx.main:
            asv_file.write_text(json.dumps(asv_scores(dev_entries, c.spoof.asv)))
        ctx.barrier()
        asv = json.loads(asv_file.read_text())

    def dev_result(bootstrap: int | None = 0, manifest: str | None = None) -> dict:
        if c.spoof is not None:
            bootstrap = c.eval.bootstrap if bootstrap is None else bootstrap
            return evaluate_cm(model, dev_entries, c.features, c.eval.max_seconds, asv, bootstrap)
        return evaluate(
            model,
            c.data.trials or "",  # only called when there are trials (has_dev)
            c.data.trials_root or c.data.root,
            manifest=manifest,
            features=c.features,
            eval_config=c.eval,
            bootstrap=bootstrap,
            ctx=ctx,
        )

    has_dev = bool(c.data.trials) or c.spoof is not None

    def save_checkpoint():
        if not ctx.main:
            return
        path = out / "checkpoints" / f"step_{state['step']:07d}.pt"
        torch.save(
            {
                "objective": objective.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "state": state,
                "rng": torch.get_rng_state(),
                "config": dataclasses.asdict(config),
            },
            path.with_suffix(".tmp"),
        )
        os.replace(path.with_suffix(".tmp"), path)
        for old in _checkpoints(out)[: -c.keep_checkpoints]:
            old.unlink()

    def sync_buffers():
        # DDP copies rank 0's buffers at the start of each forward, so after the last step every
        # rank holds batch-norm statistics of its own batch; evaluation and saving need one model
        if ctx.world > 1:
            for buffer in objective.buffers():
                dist.broadcast(buffer.data, 0)

    def dev_check(tag: str) -> float | None:
        sync_buffers()
        if not has_dev:
            return None
        result = dev_result(bootstrap=0)
        eer = result["overall"]["eer"]
        if state["best_eer"] is None or eer < state["best_eer"]:
            state.update(best_eer=eer, best_step=state["step"], stale=0)
            if ctx.main:
                save_model(model, out / "best.pt", dev_eer=eer, step=state["step"], epoch=state["epoch"])
                torch.save(
                    {"aam": aam.state_dict() if aam else {}, "distill": distill.state_dict() if distill else {}},
                    out / "heads.pt",
                )
        else:
            state["stale"] += 1
        log.info(
            "%s: dev EER %.2f%% minDCF %.3f (best %.2f%% at step %d)",
            tag,
            eer,
            result["overall"]["min_dcf"],
            state["best_eer"],
            state["best_step"],
        )
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
        for wav, labels, targets, weights, clean in bar:
            if teacher is not None:
                targets = teacher.target(clean.to(ctx.device))
                weights = torch.ones(len(targets))
            if aam is not None:
                aam.margin = margin_at(epoch + state["batch"] / steps, c.loss.margin, c.loss.margin_warmup)
            with torch.no_grad():
                feats, _ = fbank(wav.to(ctx.device))
                if cm_teacher is not None:
                    targets, weights = cm_teacher(feats)[:, 0], torch.ones(len(feats))
                if c.augment.spec_prob > 0:  # after the teacher: it judges the audio, not the masks
                    seed = mix_seed(c.seed, epoch, state["batch"], ctx.rank, 0x5EC)
                    feats = spec_augment(feats, c.augment, torch.Generator().manual_seed(seed))
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
                log.info(
                    "%s epoch %d batch %d/%d: loss %.4f %s %.4f acc %.3f distill %.4f lr %.2e",
                    stage,
                    epoch + 1,
                    state["batch"],
                    steps,
                    m[0],
                    "bce" if c.spoof is not None else "aam",
                    m[1],
                    m[2],
                    m[3],
                    scheduler.get_last_lr()[0],
                )
            if over_budget():
                state["stopped"] = "time budget"
                break
        state["elapsed"] = resumed_elapsed + time.monotonic() - started
        finished = state["batch"] >= steps
        means = (sums / max(count, 1)).tolist()
        entry = {
            "epoch": epoch + 1,
            "step": state["step"],
            "loss": means[0],
            "aam": means[1],
            "accuracy": means[2],
            "distill": means[3],
            "minutes": state["elapsed"] / 60.0,
        }
        if finished:
            state["epoch"] += 1
            state["batch"] = 0
        if finished and (state["epoch"] % c.eval.every == 0 or state["epoch"] == c.epochs) or state["stopped"]:
            entry["dev_eer"] = dev_check(
                f"epoch {epoch + 1}" + ("" if finished else f" (stopped at batch {state['batch']})")
            )
            if c.patience and state["stale"] >= c.patience:
                state["stopped"] = f"no dev improvement in {c.patience} evaluations"
        state["history"].append(entry)
        save_checkpoint()
        ctx.barrier()
    if state["stopped"]:
        log.info("stopped: %s", state["stopped"])
    sync_buffers()

    if has_dev and (out / "best.pt").exists():
        model = load_model(out / "best.pt").to(ctx.device)
    model.eval()
    results = {
        "stage": stage,
        "model": c.model.name,
        "params": sum(p.numel() for p in model.parameters()),
        "steps": state["step"],
        "best_step": state["best_step"],
        "minutes": state["elapsed"] / 60.0,
        "stopped": state["stopped"],
        "history": state["history"],
    }
    if has_dev:
        result = dev_result(bootstrap=None, manifest=c.data.manifest)
        results["dev"] = {k: v for k, v in result.items() if k not in ("scores", "labels")}
        if c.spoof is not None and ctx.main:
            det_plot(
                {"countermeasure": (result["scores"], result["labels"])},
                out / "det.png",
                title="dev (bona fide vs spoof)",
            )
    if ctx.main:
        extra = {"dev_eer": results.get("dev", {}).get("overall", {}).get("eer")}
        save_model(
            model,
            out / "model.pt",
            training_config=dataclasses.asdict(config),
            stage=stage,
            steps=state["step"],
            eer=extra["dev_eer"],
            min_dcf=results.get("dev", {}).get("overall", {}).get("min_dcf"),
        )
        if not (out / "heads.pt").exists():
            torch.save(
                {"aam": aam.state_dict() if aam else {}, "distill": distill.state_dict() if distill else {}},
                out / "heads.pt",
            )
        results["size_bytes"] = (out / "model.pt").stat().st_size
        (out / "results.json").write_text(json.dumps(results, indent=2))
        summary = results.get("dev", {}).get("overall")
        if summary:
            log.info(
                "final: dev EER %.2f%% (95%% CI %.2f-%.2f) minDCF %.3f; model %s",
                summary["eer"],
                *summary["eer_ci95"],
                summary["min_dcf"],
                out / "model.pt",
            )
    ctx.barrier()
    return Trained(model, results, out)
