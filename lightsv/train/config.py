"""Recipe configuration: `TrainConfig` and its sections as dataclasses, read from plain YAML.

`load_config(path, overrides)` checks every key and type (a ConfigError names the offending one),
applies `key.sub=value` overrides, and resolves input paths relative to the config file.
"""

from __future__ import annotations

import dataclasses
import json
import os
import types
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field

import yaml
from torch import nn

import lightsv.peft  # noqa: F401  (registers the tuners a config may name)
from lightsv import transform
from lightsv.errors import ConfigError
from lightsv.features import FbankConfig
from lightsv.models import build_model
from lightsv.spoof.data import SpoofConfig
from lightsv.train.augment import AugmentConfig
from lightsv.tuners import TUNERS, replay


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
    subcenters: int = 1  # > 1: sub-center AAM, K centres per class
    margin_warmup: tuple[float, float] = (0.0, 0.0)  # epochs: margin 0 until the first, full from the second
    distill_weight: float = 0.0
    teacher: str = "cache"  # cache: windows embedded once; online: the teacher embeds every crop as drawn
    teacher_cache: str | None = None  # npz, built on first use when missing (teacher: cache)
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
    # A lightsv checkpoint (e.g. from `lightsv import`, or an earlier run) to start from: its architecture,
    # weights, filterbank and transformation module; `model`, `features` and `transform` then come from it
    # (a config that sets different ones is refused).
    init_from: str | None = None
    # True: the `features` set here replace the checkpoint's filterbank and its weights are trained on
    # them (e.g. sherpa-onnx's, whose mel bank stops at 7.6 kHz); the new model carries the new filterbank.
    refit_features: bool = False
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    transform: TransformConfig | None = None
    tuners: list[dict] = field(default_factory=list)  # [{kind: lora|adapter|prompt|prefix, options: {...}}]
    spoof: SpoofConfig | None = None  # a countermeasure (binary bona fide / spoof objective) instead of speakers
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
    crop_min_seconds: float = 0.0  # > 0: each batch's crop length is drawn from [this, crop_seconds]
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
        return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))
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


def config_from_dict(data: dict, overrides: Sequence[str] = ()) -> TrainConfig:
    """A TrainConfig from plain data plus `key.sub=value` overrides (values parsed as YAML scalars)."""
    data = json.loads(json.dumps(data or {}))  # a private copy of plain data
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected key=value")
        _set(data, key.strip(), yaml.safe_load(raw))
    if isinstance(data, dict) and data.get("init_from") is not None:
        data = _inherit(data)
    if isinstance(data, dict) and (data.get("model") or {}).get("name") == "spoof_side":
        data = _trunk_features(data)
    config = _from_dict(TrainConfig, data)
    check(config)
    return config


def _checkpoint_features(path, key: str) -> tuple[dict, dict]:
    """(checkpoint, the filterbank it was trained on as plain data); ConfigError naming `key` if unreadable."""
    from lightsv.checkpoint import read_checkpoint
    from lightsv.errors import CheckpointError
    from lightsv.verifier import _features

    try:
        checkpoint = read_checkpoint(path)
        return checkpoint, dataclasses.asdict(_features(checkpoint.get("extra") or {}, str(path)))
    except CheckpointError as err:
        raise ConfigError(f"{key}: {err}") from None


def _features_set(data: dict, features: dict) -> tuple[dict, list[str]]:
    """(the `features` keys the config sets, parsed; those of them that differ from `features`)."""
    set_here = data.get("features") or {}
    parsed = dataclasses.asdict(_from_dict(FbankConfig, set_here, "features"))
    given = {k: parsed[k] for k in set_here}
    return given, sorted(k for k in given if given[k] != features[k])


def _inherit(data: dict) -> dict:
    """`data` with the model and filterbank of its `init_from` checkpoint filled in."""
    path = data["init_from"]
    if not isinstance(path, str):
        raise ConfigError(f"init_from: expected a checkpoint path, got {path!r}")
    checkpoint, features = _checkpoint_features(path, "init_from")
    model = {"name": checkpoint["model"], "options": json.loads(json.dumps(checkpoint["config"]))}
    if "model" in data and data["model"] != model:
        raise ConfigError(f"init_from: the model comes from {path} ({model['name']}); drop the model section")
    given, differ = _features_set(data, features)
    if differ and not data.get("refit_features"):
        raise ConfigError(
            f"init_from: features.{', features.'.join(differ)} differ from the filterbank {path} was trained "
            "with; drop the features section to use its own (or set refit_features: true to train it on these)"
        )
    features = {**features, **given}
    tuners = checkpoint.get("tuners") or []
    if any(t.get("kind") != "transform" for t in tuners):
        raise ConfigError(f"init_from: {path} carries tuners (LoRA, adapters, prompts); start from a model without")
    if tuners:
        # training goes on with the transformation module the checkpoint carries (build does not re-apply it)
        carried = {k: tuners[0]["options"][k] for k in ("subsets", "share", "fusion")}
        if data.get("transform") is not None:
            given_t = dataclasses.asdict(_from_dict(TransformConfig, data["transform"], "transform"))
            if given_t != carried:
                raise ConfigError(
                    f"init_from: {path} carries the transformation module {carried}; the config asks for "
                    f"{given_t}: drop the transform section to keep the checkpoint's"
                )
        data = {**data, "transform": carried}
    return {**data, "model": model, "features": features}


