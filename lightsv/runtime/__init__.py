"""Run an exported lightsv model without torch: numpy, onnxruntime and soundfile only.

    from lightsv.runtime import OnnxModel
    m = OnnxModel("model.onnx", threads=1)
    emb = m.embed([wav1, wav2])          # unit-length float32 [2, D] from 16 kHz float32 waveforms

:class:`lightsv.Verifier` uses it when loaded with ``backend="onnx"`` (the default where torch is
not installed). Everything the Verifier needs besides the graph (model id, embedding size, minimum
clip length, calibrated thresholds) is read from the file's ``metadata_props``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from lightsv.errors import CheckpointError, ConfigError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
#: The shipped default model's exports (``lightsv export --ship`` writes them from assets/default.pt).
DEFAULT_ONNX = ASSETS / "default.onnx"
DEFAULT_ONNX_INT8 = ASSETS / "default.int8.onnx"
ONNX_MAGIC_HINT = "an ONNX model file exported by lightsv (lightsv export)"
_REQUIRED = ("model_id", "sample_rate", "embedding_dim")


def default_threads() -> int:
    """One thread: the shipped models are small enough that a second thread mostly waits, and on a
    busy machine spinning worker threads slow everything down (measured in benchmarks/edge.py)."""
    return 1


def check_threads(threads) -> int:
    if threads is None:
        return default_threads()
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise ConfigError(f"threads must be a positive integer, got {threads!r}")
    return threads


class OnnxModel:
    """A lightsv ONNX file (``lightsv`` layout: waveform in) in an onnxruntime session."""

    def __init__(self, path: str | os.PathLike, *, threads: int | None = None):
        try:
            import onnxruntime as ort
        except ImportError:
            raise ConfigError(
                "the onnx backend needs onnxruntime: pip install -c constraints.txt 'lightsv[onnx]'"
            ) from None
        self.path = Path(path)
        self.source = str(path)
        self.threads = check_threads(threads)
        if not self.path.is_file():
            raise CheckpointError(f"{path}: no such model file")
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Worker threads that spin between runs steal the CPU from everything else on a small device.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types
            why = str(err).strip().splitlines()[0][:200] if str(err).strip() else type(err).__name__
            raise CheckpointError(f"{path}: not {ONNX_MAGIC_HINT} (onnxruntime cannot load it: {why})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        inputs = {i.name for i in self.session.get_inputs()}
        missing = [k for k in _REQUIRED if k not in meta]
        if missing or meta.get("format", "lightsv") != "lightsv" or inputs != {"wav", "lengths"}:
            what = (
                f"no {', '.join(missing)} in its metadata"
                if missing
                else f"its inputs are {sorted(inputs)}, not wav and lengths"
                if inputs != {"wav", "lengths"}
                else f"its format is {meta.get('format')!r}"
            )
            raise CheckpointError(f"{path}: not {ONNX_MAGIC_HINT} ({what})")
        self.metadata = dict(meta)
        try:
            self.model_id = meta["model_id"]
            self.dim = int(meta["embedding_dim"])
            self.sample_rate = int(meta["sample_rate"])
            self.min_seconds = float(meta.get("min_seconds", 0.5))
            self.calibration = json.loads(meta["calibration"]) if "calibration" in meta else None
        except (ValueError, TypeError) as err:
            raise CheckpointError(f"{path}: bad lightsv metadata ({err})") from None
        if self.sample_rate != 16000:
            raise CheckpointError(f"{path}: made for {self.sample_rate} Hz audio; lightsv reads 16 kHz")

    @property
    def extra(self) -> dict:
        """The checkpoint-style metadata the Verifier reads (minimum length, calibration)."""
        extra: dict = {"min_seconds": self.min_seconds}
        if self.calibration is not None:
            extra["calibration"] = self.calibration
        return extra

    def embed(self, wavs: list[np.ndarray]) -> np.ndarray:
        """Unit-length embeddings [N, D] of 16 kHz float32 waveforms, run as one zero-padded batch."""
        lengths = np.array([len(w) for w in wavs], dtype=np.int64)
        batch = np.zeros((len(wavs), int(lengths.max())), dtype=np.float32)
        for row, wav in zip(batch, wavs, strict=True):
            row[: len(wav)] = wav
        (emb,) = self.session.run(["embedding"], {"wav": batch, "lengths": lengths})
        emb = emb.astype(np.float32)
        norms = np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
        return emb / norms

    def __repr__(self) -> str:
        return f"OnnxModel({self.source!r}, model_id={self.model_id!r}, threads={self.threads})"


__all__ = ["DEFAULT_ONNX", "DEFAULT_ONNX_INT8", "OnnxModel", "default_threads"]
