"""The countermeasure as a product: load one (the shipped one by default), score clips, decide.

    from lightsv.spoof import Countermeasure
    cm = Countermeasure.load()                 # lightsv/assets/countermeasure.pt, or its .onnx without torch
    s = cm.score_wav(wav)                      # logit of bona fide: higher = more bona fide
    cm.is_bonafide(s)                          # against the calibrated threshold

A countermeasure file is a lightsv checkpoint (or its ONNX export) whose model has one output and
whose `calibration` was made on bona fide (label 1) / spoof (label 0) scores. The shipped one is four
side networks (their mean logit) on the shipped speaker model's frozen trunk
(`lightsv.spoof.models.SideCM`, joined by `lightsv.spoof.models.ensemble`): with
`backend="torch"` and the shipped speaker model, a verifier runs that trunk once for both.
"""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path

import numpy as np

from lightsv.audio import load
from lightsv.errors import CheckpointError, ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
DEFAULT_CM = ASSETS / "countermeasure.pt"
DEFAULT_CM_ONNX = ASSETS / "countermeasure.onnx"
MAX_SECONDS = 30.0  # longer clips are scored on their first 30 s, as in training's evaluation


def _torch_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("torch") is not None


class Countermeasure:
    """A loaded countermeasure; `threshold` is its calibrated bona fide / spoof boundary."""

    def __init__(self, backend, source: str, calibration: dict | None, threshold: float | None):
        self._backend, self.source, self.calibration = backend, source, calibration
        if threshold is None:
            if not calibration or "eer_threshold" not in calibration:
                raise ConfigError(
                    f"{source}: the countermeasure has no calibrated threshold; pass threshold= "
                    "(or calibrate it on bona fide / spoof scores)"
                )
            threshold = float(calibration["eer_threshold"])
        self.threshold = float(threshold)

    @classmethod
    def load(
        cls,
        path: str | os.PathLike | None = None,
        *,
        backend: str = "auto",
        threads: int | None = None,
        threshold: float | None = None,
    ) -> Countermeasure:
        """The countermeasure at `path` (default: the shipped one): a checkpoint (torch) or an .onnx
        export (onnxruntime, no torch); `backend="auto"` picks onnx for .onnx files or without torch."""
        if backend not in ("auto", "torch", "onnx"):
            raise ConfigError(f"backend must be auto, torch or onnx, got {backend!r}")
        onnx = backend == "onnx" or (
            backend == "auto" and ((path is not None and str(path).endswith(".onnx")) or not _torch_available())
        )
        if path is None:
            path = DEFAULT_CM_ONNX if onnx else DEFAULT_CM
            if not Path(path).is_file():
                raise CheckpointError(f"the shipped countermeasure {path} is missing from this installation")
        if onnx:
            onnx_runner = _OnnxCM(path, threads)
            return cls(onnx_runner, str(path), onnx_runner.calibration, threshold)
        torch_runner = _TorchCM(path, threads)
        return cls(torch_runner, str(path), torch_runner.extra.get("calibration"), threshold)

    @property
    def backend(self) -> str:
        return self._backend.kind

    @property
    def model(self):
        """The torch model (None on the onnx backend)."""
        return getattr(self._backend, "model", None)

    @property
    def features(self) -> dict | None:
        """The filterbank the CM reads (FbankConfig's fields), on either backend; None if unknown."""
        return self._backend.features

    @property
    def trunk_id(self) -> str | None:
        """The model id of the speaker model whose trunk the CM shares (None for a standalone CM)."""
        return self._backend.trunk_id

    def score_wav(self, wav: np.ndarray) -> float:
        """Logit of bona fide of one 16 kHz float32 waveform, scored whole (up to 30 s)."""
        return self._backend.score(np.asarray(wav, dtype=np.float32)[: int(MAX_SECONDS * 16000)])

    def score(self, clip: str | os.PathLike | np.ndarray) -> float:
        """Logit of bona fide of a file or a 16 kHz waveform."""
        return self.score_wav(load(clip) if isinstance(clip, str | os.PathLike) else clip)

    def is_bonafide(self, score: float) -> bool:
        return bool(score >= self.threshold)

    def __repr__(self) -> str:
        return f"Countermeasure({self.source!r}, backend={self.backend!r}, threshold={self.threshold:.4f})"


class _TorchCM:
    kind = "torch"

    def __init__(self, path, threads: int | None):
        import torch

        from lightsv.checkpoint import load_model
        from lightsv.runtime import check_threads

        torch.set_num_threads(check_threads(threads))
        self.model, self.extra = load_model(path, return_extra=True)
        from lightsv.features import features_for
        from lightsv.verifier import _features

        config = _features(self.extra, str(path))
        # waveform CMs (rawnet, wav2vec2) read samples: they have no filterbank to share with a verifier
        self.front_end = features_for(self.model, config)
        wav = getattr(self.model, "input_kind", "fbank") == "wav"
        self.features = None if wav else dataclasses.asdict(config)
        self.trunk_id = getattr(getattr(self.model, "config", None), "trunk_id", None) or None

    def score(self, wav: np.ndarray) -> float:
        import torch

        with torch.inference_mode():
            feats, frames = self.front_end(torch.from_numpy(wav)[None])
            return float(self.model(feats, frames)[0, 0])


class _OnnxCM:
    kind = "onnx"

    def __init__(self, path, threads: int | None):
        from lightsv.runtime import OnnxModel

        self.runner = OnnxModel(path, threads=threads)
        if self.runner.dim != 1:
            raise CheckpointError(f"{path}: not a countermeasure (output size {self.runner.dim}, not 1)")
        self.calibration = self.runner.calibration
        self.trunk_id = self.runner.metadata.get("trunk_id") or None
        self.features = json.loads(self.runner.metadata["features"]) if "features" in self.runner.metadata else None
        # a side CM's export also gives its trunk's speaker embedding (lightsv.edge.export.JointEmbedder)
        self.joint = "speaker_embedding" in {o.name for o in self.runner.session.get_outputs()}

    def _run(self, outputs: list[str], wav: np.ndarray) -> list:
        return self.runner.session.run(outputs, {"wav": wav[None], "lengths": np.array([len(wav)], dtype=np.int64)})

    def score(self, wav: np.ndarray) -> float:
        (out,) = self._run(["embedding"], wav)
        return float(out[0, 0])

    def embed_and_score(self, wav: np.ndarray) -> tuple[np.ndarray, float]:
        """(the trunk's speaker embedding, not normalised; the CM's score) of one waveform, one pass."""
        score, emb = self._run(["embedding", "speaker_embedding"], wav)
        return emb[0].astype(np.float32), float(score[0, 0])
