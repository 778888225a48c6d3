"""The ``sherpa-onnx`` layout: a features-in graph that sherpa-onnx's SpeakerEmbeddingExtractor runs.

sherpa-onnx computes the filterbank itself (kaldi-native-fbank) with options the model file cannot
change: 80 mels from 20 Hz to Nyquist - 400 Hz (7600 Hz at 16 kHz), frames centred on the hop
(``snip_edges=false``), samples scaled to the 16-bit range when ``normalize_samples`` is 0. lightsv's
filterbank snips edges, and reaches Nyquist unless the model was trained on sherpa's top frequency
(the shipped model is, since its third generation: `recipes/voxceleb/conf/gen3.yaml`). For a model
that reads the full band, the graph starts by mapping sherpa's mel energies to lightsv's (a fixed
non-negative 80 x 80 matrix fitted between the two filter banks: exp, matmul, log); what sherpa's
features do not see (7.6-8 kHz) cannot be recovered, and was nearly all of the difference between the
two embeddings (framing and edge frames move little: README, "sherpa-onnx"). The graph then
mean-normalises over time as lightsv does and runs the model.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import torch
from torch import nn

from lightsv.features import FbankConfig, mel_banks

#: kaldi-native-fbank's options in sherpa-onnx's FeatureExtractorConfig (not settable from a model file).
SHERPA_HIGH_FREQ = -400.0
#: sherpa-onnx multiplies [-1, 1] samples by 32768 when the model says normalize_samples=0, as lightsv does.
NORMALIZE_SAMPLES = 0


def sherpa_features(c: FbankConfig) -> FbankConfig:
    return dataclasses.replace(c, high_freq=SHERPA_HIGH_FREQ)


def feature_map(c: FbankConfig) -> np.ndarray | None:
    """[n_mels, n_mels] non-negative M with sherpa_bank @ M ~ lightsv_bank, bin by bin (least squares);
    None when the model reads sherpa's filter bank already."""
    from scipy.optimize import nnls

    ours, theirs = mel_banks(c), mel_banks(sherpa_features(c))  # [bins, mels]
    if ours.shape == theirs.shape and np.array_equal(ours, theirs):
        return None
    return np.stack([nnls(theirs, ours[:, j])[0] for j in range(ours.shape[1])], axis=1)


class FeatureEmbedder(nn.Module):
    """sherpa-onnx's log-mels [B, T, 80] -> lightsv's mean-normalised log-mels -> embedding [B, D]."""

    map: torch.Tensor | None

    def __init__(self, model: nn.Module, features: FbankConfig):
        super().__init__()
        self.features = features
        m = feature_map(features)
        self.register_buffer("map", None if m is None else torch.from_numpy(m).float(), persistent=False)
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = x if self.map is None else torch.log(torch.clamp(torch.exp(x) @ self.map, min=self.features.log_floor))
        if self.features.mean_norm:
            feats = feats - feats.mean(dim=1, keepdim=True)
        return self.model(feats)


def sherpa_graph(model: nn.Module, features: FbankConfig, opset: int):
    from lightsv.edge.export import ExportError, _dynamo_export
    from lightsv.edge.fuse import fuse

    if features.style != "kaldi":
        # no fixed matrix maps Kaldi's log-mels onto another toolkit's (window, framing, dB clipping)
        raise ExportError(
            f"sherpa-onnx computes Kaldi filterbanks; this model reads a {features.style}-style filterbank "
            "(an imported model): export the lightsv format, which carries its own front-end"
        )

    batch = torch.export.Dim("batch", min=1, max=4096)
    frames = torch.export.Dim("frames", min=2, max=60001)
    x = torch.randn(2, 200, features.n_mels)
    proto = _dynamo_export(
        fuse(FeatureEmbedder(model, features).eval(), x),
        (x,),
        input_names=["x"],
        dynamic_shapes={"x": {0: batch, 1: frames}},
        opset=opset,
    )
    return proto, ["x"]


def sherpa_metadata(props: dict[str, str]) -> dict[str, str]:
    """The keys sherpa-onnx reads (speaker-embedding-extractor-model.cc)."""
    return {
        # sherpa-onnx accepts "wespeaker" or "3d-speaker"; both run the same general extractor.
        "framework": "wespeaker",
        "sample_rate": props["sample_rate"],
        "output_dim": props["embedding_dim"],
        "normalize_samples": str(NORMALIZE_SAMPLES),
        # Empty: the graph normalises its own features after mapping them (global-mean would come first).
        "feature_normalize_type": "",
        "language": "English",
        "comment": "lightsv speaker embedding model (lightsv export --format sherpa-onnx)",
    }
