"""Random-weight releases in each toolkit's own layout, made with the toolkit's own code."""

from __future__ import annotations

from pathlib import Path

import torch

# The layout of speechbrain/spkrec-ecapa-voxceleb's hyperparams.yaml, at a tiny size.
SPEECHBRAIN_HPARAMS = """\
# ECAPA big for speaker verification (layout of speechbrain/spkrec-ecapa-voxceleb)
n_mels: {n_mels}
pretrained_path: {path}
out_n_neurons: 7

compute_features: !new:speechbrain.lobes.features.Fbank
    n_mels: !ref <n_mels>

mean_var_norm: !new:speechbrain.processing.features.InputNormalization
    norm_type: sentence
    std_norm: False

embedding_model: !new:speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN
    input_size: !ref <n_mels>
    channels: {channels}
    kernel_sizes: [5, 3, 3, 3, 1]
    dilations: [1, 2, 3, 4, 1]
    attention_channels: {attention}
    se_channels: {se}
    lin_neurons: {lin}

classifier: !new:speechbrain.lobes.models.ECAPA_TDNN.Classifier
    input_size: {lin}
    out_neurons: !ref <out_n_neurons>

mean_var_norm_emb: !new:speechbrain.processing.features.InputNormalization
    norm_type: global
    std_norm: False

modules:
    compute_features: !ref <compute_features>
    mean_var_norm: !ref <mean_var_norm>
    embedding_model: !ref <embedding_model>
    mean_var_norm_emb: !ref <mean_var_norm_emb>
    classifier: !ref <classifier>

label_encoder: !new:speechbrain.dataio.encoder.CategoricalEncoder

pretrainer: !new:speechbrain.utils.parameter_transfer.Pretrainer
    loadables:
        embedding_model: !ref <embedding_model>
        mean_var_norm_emb: !ref <mean_var_norm_emb>
    paths:
        embedding_model: !ref <pretrained_path>/embedding_model.ckpt
        mean_var_norm_emb: !ref <pretrained_path>/mean_var_norm_emb.ckpt
"""


def randomize(module: torch.nn.Module, seed: int) -> None:
    """Random weights and batch-norm statistics, so every imported number matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, t in module.state_dict().items():
            if not t.is_floating_point():
                continue
            if name.endswith("running_var"):
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            elif name.endswith("running_mean"):
                t.copy_(torch.randn(t.shape, generator=g) * 0.1)
            elif name.endswith("weight") and t.dim() == 1:  # norm scales
                t.copy_(torch.rand(t.shape, generator=g) + 0.5)
            else:
                fan_in = t[0].numel() if t.dim() > 1 else 1
                t.copy_(torch.randn(t.shape, generator=g) / fan_in**0.5)


def speechbrain_release(
    directory: Path, *, n_mels=24, channels=(32, 32, 32, 32, 96), attention=8, se=8, lin=16, seed=0
):
    """(directory, EncoderClassifier) of a random SpeechBrain ECAPA-TDNN release, from SpeechBrain's own code."""
    from hyperpyyaml import load_hyperpyyaml
    from speechbrain.inference.speaker import EncoderClassifier

    directory.mkdir(parents=True, exist_ok=True)
    text = SPEECHBRAIN_HPARAMS.format(
        n_mels=n_mels, path=directory, channels=list(channels), attention=attention, se=se, lin=lin
    )
    (directory / "hyperparams.yaml").write_text(text)
    hparams = load_hyperpyyaml(text)
    model = hparams["embedding_model"]
    randomize(model, seed)
    torch.save(model.state_dict(), directory / "embedding_model.ckpt")
    emb_norm = hparams["mean_var_norm_emb"]
    g = torch.Generator().manual_seed(seed + 1)
    emb_norm._load_statistics_dict(
        {"count": 10, "glob_mean": torch.randn(lin, generator=g) * 0.3, "glob_std": torch.ones(lin)}
    )
    emb_norm._save(directory / "mean_var_norm_emb.ckpt")
    classifier = EncoderClassifier(modules=hparams["modules"], hparams=hparams)
    classifier.eval()
    return directory, classifier
