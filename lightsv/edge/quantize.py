"""Static int8 quantisation (QDQ, per-channel weights) of an exported waveform graph with onnxruntime.quantization.

The filterbank stays in float32: its DFT works on raw 16-bit audio over a 90 dB range, which 8 bits
cannot hold. After it, the convolutions and weight matmuls that int8 can speed up are quantised,
with activation ranges measured on calibration clips run through the float model. Left in float32:

- convolutions with a shallow reduction (under MIN_DEPTH inputs per output: channels per group x
  kernel size). On the shipped model in onnxruntime's profiler (1 thread, a CPU with AVX512-VNNI),
  QLinearConv beat the float convolution only on the deep ones (the attentive pooling's first layer,
  288 deep, by about 3.5x; the 96-192-deep ones by about 1.2x) and was up to 2x slower on the
  16-32-deep convolutions of the narrow blocks, before the QuantizeLinear, DequantizeLinear and
  layout Transposes around it;
- matmuls of two activations (the fused transformation module's subset mean): no weights to shrink.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lightsv.errors import ConfigError
from lightsv.features import FbankConfig

#: Operators quantised; the rest run in float32 between them.
OP_TYPES = ("Conv", "MatMul", "Gemm")


class _Clips:
    """onnxruntime's CalibrationDataReader protocol over waveforms, one clip per batch."""

    def __init__(self, wavs: list[np.ndarray]):
        self.wavs, self.index = wavs, 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.wavs):
            return None
        wav = self.wavs[self.index]
        self.index += 1
        return {"wav": wav[None].astype(np.float32), "lengths": np.array([len(wav)], dtype=np.int64)}

    def rewind(self) -> None:
        self.index = 0


def frontend_nodes(proto) -> list[str]:
    """Names of the nodes that read the filterbank's constants (its DFT conv and mel matmul)."""
    consts = {i.name for i in proto.graph.initializer if i.name.startswith("fbank.")}
    return [n.name for n in proto.graph.node if consts.intersection(n.input)]


def activation_products(graph) -> list[str]:
    """Names of the matmuls whose right-hand side is an activation, not weights (the subsets' mean of a
    fused transformation module, lightsv.edge.fuse: a 1 x K constant times the activations):
    quantising them saves no weight bytes and wraps a full activation tensor in a QuantizeLinear /
    DequantizeLinear pair that costs more than the product itself."""
    consts = {i.name for i in graph.initializer} | {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    return [n.name for n in graph.node if n.op_type in OP_TYPES and n.input[1] not in consts]


#: Convolutions that reduce over fewer inputs per output (input channels per group x kernel size) stay
#: float32: onnxruntime's QLinearConv only beats the float convolution with a deeper reduction.
MIN_DEPTH = 64


def shallow_convolutions(graph) -> list[str]:
    """Names of the convolutions with a reduction depth under MIN_DEPTH."""
    shapes = {i.name: list(i.dims) for i in graph.initializer}
    return [
        n.name
        for n in graph.node
        if n.op_type == "Conv" and n.input[1] in shapes and int(np.prod(shapes[n.input[1]][1:])) < MIN_DEPTH
    ]


def quantize(proto, wavs: Iterable[np.ndarray], *, features: FbankConfig, feature_inputs=None):
    """The int8 QDQ version of the float waveform graph ``proto`` (an onnx.ModelProto)."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if feature_inputs is not None:
        raise ConfigError("int8 export is for the lightsv (waveform) format only")
    clips = [np.asarray(w, dtype=np.float32) for w in wavs]
    if not clips:
        raise ConfigError("int8 export needs at least one calibration clip")
    exclude = frontend_nodes(proto)
    with tempfile.TemporaryDirectory() as tmp:
        src, pre, out = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx", Path(tmp) / "int8.onnx"
        onnx.save(proto, src)
        try:
            # Symbolic shape inference and graph optimisation first, as onnxruntime recommends.
            quant_pre_process(str(src), str(pre), skip_symbolic_shape=True)
        except Exception:  # pre-processing is an optimisation; quantise the graph as exported if it fails
            pre = src
        graph = onnx.load(pre).graph
        names = {n.name for n in graph.node}
        exclude += activation_products(graph) + shallow_convolutions(graph)
        quantize_static(
            str(pre),
            str(out),
            _Clips(clips),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=[n for n in exclude if n in names],
            calibrate_method=CalibrationMethod.MinMax,
            extra_options={"CalibTensorRangeSymmetric": False},
        )
        quantized = onnx.load(out)
    return quantized
