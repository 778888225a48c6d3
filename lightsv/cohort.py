"""AS-norm cohorts saved as files, with the model they belong to and thresholds for their scores.

    save("cohort.npz", embeddings, model_id=v.model_id, calibration=cal)   # cal: score_norm "asnorm"
    v.set_cohort("cohort.npz")      # or "default": the cohort shipped for the shipped model

A cohort is a set of impostor embeddings; AS-norm scores are on their own scale, so a cohort is only
useful with thresholds calibrated on AS-norm scores of the same model and cohort. The file carries
both, and the model id: a cohort made with one model says nothing about another model's scores.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from lightsv.errors import CheckpointError, ConfigError

DEFAULT_COHORT = Path(__file__).parent / "assets" / "cohort.npz"
FORMAT = "lightsv-cohort"


@dataclass
class Cohort:
    embeddings: np.ndarray  # [N, D] unit rows, float32
    model_id: str
    top_n: int | None
    calibration: dict | None  # thresholds for AS-norm scores with this cohort and top_n


def top_stats(scores, top_n: int) -> tuple[np.ndarray, np.ndarray]:
    """AS-norm's statistics of cohort scores [..., N]: the mean and standard deviation of the ``top_n``
    highest along the last axis (the adaptive part: only the most similar impostors count)."""
    scores = np.asarray(scores)
    n = min(top_n, scores.shape[-1])
    top = np.partition(scores, scores.shape[-1] - n, axis=-1)[..., -n:]
    return top.mean(axis=-1), np.maximum(top.std(axis=-1), 1e-6)


def unit_rows(rows) -> np.ndarray:
    """``rows`` [N, D] as unit-length float32 rows; ConfigError unless they are finite, non-zero and
    not all the same (AS-norm would divide by a spread of zero)."""
    rows = np.asarray(rows, dtype=np.float32)
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    if not np.isfinite(rows).all() or not np.isfinite(norms).all() or not (norms > 0).all():
        raise ConfigError(
            "cohort embeddings must be finite and non-zero (it holds zero embeddings or non-finite values)"
        )
    rows = rows / norms
    if float(np.ptp(rows, axis=0).max()) < 1e-6:
        raise ConfigError("a cohort needs different embeddings: these are all the same")
    return rows


def asnorm(raw, enrolled_stats, test_stats):
    """The AS-norm score of raw cosine(s) ``raw``: each side normalised by its (mean, std) from
    :func:`top_stats`, and the two averaged, so the score stays symmetric."""
    (m1, s1), (m2, s2) = enrolled_stats, test_stats
    return 0.5 * ((raw - m1) / s1 + (raw - m2) / s2)


def save(
    path: str | os.PathLike,
    embeddings: np.ndarray,
    *,
    model_id: str,
    top_n: int | None = None,
    calibration: dict | None = None,
    **notes,
) -> Path:
    """Write a cohort file (float16 rows, which moves AS-norm scores by about 1e-3)."""
    rows = np.asarray(embeddings, dtype=np.float32)
    if rows.ndim != 2 or len(rows) < 2:
        raise ConfigError(f"a cohort needs an [N >= 2, D] embedding array, got shape {rows.shape}")
    if calibration is not None and calibration.get("score_norm") != "asnorm":
        raise ConfigError("a cohort's calibration must be made on AS-norm scores (score_norm 'asnorm')")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 2):
        raise ConfigError(f"top_n must be an integer >= 2 or None, got {top_n!r}")
    rows = unit_rows(rows)
    meta = {"format": FORMAT, "model_id": model_id, "top_n": top_n, "calibration": calibration, **notes}
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as f:  # np.savez on a name would append ".npz" to any other suffix
        np.savez(f, embeddings=rows.astype(np.float16), meta=np.array(json.dumps(meta)))
    os.replace(partial, path)  # a failed write leaves the old file whole
    return path


def write_duration(path: str | os.PathLike, duration: dict) -> Path:
    """Store a duration-aware calibration fitted on AS-norm scores with this cohort
    (:mod:`lightsv.duration`, ``as_dict()``) in the cohort file, beside its thresholds."""
    from lightsv.duration import DurationCalibration

    path = read_path(path)
    saved = read(path)
    try:  # checked before the file is replaced: a bad one would make the cohort unreadable
        DurationCalibration.from_dict(duration, "the duration calibration to write")
    except CheckpointError as err:
        raise ConfigError(str(err)) from None
    with np.load(path, allow_pickle=False) as data:
        rows, meta = data["embeddings"], json.loads(str(data["meta"]))
    calibration = dict(saved.calibration or {"score_norm": "asnorm", "top_n": saved.top_n})
    calibration["duration"] = duration
    notes = {k: v for k, v in meta.items() if k not in ("format", "model_id", "top_n", "calibration")}
    return save(path, rows, model_id=saved.model_id, top_n=saved.top_n, calibration=calibration, **notes)


def names_a_file(source) -> bool:
    """Whether ``source`` names a cohort file ("default" or a ``.npz`` path) rather than a clip."""
    return isinstance(source, (str, os.PathLike)) and (str(source) == "default" or str(source).endswith(".npz"))


def read_path(path: str | os.PathLike) -> Path:
    """The file ``path`` names ("default": the shipped cohort)."""
    return DEFAULT_COHORT if str(path) == "default" else Path(path)


def read(path: str | os.PathLike, model_id: str | None = None) -> Cohort:
    """The cohort in ``path`` ("default": the shipped one); CheckpointError when it is not a cohort
    file or was made with another model than ``model_id``."""
    path = read_path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such cohort file")
    try:  # our own handle: np.load leaves its file open when a truncated archive fails to parse
        with open(path, "rb") as f, np.load(f, allow_pickle=False) as saved:
            rows = saved["embeddings"].astype(np.float32)
            meta = json.loads(str(saved["meta"]))
    except Exception as exc:  # a zip, a pickle, a truncated file: all say the same to the user
        raise CheckpointError(f"{path}: not a lightsv cohort file ({type(exc).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT or rows.ndim != 2 or len(rows) < 2:
        raise CheckpointError(f"{path}: not a lightsv cohort file")
    if not np.isfinite(rows).all():
        raise CheckpointError(f"{path}: the cohort holds non-finite embeddings")
    if model_id is not None and meta.get("model_id") != model_id:
        raise CheckpointError(
            f"{path}: cohort made with model {meta.get('model_id')}, not this model ({model_id}); "
            "build one with this model (recipes/voxceleb/local/make_cohort.py)"
        )
    try:
        rows = unit_rows(rows)
    except ConfigError as err:
        raise CheckpointError(f"{path}: {err}") from None
    top_n, calibration = meta.get("top_n"), meta.get("calibration")
    if top_n is not None and (isinstance(top_n, bool) or not isinstance(top_n, int) or top_n < 2):
        raise CheckpointError(f"{path}: bad top_n {top_n!r} (an integer >= 2, or null)")
    if calibration is not None and not isinstance(calibration, dict):
        raise CheckpointError(f"{path}: the cohort's calibration is a {type(calibration).__name__}, not a mapping")
    if calibration is not None and calibration.get("top_n", top_n) != top_n:
        raise CheckpointError(
            f"{path}: its calibration was made with top_n {calibration.get('top_n')!r}, the file says {top_n!r}"
        )
    return Cohort(rows, str(meta.get("model_id")), top_n, calibration)
