"""Reading another toolkit's weight files safely and moving them onto lightsv names, strictly."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch

from lightsv.errors import CheckpointError


def load_state(path: Path, what: str) -> dict[str, torch.Tensor]:
    """The tensors of a torch file, read with weights_only (no code runs); CheckpointError otherwise."""
    if not path.is_file():
        raise CheckpointError(f"{path}: missing ({what})")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for files it cannot read safely
        raise CheckpointError(f"{path}: cannot be read as a weights-only torch file ({type(err).__name__})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: expected a dict of tensors ({what}), got {type(state).__name__}")
    return state


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def move(
    source: Mapping[str, torch.Tensor], names: Mapping[str, str | None], model: torch.nn.Module, origin: str
) -> None:
    """Load `source` into `model` through `names` (source key -> lightsv key, None: dropped on purpose).

    Every source key must be named and every model key filled, with equal shapes; otherwise the error
    lists what differs (the sign of another architecture or toolkit), and nothing is loaded.
    """
    target = model.state_dict()
    unknown = sorted(k for k in source if k not in names)
    absent = sorted(k for k in names if k not in source)
    mapped = {name: v for k, v in source.items() if (name := names.get(k)) is not None}
    unfilled = sorted(k for k in target if k not in mapped)
    shapes = [
        f"{k} {tuple(v.shape)} vs {tuple(target[k].shape)}"
        for k, v in mapped.items()
        if k in target and tuple(v.shape) != tuple(target[k].shape)
    ]
    problems = [
        (what, keys)
        for what, keys in (
            ("unexpected keys", unknown),
            ("missing keys", absent),
            ("wrong shapes", shapes),
            ("unfilled lightsv weights", unfilled),
        )
        if keys
    ]
    if problems:
        detail = "; ".join(f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for what, keys in problems)
        raise CheckpointError(f"{origin}: does not match the architecture its config describes ({detail})")
    model.load_state_dict({k: v.to(target[k].dtype) for k, v in mapped.items()})