def _trunk_features(data: dict) -> dict:
    """`data` with the filterbank of the speaker trunk a side countermeasure taps (lightsv.spoof.models):
    the verifier runs that trunk once for both on the speaker model's features, so the CM must learn on
    the same ones."""
    from lightsv.verifier import DEFAULT_MODEL

    trunk = ((data["model"].get("options") or {}).get("trunk")) or "default"
    path = DEFAULT_MODEL if trunk == "default" else trunk
    _, features = _checkpoint_features(path, "model.options.trunk")
    _, differ = _features_set(data, features)
    if differ:
        raise ConfigError(
            f"features.{', features.'.join(differ)} differ from the filterbank of the trunk {path}, which the "
            "side countermeasure reads: drop the features section to use the trunk's"
        )
    return {**data, "features": features}


def load_config(path: str | os.PathLike, overrides: Sequence[str] = ()) -> TrainConfig:
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
    need = [("data.root", c.data.root, True)] + [
        (f"data.{k}", getattr(c.data, k), False) for k in ("splits", "trials", "trials_root", "manifest")
    ]
    need += [(f"data.unlabeled[{i}]", p, False) for i, p in enumerate(c.data.unlabeled)]
    if c.spoof is not None:
        need += [("spoof.protocol", c.spoof.protocol, True), ("spoof.dev_protocol", c.spoof.dev_protocol, False)]
    need += [(f"augment.noise_dirs[{i}]", p, False) for i, p in enumerate(c.augment.noise_dirs)]
    need += [(f"augment.rir_dirs[{i}]", p, False) for i, p in enumerate(c.augment.rir_dirs)]
    for name, path, required in need:
        if required and not path:
            raise ConfigError(f"{name} is required")
        if path and not os.path.exists(path):
            raise ConfigError(f"{name}: {path} does not exist")
    positive = {
        "epochs": c.epochs,
        "batch_size": c.batch_size,
        "per_speaker": c.per_speaker,
        "crop_seconds": c.crop_seconds,
        "threads": c.threads,
        "optim.lr": c.optim.lr,
        "loss.scale": c.loss.scale,
        "loss.subcenters": c.loss.subcenters,
        "eval.every": c.eval.every,
        "keep_checkpoints": c.keep_checkpoints,
    }
    for name, value in positive.items():
        if value <= 0:
            raise ConfigError(f"{name} must be positive, got {value}")
    nonneg = {
        "max_minutes": c.max_minutes,
        "steps_per_epoch": c.steps_per_epoch,
        "patience": c.patience,
        "loss.aam_weight": c.loss.aam_weight,
        "loss.distill_weight": c.loss.distill_weight,
        "loss.margin": c.loss.margin,
        "unlabeled_per_batch": c.unlabeled_per_batch,
        "finetune.epochs": c.finetune.epochs,
    }
    for name, value in nonneg.items():
        if value < 0:
            raise ConfigError(f"{name} must not be negative, got {value}")
    if c.crop_min_seconds and not 0 < c.crop_min_seconds <= c.crop_seconds:
        raise ConfigError(f"crop_min_seconds must lie in (0, crop_seconds={c.crop_seconds}], got {c.crop_min_seconds}")
    for i, record in enumerate(c.tuners):
        if set(record) - {"kind", "options"} or record.get("kind") not in TUNERS:
            raise ConfigError(
                f"tuners[{i}]: expected {{kind: one of {', '.join(sorted(TUNERS))}, options: {{...}}}}, got {record!r}"
            )
        if not isinstance(record.get("options", {}), dict):
            raise ConfigError(f"tuners[{i}].options: expected a mapping, got {record['options']!r}")
    if c.loss.aam_weight == 0 and c.loss.distill_weight == 0 and c.spoof is None:
        raise ConfigError("loss: aam_weight and distill_weight are both 0; nothing to train")
    if c.loss.distill_weight > 0 and c.loss.teacher == "cache" and not c.loss.teacher_cache:
        raise ConfigError("loss.distill_weight > 0 needs loss.teacher_cache (a path; built when missing)")
    choices: dict[str, tuple[str, tuple[str, ...]]] = {
        "optim.name": (c.optim.name, ("adamw", "sgd")),
        "optim.schedule": (c.optim.schedule, ("cosine", "exponential", "constant")),
        "short_clips": (c.short_clips, ("join", "repeat")),
        "loss.teacher": (c.loss.teacher, ("cache", "online")),
        "loss.projection": (c.loss.projection, ("auto", "none", "linear")),
        "transform.fusion": (c.transform.fusion if c.transform else "sum", tuple(transform.FUSIONS)),
    }
    for name, (choice, allowed) in choices.items():
        if choice not in allowed:
            raise ConfigError(f"{name}: {choice!r} is not one of {', '.join(allowed)}")
    if c.model.options.get("feat_dim", c.features.n_mels) != c.features.n_mels:
        raise ConfigError(
            f"model.options.feat_dim ({c.model.options['feat_dim']}) != features.n_mels ({c.features.n_mels})"
        )
    c.augment.check()


def build(c: TrainConfig) -> nn.Module:
    """The backbone a config describes (or the `init_from` checkpoint's, with its weights), with the
    transformation module and tuners when configured;
    a model with `prepare_training` (e.g. lightsv.ssl's) then freezes what does not train."""
    if c.init_from is not None:
        from lightsv.checkpoint import load_model

        model = load_model(c.init_from).train()  # the imported (or earlier trained) weights
    else:
        model = build_model(c.model.name, **{"feat_dim": c.features.n_mels, **c.model.options})
    if c.transform is not None and not getattr(model, "tuners", None):
        transform.apply(model, subsets=c.transform.subsets, share=c.transform.share, fusion=c.transform.fusion)
    model = replay(model, [{"kind": r["kind"], "options": dict(r.get("options", {}))} for r in c.tuners])
    prepare = getattr(model, "prepare_training", None)
    if prepare is not None:
        prepare()
    return model
