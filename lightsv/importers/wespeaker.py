"""WeSpeaker ResNet (e.g. voxceleb_resnet34 / resnet34_LM releases) -> lightsv ``resnet34`` / ``resnet18``.

Reads the release directory: ``config.yaml`` (plain YAML) and ``avg_model.pt`` (a state dict, read
weights-only). The pipeline reproduced is WeSpeaker's inference: samples scaled to int16, Kaldi
fbank with a Hamming window (torchaudio.compliance.kaldi, dither off), mean normalisation per
utterance, then the ResNet with temporal statistics pooling (unbiased variance) and one embedding
layer. The training head (``projection.*``) is dropped.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import yaml

from lightsv.errors import CheckpointError
from lightsv.features import FbankConfig
from lightsv.importers.weights import load_state, move, sha256
from lightsv.models import build_model

#: WeSpeaker model name -> (lightsv model, residual blocks per stage); all BasicBlock ResNets.
RESNETS = {"ResNet18": ("resnet18", (2, 2, 2, 2)), "ResNet34": ("resnet34", (3, 4, 6, 3))}
MODEL_ARGS = {"feat_dim", "embed_dim", "pooling_func", "two_emb_layer"}


def load(source: Path, checkpoint: str = "avg_model.pt"):
    """(model, extra) from a WeSpeaker release directory (or its ``avg_model.pt``, config.yaml beside it)."""
    directory = source.parent if source.is_file() else source
    ckpt = source if source.is_file() else source / checkpoint
    config_path = directory / "config.yaml"
    if not directory.is_dir():
        raise CheckpointError(f"{source}: expected WeSpeaker's release directory (config.yaml, {checkpoint})")
    if not config_path.is_file():
        raise CheckpointError(f"{config_path}: missing (WeSpeaker's config.yaml)")
    try:
        config = yaml.safe_load(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise CheckpointError(f"{config_path}: cannot be read as YAML ({type(err).__name__})") from None
    if not isinstance(config, dict) or "model" not in config:
        raise CheckpointError(f"{config_path}: not a WeSpeaker config (no 'model' entry)")
    name, options = _resnet(config, config_path)
    features = _features(config, config_path)
    if options["feat_dim"] != features.n_mels:
        raise CheckpointError(
            f"{config_path}: model_args.feat_dim {options['feat_dim']} != fbank num_mel_bins {features.n_mels}"
        )
    model = build_model(name, **options)
    state = load_state(ckpt, "WeSpeaker avg_model.pt")
    if any(k.startswith("module.") for k in state):  # saved from DistributedDataParallel
        state = {k.removeprefix("module."): v for k, v in state.items()}
    move(state, _names(state, options["layers"]), model, str(ckpt))
    model.eval()
    extra = {
        "features": dataclasses.asdict(features),
        "imported_from": {
            "toolkit": "wespeaker",
            "model": config["model"],
            "source": str(directory),
            "sha256": {"config.yaml": sha256(config_path), ckpt.name: sha256(ckpt)},
        },
    }
    return model, extra


def _resnet(config: dict, where: Path) -> tuple[str, dict]:
    model = config["model"]
    if model not in RESNETS:
        raise CheckpointError(f"{where}: model {model!r}; lightsv imports WeSpeaker's {', '.join(RESNETS)}")
    args = config.get("model_args") or {}
    unknown = sorted(set(args) - MODEL_ARGS)
    if unknown:
        raise CheckpointError(f"{where}: model_args sets {', '.join(unknown)}, which lightsv does not reproduce")
    if args.get("pooling_func", "TSTP") != "TSTP":
        raise CheckpointError(f"{where}: pooling_func {args['pooling_func']!r}; lightsv reproduces TSTP")
    if args.get("two_emb_layer", True):  # WeSpeaker's ResNet factories default to two layers
        raise CheckpointError(f"{where}: two_emb_layer is on; lightsv reproduces WeSpeaker ResNets with one (false)")
    feat_dim = int(args.get("feat_dim", 40))
    if feat_dim % 8:
        raise CheckpointError(f"{where}: feat_dim {feat_dim} is not a multiple of 8 (WeSpeaker's pooling truncates)")
    name, layers = RESNETS[model]
    options = {
        "feat_dim": feat_dim,
        "embed_dim": int(args.get("embed_dim", 128)),
        "base_width": 32,  # m_channels, fixed by WeSpeaker's ResNet factories
        "layers": layers,
        "pooling": "tstp",
    }
    return name, options


def _features(config: dict, where: Path) -> FbankConfig:
    if config.get("frontend", "fbank") != "fbank":
        raise CheckpointError(f"{where}: frontend {config['frontend']!r}; lightsv reproduces WeSpeaker's fbank")
    dataset = config.get("dataset_args") or {}
    fbank = dataset.get("fbank_args") or {}
    unknown = sorted(set(fbank) - {"num_mel_bins", "frame_shift", "frame_length", "dither"})
    if unknown:
        raise CheckpointError(f"{where}: fbank_args sets {', '.join(unknown)}, which lightsv does not reproduce")
    cmvn = dataset.get("cmvn_args") or {}
    if dataset.get("cmvn", True) is False or cmvn.get("norm_mean", True) is False or cmvn.get("norm_var", False):
        raise CheckpointError(f"{where}: cmvn settings {cmvn!r}; lightsv reproduces mean normalisation only")
    # WeSpeaker's inference: torchaudio.compliance.kaldi.fbank(wav * 2**15, window_type="hamming",
    # dither=0) with Kaldi's other defaults (20 Hz to Nyquist, pre-emphasis 0.97, DC removal, 512-point FFT)
    return FbankConfig(
        style="kaldi",
        n_mels=int(fbank.get("num_mel_bins", 80)),
        frame_length_ms=float(fbank.get("frame_length", 25)),
        frame_shift_ms=float(fbank.get("frame_shift", 10)),
        window="hamming",
    )


def _names(state: dict, layers: tuple[int, ...]) -> dict[str, str | None]:
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names: dict[str, str | None] = {"conv1.weight": "stem.0.weight"}
    names.update({f"bn1.{p}": f"stem.1.{p}" for p in bn})
    flat = 0
    for stage, depth in enumerate(layers, start=1):
        for i in range(depth):
            sb, ours = f"layer{stage}.{i}", f"blocks.{flat}"
            for conv, norm in (("conv1", "bn1"), ("conv2", "bn2")):
                names[f"{sb}.{conv}.weight"] = f"{ours}.{conv}.weight"
                names.update({f"{sb}.{norm}.{p}": f"{ours}.norm{norm[-1]}.{p}" for p in bn})
            if f"{sb}.shortcut.0.weight" in state or (stage > 1 and i == 0):
                names[f"{sb}.shortcut.0.weight"] = f"{ours}.shortcut.0.weight"
                names.update({f"{sb}.shortcut.1.{p}": f"{ours}.shortcut.1.{p}" for p in bn})
            flat += 1
    names["seg_1.weight"], names["seg_1.bias"] = "embed.weight", "embed.bias"
    # the training head (ArcMargin and friends): not part of the embedding
    names.update({k: None for k in state if k.startswith("projection.")})
    return {k: v for k, v in names.items() if not (k.endswith("num_batches_tracked") and k not in state)}
