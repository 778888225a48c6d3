"""Random-weight releases in each toolkit's own layout, made with the toolkit's own code."""

from __future__ import annotations

import types
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


WESPEAKER_CONFIG = """\
# the parts of a WeSpeaker config.yaml (voxceleb resnet34 recipe) the importer reads, and a few it does not
exp_dir: exp/ResNet34-TSTP-emb256-fbank80-num_frms200-aug0.6-spTrue-saFalse-ArcMargin-SGD-epoch150
gpus: "[0,1]"
num_avg: 10
enable_amp: false
dataset_args:
  shuffle: true
  filter: true
  num_frms: 200
  aug_prob: 0.6
  speed_perturb: true
  fbank_args:
    num_mel_bins: {n_mels}
    frame_shift: 10
    frame_length: 25
    dither: 1.0
  spec_aug: false
model: {model}
model_args:
  feat_dim: {n_mels}
  embed_dim: {embed}
  pooling_func: "TSTP"
  two_emb_layer: false
projection_args:
  project_type: "arc_margin"
  scale: 32.0
  easy_margin: false
"""


def wespeaker_release(directory: Path, *, model="ResNet34", n_mels=40, embed=32, speakers=11, seed=0):
    """(directory, ResNet) of a random WeSpeaker ResNet release, the model from pyannote.audio's port of
    WeSpeaker's code; avg_model.pt holds the training head (projection.weight) as WeSpeaker's do."""
    from lightsv.extras import wespeaker_resnet

    directory.mkdir(parents=True, exist_ok=True)
    (directory / "config.yaml").write_text(WESPEAKER_CONFIG.format(model=model, n_mels=n_mels, embed=embed))
    module = wespeaker_resnet()
    net = getattr(module, model)(feat_dim=n_mels, embed_dim=embed, two_emb_layer=False)
    # pyannote's port pools with its own StatsPool (std without WeSpeaker's + 1e-7, which matters for
    # channels a ReLU silenced); WeSpeaker's TSTP is the code pyannote left commented out in the same file
    net.pool.forward = types.MethodType(_wespeaker_tstp, net.pool)
    randomize(net, seed)
    net.eval()
    state = dict(net.state_dict())
    state["projection.weight"] = torch.randn(speakers, embed)
    torch.save(state, directory / "avg_model.pt")
    return directory, net


def wespeaker_embed(net, wav: torch.Tensor, n_mels: int) -> torch.Tensor:
    """WeSpeaker's inference on one waveform [N] in [-1, 1]: Kaldi fbank of int16-scaled samples with a
    Hamming window, mean normalisation, the ResNet (wespeaker/cli/speaker.py, infer_onnx.py)."""
    import torchaudio.compliance.kaldi as kaldi

    feats = kaldi.fbank(
        wav[None] * (1 << 15),
        num_mel_bins=n_mels,
        frame_length=25,
        frame_shift=10,
        dither=0.0,
        sample_frequency=16000,
        window_type="hamming",
        use_energy=False,
    )
    feats = feats - feats.mean(dim=0)
    with torch.no_grad():
        return net(feats[None])[1]


def _wespeaker_tstp(self, x, weights=None):
    pooling_mean = x.mean(dim=-1)
    pooling_std = torch.sqrt(torch.var(x, dim=-1) + 1e-7)
    pooling_mean = pooling_mean.flatten(start_dim=1)
    pooling_std = pooling_std.flatten(start_dim=1)
    return torch.cat((pooling_mean, pooling_std), 1)


def threedspeaker_release(directory: Path, *, seed=0):
    """(model file, ECAPA_TDNN) of a random 3D-Speaker ECAPA-TDNN release (``ecapa_tdnn.bin``, the
    architecture speakerlab/bin/infer_sv.py builds for it), made with speakerlab's own class."""
    from speakerlab.models.ecapa_tdnn.ECAPA_TDNN import ECAPA_TDNN

    directory.mkdir(parents=True, exist_ok=True)
    net = ECAPA_TDNN(input_size=80, lin_neurons=192, channels=[1024, 1024, 1024, 1024, 3072])
    randomize(net, seed)
    net.eval()
    torch.save(net.state_dict(), directory / "ecapa_tdnn.bin")
    return directory / "ecapa_tdnn.bin", net


def threedspeaker_embed(net, wav: torch.Tensor) -> torch.Tensor:
    """3D-Speaker's inference (speakerlab/bin/infer_sv.py): its FBank(80, mean_nor=True) on the [-1, 1]
    waveform, then the model."""
    from speakerlab.process.processor import FBank

    feats = FBank(80, sample_rate=16000, mean_nor=True)(wav[None]).unsqueeze(0)
    with torch.no_grad():
        return net(feats)
