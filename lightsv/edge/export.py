"""Export a lightsv model to one self-contained ONNX file.

Two layouts (``ExportConfig.format``):

- ``lightsv``: waveform in, embedding out. Inputs ``wav`` [batch, samples] float32 at 16 kHz in
  [-1, 1] and ``lengths`` [batch] int64 (valid samples per row); output ``embedding`` [batch, dim]
  (not normalised). The filterbank is inside the graph, batch and samples are dynamic.
- ``sherpa-onnx``: the features-in graph sherpa-onnx's speaker embedding extractor runs (see
  :mod:`lightsv.edge.sherpa`).

The graph comes from torch's current exporter (``torch.onnx.export(..., dynamo=True)``), opset 18,
with everything a runtime needs in ``metadata_props`` (:func:`metadata`). The K narrow copies of each
split transformation-module block are traced as one wide block of grouped convolutions
(:mod:`lightsv.edge.fuse`; K times fewer operators, the same embeddings), except in recurrent models,
which go through the TorchScript exporter with the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import os
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from lightsv.errors import ConfigError, LightsvError
from lightsv.features import Fbank, FbankConfig

OPSET = 18
FORMATS = ("lightsv", "sherpa-onnx")
#: The exported graph needs two frames of audio to trace a dynamic length (Fbank's note).
_MIN_TRACE_SAMPLES = 560
_MAX_SAMPLES = 16000 * 600 + 1


class ExportError(LightsvError):
    """A model that cannot be exported, or an export dependency that is missing."""


@dataclass
class ExportConfig:
    format: str = "lightsv"  # or "sherpa-onnx"
    int8: bool = False
    frontend: str = "matrix"  # "matrix" (folded DFT as a strided conv) or "fft" (ONNX DFT): lightsv format only
    opset: int = OPSET

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ConfigError(f"export format {self.format!r}: use one of {', '.join(FORMATS)}")
        if self.frontend not in ("matrix", "fft"):
            raise ConfigError(f"export frontend {self.frontend!r}: use 'matrix' or 'fft'")
        if self.opset < 17:
            raise ConfigError(f"export opset {self.opset}: need 17 or newer (DFT, LayerNormalization)")


class WaveformEmbedder(nn.Module):
    """Waveform -> log-mel -> embedding: the module the ``lightsv`` layout exports (WeSpeaker style)."""

    def __init__(self, model: nn.Module, features: FbankConfig | None = None, frontend: str = "matrix"):
        super().__init__()
        from lightsv.edge.frontend import FftFbank

        self.fbank = FftFbank(features) if frontend == "fft" else Fbank(features)
        self.model = model

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, frames = self.fbank(wav, lengths)
        return self.model(feats, frames)


class JointEmbedder(WaveformEmbedder):
    """A countermeasure on a speaker trunk (``model.joint``, lightsv.spoof.models.SideCM): waveform ->
    (its score as ``embedding``, the trunk's speaker embedding as ``speaker_embedding``) in one pass, so
    the onnx backend runs the trunk once for verification and spoof detection, as torch does."""

    outputs = ["embedding", "speaker_embedding"]

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor):
        feats, frames = self.fbank(wav, lengths)
        joint: Any = self.model.joint
        emb, score = joint(feats, frames)
        return score, emb


def require(*modules: str) -> None:
    """Raise a one-line ExportError naming the extra to install when an export dependency is missing."""
    import importlib.util

    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except ImportError:  # an import hook that refuses it
            return True

    missing = [m for m in modules if absent(m)]
    if missing:
        raise ExportError(
            f"exporting to ONNX needs {', '.join(missing)}: pip install -c constraints.txt 'lightsv[export]'"
        )


def metadata(model: nn.Module, extra: dict | None, *, features: FbankConfig, quantization: str) -> dict[str, str]:
    """The ``metadata_props`` of an exported model; every value is a string (ONNX's type)."""
    import lightsv
    from lightsv.verifier import MIN_SECONDS, model_id

    extra = extra or {}
    calibration = extra.get("calibration")
    base_id = model_id(model)
    dim = int(getattr(model, "embed_dim", 0))
    props = {
        "lightsv_version": lightsv.__version__,
        # The id the enrollment store records. A quantised model makes different embeddings, so it gets
        # its own id: a store enrolled with one refuses the other.
        "model_id": base_id if quantization == "none" else f"{base_id}/{quantization}",
        "source_model_id": base_id,
        "model_name": str(getattr(model, "model_name", type(model).__name__)),
        "quantization": quantization,
        "sample_rate": str(features.sample_rate),
        "embedding_dim": str(dim),
        "min_seconds": repr(float(extra.get("min_seconds", MIN_SECONDS))),
        "features": json.dumps(dataclasses.asdict(features), sort_keys=True),
    }
    if calibration is not None:
        props["calibration"] = json.dumps(calibration, sort_keys=True)
    return props


def export(
    model: nn.Module,
    out: str | os.PathLike,
    *,
    extra: dict | None = None,
    config: ExportConfig | None = None,
    calibration_wavs: Iterable[np.ndarray] | None = None,
) -> Path:
    """Write ``model`` (with its checkpoint metadata ``extra``) to ``out`` as one ONNX file; returns the path.

    ``config.int8`` quantises it (static QDQ, :mod:`lightsv.edge.quantize`) with activation ranges from
    ``calibration_wavs`` (16 kHz float32 waveforms; required for int8).
    """
    config = config or ExportConfig()
    require("onnx", "onnxscript", "onnxruntime")
    import onnx

    from lightsv.verifier import _features

    features = _features(extra or {}, "model")
    model = model.eval()
    if config.format == "sherpa-onnx":
        from lightsv.edge.sherpa import sherpa_graph

        proto, inputs = sherpa_graph(model, features, config.opset)
    else:
        embedder = JointEmbedder if hasattr(model, "joint") and not config.int8 else WaveformEmbedder
        proto = _trace_waveform(embedder(model, features, config.frontend).eval(), config.opset)
        inputs = None
    proto = clean(proto)
    quantization = "none"
    if config.int8:
        from lightsv.edge.quantize import quantize

        if calibration_wavs is None:
            raise ConfigError("int8 export needs calibration clips")
        proto = quantize(proto, calibration_wavs, features=features, feature_inputs=inputs)
        quantization = "int8"
        # the weights left in float (convolutions int8 would not speed up) are stored as float16 too;
        # quantisation parameters stay initializers, where onnxruntime's int8 fusions look for them
        quant = {i for n in proto.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear") for i in n.input}
        proto = compact(proto, skip=quant)
    else:
        proto = compact(proto)
    props = metadata(model, extra, features=features, quantization=quantization)
    trunk_id = getattr(getattr(model, "config", None), "trunk_id", "")
    if trunk_id:  # a countermeasure on a speaker model's trunk: which one (lightsv.spoof.sasv.shares_trunk)
        props["trunk_id"] = str(trunk_id)
    if len(proto.graph.output) > 1:
        props["speaker_embedding_dim"] = str(proto.graph.output[1].type.tensor_type.shape.dim[1].dim_value)
    if config.format == "sherpa-onnx":
        from lightsv.edge.sherpa import sherpa_metadata

        props.update(sherpa_metadata(props))
    props["format"] = config.format
    set_metadata(proto, props)
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as err:  # the checker raises several types; any of them means a broken export
        raise ExportError(f"the exported graph fails onnx.checker: {err}") from None
    return write(proto, out)


def export_checkpoint(checkpoint: str | os.PathLike | None, out: str | os.PathLike, **kwargs: Any) -> Path:
    """:func:`export` for a checkpoint file (default: the shipped model)."""
    from lightsv.checkpoint import load_model
    from lightsv.verifier import DEFAULT_MODEL

    model, extra = load_model(DEFAULT_MODEL if checkpoint is None else checkpoint, return_extra=True)
    return export(model, out, extra=extra, **kwargs)


def _trace_waveform(graph: nn.Module, opset: int):
    from lightsv.edge.fuse import fuse

    wav, lengths = torch.randn(2, 32000) * 0.1, torch.tensor([32000, 24000])
    if any(isinstance(m, nn.RNNBase) for m in graph.modules()):
        # The TorchScript tracer records the fused blocks' reshapes with the trace's sizes; these models
        # keep the transformation module's loop.
        return _torchscript_export(graph, opset, wav, lengths)
    graph = fuse(graph, wav, lengths)  # rows of different lengths: the probe sees padding and masks
    batch = torch.export.Dim("batch", min=1, max=4096)
    samples = torch.export.Dim("samples", min=_MIN_TRACE_SAMPLES, max=_MAX_SAMPLES)
    return _dynamo_export(
        graph,
        (wav, lengths),
        input_names=["wav", "lengths"],
        dynamic_shapes={"wav": {0: batch, 1: samples}, "lengths": {0: batch}},
        opset=opset,
        output_names=getattr(graph, "outputs", ["embedding"]),
    )


def _dynamo_export(
    graph: nn.Module,
    args: tuple,
    *,
    input_names: list[str],
    dynamic_shapes: dict,
    opset: int,
    output_names: list[str] | None = None,
):
    # The exporter reports its steps on stdout and logs a warning per missing torchvision op.
    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                graph,
                args,
                input_names=input_names,
                output_names=output_names or ["embedding"],
                dynamic_shapes=dynamic_shapes,
                opset_version=opset,
                dynamo=True,
                external_data=False,
                optimize=True,
                verbose=False,
            )
    except Exception as err:  # torch.export raises many types; the first line says what failed
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ExportError(f"torch.onnx.export (dynamo) failed: {first}") from err
    finally:
        quiet.setLevel(level)
    if program is None:
        raise ExportError("torch.onnx.export returned no program")
    proto = program.model_proto
    for output in proto.graph.output:  # name the output's batch axis like the inputs'
        dims = output.type.tensor_type.shape.dim
        if dims and not dims[0].dim_value:
            dims[0].dim_param = "batch"
    return proto


def _torchscript_export(graph: nn.Module, opset: int, wav: torch.Tensor, lengths: torch.Tensor):
    """Recurrent models (AMCRN's GRUs) go through the TorchScript exporter: the dynamo exporter
    decomposes nn.GRU into a Python loop over time steps, which cannot take a dynamic length
    (torch 2.13 fails with "Failed to decompose the FX graph"); TorchScript maps it to ONNX's GRU."""
    import onnx

    buffer = io.BytesIO()
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            graph,
            (wav, lengths),
            buffer,  # type: ignore[arg-type]  # the TorchScript exporter writes to file objects too
            input_names=["wav", "lengths"],
            output_names=["embedding"],
            dynamic_axes={"wav": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "embedding": {0: "batch"}},
            opset_version=opset,
            dynamo=False,
        )
    return onnx.load_from_string(buffer.getvalue())


def clean(proto):
    """Drop what the exporter records for debugging: per-node stack traces (with local paths) and doc strings."""
    for node in proto.graph.node:
        del node.metadata_props[:]
        node.doc_string = ""
    proto.graph.doc_string = ""
    del proto.metadata_props[:]
    proto.producer_name = "lightsv"
    return proto


def compact(proto, skip: set[str] | frozenset[str] = frozenset()):
    """Store float32 weights that float16 holds exactly as float16 plus a Cast; lossless, about half the size.

    `skip`: initializers to keep as they are (an int8 graph's quantisation parameters).

    The shipped checkpoint keeps its weights in float16, so all of them qualify; onnxruntime folds
    the Casts once when it loads the model, so inference still runs in float32 at the same speed.
    """
    import onnx
    from onnx import helper, numpy_helper

    casts, keep = [], []
    for init in proto.graph.initializer:
        array = numpy_helper.to_array(init)
        if (
            init.name not in skip
            and array.dtype == np.float32
            and array.size >= 16
            and np.array_equal(array.astype(np.float16).astype(np.float32), array)
        ):
            half = numpy_helper.from_array(array.astype(np.float16), f"{init.name}__f16")
            keep.append(half)
            casts.append(helper.make_node("Cast", [half.name], [init.name], to=onnx.TensorProto.FLOAT))
        else:
            keep.append(init)
    del proto.graph.initializer[:]
    proto.graph.initializer.extend(keep)
    nodes = list(proto.graph.node)
    del proto.graph.node[:]
    proto.graph.node.extend(casts + nodes)
    return proto


def set_metadata(proto, props: dict[str, str]) -> None:
    del proto.metadata_props[:]
    for key, value in props.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)


def write(proto, out: str | os.PathLike) -> Path:
    """Write ``proto`` to ``out`` as one file, atomically (a reader never sees half a model)."""
    out = Path(out)
    if out.is_dir():
        raise ExportError(f"{out}: is a directory; give a file name such as model.onnx")
    if not out.parent.is_dir():
        raise ExportError(f"{out}: parent directory {out.parent} does not exist")
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(proto.SerializeToString())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; a model file is meant to be shared
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
