"""SpeechBrain ECAPA-TDNN (e.g. speechbrain/spkrec-ecapa-voxceleb) -> lightsv ``ecapa_tdnn``.

Reads the release directory: ``hyperparams.yaml`` (as data, see :mod:`lightsv.importers.hyperyaml`),
``embedding_model.ckpt`` and, optionally, ``mean_var_norm_emb.ckpt``. The pipeline reproduced is
``EncoderClassifier.encode_batch``: ``Fbank`` -> ``InputNormalization`` (sentence mean) ->
``ECAPA_TDNN``, i.e. lightsv's FbankConfig(style="speechbrain") and an EcapaTdnn with reflection
padding, a biased embedding layer and SpeechBrain's variance floor.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from lightsv.errors import CheckpointError
from lightsv.features import FbankConfig
from lightsv.importers.hyperyaml import HyperYaml
from lightsv.importers.weights import load_state, move, sha256
from lightsv.models import build_model

FBANK = "speechbrain.lobes.features.Fbank"
NORM = "speechbrain.processing.features.InputNormalization"
ECAPA = "speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN"
# Arguments of SpeechBrain's classes (1.x) and the values lightsv reproduces; anything else is refused.
FBANK_FIXED = {"deltas": False, "context": False, "filter_shape": "triangular", "sample_rate": 16000}
ECAPA_FIXED = {"kernel_sizes": [5, 3, 3, 3, 1], "dilations": [1, 2, 3, 4, 1], "global_context": True}
ECAPA_DEFAULTS = {
    "lin_neurons": 192,
    "channels": [512, 512, 512, 512, 1536],
    "attention_channels": 128,
    "res2net_scale": 8,
    "se_channels": 128,
}
IGNORED = {"device", "dropout", "requires_grad", "param_change_factor", "param_rand_factor"}  # no effect at inference


def load(source: Path, embedding_norm: bool = False):
    """(model, extra) from a SpeechBrain speaker-recognition release directory.

    embedding_norm: also apply ``mean_var_norm_emb.ckpt`` (what ``encode_batch(normalize=True)``
    does), folded into the embedding layer. SpeechBrain's own verification (``verify_batch``) does not
    apply it, so neither does lightsv by default.
    """
    if not source.is_dir():
        raise CheckpointError(
            f"{source}: expected SpeechBrain's release directory (hyperparams.yaml, embedding_model.ckpt)"
        )
    hparams = HyperYaml(_require(source / "hyperparams.yaml", "SpeechBrain's hyperparams.yaml"))
    features = _features(hparams)
    config = _ecapa_config(hparams, features.n_mels)
    model = build_model("ecapa_tdnn", **config)
    ckpt = source / "embedding_model.ckpt"
    state = load_state(_require(ckpt, "SpeechBrain's embedding_model.ckpt"), "SpeechBrain embedding_model.ckpt")
    move(reorder_res2(state, config), ecapa_names(state, config), model, str(ckpt))
    files = {"hyperparams.yaml": sha256(source / "hyperparams.yaml"), "embedding_model.ckpt": sha256(ckpt)}
    norm_file = source / "mean_var_norm_emb.ckpt"
    if embedding_norm:
        norm = hparams.object("mean_var_norm_emb", (NORM,))
        std_norm = norm.get("std_norm", True)  # InputNormalization's default
        _fold_embedding_norm(model, _require(norm_file, "embedding_norm=True needs mean_var_norm_emb.ckpt"), std_norm)
        files["mean_var_norm_emb.ckpt"] = sha256(norm_file)
    model.eval()
    extra = {
        "features": dataclasses.asdict(features),
        "imported_from": {
            "toolkit": "speechbrain",
            "source": str(source),
            "sha256": files,
            "embedding_norm": embedding_norm,
        },
    }
    return model, extra


def _require(path: Path, what: str) -> Path:
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    return path


def _features(hparams: HyperYaml) -> FbankConfig:
    args = hparams.object("compute_features", (FBANK,))
    for key, value in FBANK_FIXED.items():
        if key in args and args[key] != value:
            raise CheckpointError(
                f"{hparams.path}: compute_features.{key} is {args[key]!r}; lightsv reproduces {value!r}"
            )
    known = set(FBANK_FIXED) | IGNORED | {"n_mels", "f_min", "f_max", "n_fft", "win_length", "hop_length"}
    known |= {"left_frames", "right_frames"}  # used only with context=True
    _refuse_unknown(hparams, "compute_features", args, known)
    norm = hparams.object("mean_var_norm", (NORM,))
    if norm.get("norm_type", "global") != "sentence" or norm.get("std_norm", True) is not False:
        raise CheckpointError(
            f"{hparams.path}: mean_var_norm is norm_type={norm.get('norm_type', 'global')!r}, "
            f"std_norm={norm.get('std_norm', True)!r}; lightsv reproduces norm_type: sentence, std_norm: False"
        )
    sample_rate = 16000
    return FbankConfig(
        style="speechbrain",
        sample_rate=sample_rate,
        n_mels=int(args.get("n_mels", 40)),
        n_fft=int(args.get("n_fft", 400)),
        frame_length_ms=float(args.get("win_length", 25)),
        frame_shift_ms=float(args.get("hop_length", 10)),
        low_freq=float(args.get("f_min", 0)),
        high_freq=float(args.get("f_max") or sample_rate // 2),
        window="hamming",
        preemphasis=0.0,
        remove_dc=False,
        mean_norm=True,
        log_floor=1e-10,
        top_db=80.0,
    )


def _ecapa_config(hparams: HyperYaml, n_mels: int) -> dict:
    args = hparams.object("embedding_model", (ECAPA,))
    known = set(ECAPA_FIXED) | set(ECAPA_DEFAULTS) | IGNORED | {"input_size", "activation", "groups"}
    _refuse_unknown(hparams, "embedding_model", args, known)
    return ecapa_config(args, n_mels, str(hparams.path))


def ecapa_config(args: dict, n_mels: int, where: str) -> dict:
    """lightsv EcapaConfig options for the arguments of SpeechBrain's ECAPA_TDNN (3D-Speaker's is a copy)."""
    for key, value in ECAPA_FIXED.items():
        if key in args and args[key] != value:
            raise CheckpointError(
                f"{where}: embedding_model.{key} is {args[key]!r}; lightsv's ECAPA-TDNN has {value!r}"
            )
    if int(args.get("input_size", -1)) != n_mels:
        raise CheckpointError(f"{where}: embedding_model.input_size {args.get('input_size')!r} != n_mels {n_mels}")
    if any(g != 1 for g in args.get("groups", [1] * 5)):
        raise CheckpointError(f"{where}: embedding_model.groups {args['groups']!r}; lightsv has ungrouped convolutions")
    activation = args.get("activation")
    if activation is not None and getattr(activation, "target", None) != "torch.nn.ReLU":
        raise CheckpointError(f"{where}: embedding_model.activation is not torch.nn.ReLU")
    a = {**ECAPA_DEFAULTS, **{k: v for k, v in args.items() if k in ECAPA_DEFAULTS}}
    channels = a["channels"]
    if not (isinstance(channels, list) and len(channels) == 5 and len(set(channels[:4])) == 1):
        raise CheckpointError(
            f"{where}: embedding_model.channels {channels!r}; "
            "lightsv's ECAPA-TDNN has 4 equal widths, then the aggregation's"
        )
    return {
        "feat_dim": n_mels,
        "channels": int(channels[0]),
        "mfa_channels": int(channels[4]),
        "embed_dim": int(a["lin_neurons"]),
        "scale": int(a["res2net_scale"]),
        "se_channels": int(a["se_channels"]),
        "attention_channels": int(a["attention_channels"]),
        "padding_mode": "reflect",
        "embed_norm": False,
        "stats_eps": 1e-12,
    }


def _refuse_unknown(hparams: HyperYaml, key: str, args: dict, known: set[str]) -> None:
    unknown = sorted(set(args) - known)
    if unknown:
        raise CheckpointError(f"{hparams.path}: {key} sets {', '.join(unknown)}, which lightsv does not reproduce")


def ecapa_names(state: dict, c: dict) -> dict[str, str | None]:
    """SpeechBrain key -> lightsv key for every tensor the checkpoint should hold."""
    bn = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
    names: dict[str, str | None] = {}

    def tdnn(sb: str, ours: str) -> None:
        names[f"{sb}.conv.conv.weight"] = f"{ours}.conv.weight"
        names[f"{sb}.conv.conv.bias"] = f"{ours}.conv.bias"
        names.update({f"{sb}.norm.norm.{p}": f"{ours}.norm.{p}" for p in bn})

    tdnn("blocks.0", "layer1")
    for i in (1, 2, 3):
        sb, ours = f"blocks.{i}", f"layer{i + 1}"
        tdnn(f"{sb}.tdnn1", f"{ours}.conv_in")
        tdnn(f"{sb}.tdnn2", f"{ours}.conv_out")
        for j in range(c["scale"] - 1):
            tdnn(f"{sb}.res2net_block.blocks.{j}", f"{ours}.res2.convs.{j}")
        for p in ("weight", "bias"):
            names[f"{sb}.se_block.conv1.conv.{p}"] = f"{ours}.se.reduce.{p}"
            names[f"{sb}.se_block.conv2.conv.{p}"] = f"{ours}.se.expand.{p}"
    tdnn("mfa", "mfa")
    names["asp.tdnn.conv.conv.weight"], names["asp.tdnn.conv.conv.bias"] = (
        "pool.attention.0.weight",
        "pool.attention.0.bias",
    )
    names.update({f"asp.tdnn.norm.norm.{p}": f"pool.attention.2.{p}" for p in bn})
    names["asp.conv.conv.weight"] = "pool.attention.4.weight"
    names["asp.conv.conv.bias"] = None  # a per-channel constant before a softmax over time changes nothing
    names.update({f"asp_bn.norm.{p}": f"pool_norm.{p}" for p in bn})
    names["fc.conv.weight"], names["fc.conv.bias"] = "embed.weight", "embed.bias"
    # num_batches_tracked is absent from checkpoints saved without it (track_running_stats quirks)
    return {k: v for k, v in names.items() if not (k.endswith("num_batches_tracked") and k not in state)}


def reorder_res2(state: dict, c: dict) -> dict:
    """SpeechBrain's Res2Net passes its first chunk through and puts it first; lightsv's passes the
    last one through and puts it last. The same function up to a channel rotation: the rows of the
    1x1 layer before (tdnn1) and the input columns of the one after (tdnn2) rotate by one chunk."""
    out = dict(state)
    width = c["channels"] // c["scale"]

    def rotate(key: str, dim: int) -> None:
        if key in out and out[key].dim() > dim and out[key].shape[dim] == c["channels"]:
            out[key] = torch.roll(out[key], -width, dims=dim)

    for i in (1, 2, 3):
        for p in ("conv.conv.weight", "conv.conv.bias", "norm.norm.weight", "norm.norm.bias"):
            rotate(f"blocks.{i}.tdnn1.{p}", 0)
        for p in ("running_mean", "running_var"):
            rotate(f"blocks.{i}.tdnn1.norm.norm.{p}", 0)
        rotate(f"blocks.{i}.tdnn2.conv.conv.weight", 1)
    out = {k: v.squeeze(-1) if k == "fc.conv.weight" else v for k, v in out.items()}  # Conv1d k=1 -> Linear
    return out


def _fold_embedding_norm(model: torch.nn.Module, path: Path, std_norm: bool) -> None:
    """(W x + b - mean) / std as one linear layer: SpeechBrain's global InputNormalization of embeddings."""
    stats = load_state(path, "SpeechBrain mean_var_norm_emb.ckpt")
    mean, std = stats.get("glob_mean"), stats.get("glob_std")
    embed = model.get_submodule("embed")
    assert isinstance(embed, torch.nn.Linear)  # EcapaTdnn's embedding layer
    dim = embed.out_features
    if not isinstance(mean, torch.Tensor) or mean.numel() != dim:
        raise CheckpointError(f"{path}: expected glob_mean of {dim} values (InputNormalization statistics)")
    with torch.no_grad():
        embed.bias.sub_(mean.reshape(-1).to(embed.bias.dtype))
        if std_norm:
            if not isinstance(std, torch.Tensor) or std.numel() != dim:
                raise CheckpointError(f"{path}: expected glob_std of {dim} values (std_norm is on)")
            scale = 1.0 / std.reshape(-1).clamp(min=1e-10).to(embed.bias.dtype)  # its epsilon
            embed.weight.mul_(scale[:, None])
            embed.bias.mul_(scale)
