"""Checkpoints that carry their own config: `load_model(path)` rebuilds a model from one file.

A checkpoint is a plain dict (loadable with `torch.load(weights_only=True)`): the registered model
name, its config dataclass as a dict, the tuners applied to it (replayed before the weights are
loaded), the state dict and free-form `extra` metadata (training config, calibration, ...).
"""

import dataclasses
import os
import tempfile
from pathlib import Path

import torch
from torch import nn

import lightsv.peft  # noqa: F401  (registers the adapter, prompt, prefix and lora tuners for replay)
import lightsv.transform  # noqa: F401  (registers the "transform" tuner for replay)
from lightsv.errors import CheckpointError, ConfigError
from lightsv.models import MODELS, build_model
from lightsv.tuners import replay

FORMAT = "lightsv-checkpoint"
VERSION = 1


def save_model(model: nn.Module, path: str | os.PathLike, *, half: bool = False, **extra) -> Path:
    """Write `model` and `extra` to `path` atomically (an existing file is replaced only once the new one is complete).

    half: store floating-point weights as float16, halving the file (for shipping); loading casts
    them back to the model's float32, so only the rounding of the weights changes.
    """
    name, config = getattr(model, "model_name", None), getattr(model, "config", None)
    if name not in MODELS or not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise CheckpointError("only models made by lightsv.build_model can be saved (need model_name and config)")
    state = model.state_dict()
    if half:
        state = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "model": name,
        "config": dataclasses.asdict(config),
        "tuners": list(getattr(model, "tuners", [])),
        "state_dict": state,
        "extra": extra,
    }
    return write_checkpoint(checkpoint, path)


def update_extra(path: str | os.PathLike, out: str | os.PathLike | None = None, **extra) -> Path:
    """Merge `extra` into the metadata of the checkpoint at `path` (or of a copy at `out`); weights untouched."""
    load_model(path)  # refuse to touch anything that is not a loadable checkpoint
    checkpoint = read_checkpoint(path)
    checkpoint["extra"] = {**checkpoint.get("extra", {}), **extra}
    return write_checkpoint(checkpoint, path if out is None else out)


def average_models(paths: list[str | os.PathLike], out: str | os.PathLike) -> Path:
    """Write to `out` the uniform average of the weights of the checkpoints at `paths`: a model soup
    (Wortsman et al., ICML 2022), or WeSpeaker's averaging of a run's last checkpoints.

    Averaging only makes sense for runs that left one starting point (e.g. several `init_from` cycles of
    one model): their weights lie in one basin, where the mean is a model too. The checkpoints must
    build the same model (architecture, tuners such as the transformation module) on the same
    filterbank, else CheckpointError names the one that differs. The result keeps the first one's
    training config and records `averaged_from`; integer buffers (batch-norm step counts) come from it too.
    """
    if len(paths) < 2:
        raise CheckpointError(f"averaging needs at least two checkpoints, got {len(paths)}")
    first, *rest = (read_checkpoint(p) for p in paths)
    load_model(paths[0])  # the first must build; the others are checked against it

    def identity(c: dict) -> dict:
        features = c.get("extra", {}).get("training_config", {}).get("features")
        return {"architecture": (c["model"], c["config"]), "tuners": c.get("tuners"), "filterbank": features}

    want = identity(first)
    for path, checkpoint in zip(paths[1:], rest, strict=True):
        differ = [k for k, v in identity(checkpoint).items() if v != want[k]]
        if differ:
            raise CheckpointError(f"{path}: its {differ[0]} differs from {paths[0]}'s; only runs of one model average")
        missing, unexpected, wrong = _compare(first["state_dict"], checkpoint["state_dict"])
        if missing or unexpected or wrong:
            raise CheckpointError(
                f"{path}: its weights do not match {paths[0]}'s ({(missing + unexpected + wrong)[0]})"
            )
    state = {}
    for name, value in first["state_dict"].items():
        if value.is_floating_point():
            total = sum(c["state_dict"][name].float() for c in rest) + value.float()
            state[name] = (total / len(paths)).to(value.dtype)
        else:
            state[name] = value
    # what measured the first model alone does not describe the average
    measured = ("eer", "min_dcf", "dev_eer", "stage", "steps", "step", "epoch")
    keep = {k: v for k, v in first.get("extra", {}).items() if k not in measured}
    averaged = {**first, "state_dict": state, "extra": {**keep, "averaged_from": [str(p) for p in paths]}}
    return write_checkpoint(averaged, out)


def write_checkpoint(checkpoint: dict, path: str | os.PathLike) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(checkpoint, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_checkpoint(path: str | os.PathLike) -> dict:
    """The checkpoint dict at `path`, validated; raises CheckpointError for anything else."""
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for non-checkpoints (pickle, zip, unsafe globals)
        why = (
            "it holds code or classes that safe (weights-only) loading refuses"
            if "Unsupported global" in str(err)
            else f"cannot be read as a torch file: {type(err).__name__}"
        )
        raise CheckpointError(f"{path}: not a lightsv checkpoint ({why})") from None
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a lightsv checkpoint (no '{FORMAT}' marker)")
    if checkpoint.get("version") != VERSION:
        raise CheckpointError(f"{path}: checkpoint version {checkpoint.get('version')!r}, this lightsv reads {VERSION}")
    return checkpoint


def load_model(path: str | os.PathLike, *, return_extra: bool = False):
    """Rebuild the model stored at `path` (eval mode). With `return_extra`, also return its metadata."""
    checkpoint = read_checkpoint(path)
    try:
        model = build_model(checkpoint["model"], **checkpoint["config"])
        model = replay(model, checkpoint.get("tuners", []))
    except (ConfigError, KeyError) as err:
        raise CheckpointError(f"{path}: config does not build a model: {err}") from None
    missing, unexpected, wrong = _compare(model.state_dict(), checkpoint["state_dict"])
    if missing or unexpected or wrong:
        detail = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
            if keys
        )
        raise CheckpointError(f"{path}: weights do not match its config ({detail})")
    model.load_state_dict(checkpoint["state_dict"])  # copy_ casts float16-stored weights back
    model.eval()
    return (model, checkpoint.get("extra", {})) if return_extra else model


def _compare(expected: dict, found: dict) -> tuple[list[str], list[str], list[str]]:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    wrong = [
        f"{k} {tuple(found[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in found and getattr(found[k], "shape", None) != v.shape
    ]
    return missing, unexpected, wrong
