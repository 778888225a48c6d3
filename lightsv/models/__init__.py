"""Speaker embedding backbones. Every model: `forward(feats[B, T, F], lengths=None) -> emb[B, D]`."""

from collections.abc import Callable

from torch import nn

from lightsv.errors import ConfigError
from lightsv.models.amcrn import Amcrn, AmcrnConfig, amcrn, amcrn_small
from lightsv.models.ecapa import EcapaConfig, EcapaTdnn, ecapa_tdnn, ecapa_tdnn_1024, ecapa_tdnn_small
from lightsv.models.rawnet import RawNet, RawNetConfig, rawnet
from lightsv.models.resnet import ResNet, ResNetConfig, resnet18, resnet34
from lightsv.ssl.model import ssl


def spoof_side(**options) -> nn.Module:
    from lightsv.spoof.models import spoof_side as build  # imported on use: it loads a speaker checkpoint

    return build(**options)


MODELS: dict[str, Callable[..., nn.Module]] = {
    "ecapa_tdnn": ecapa_tdnn,
    "ecapa_tdnn_1024": ecapa_tdnn_1024,
    "ecapa_tdnn_small": ecapa_tdnn_small,
    "resnet34": resnet34,
    "resnet18": resnet18,
    "amcrn": amcrn,
    "amcrn_small": amcrn_small,
    "rawnet": rawnet,  # countermeasure from the raw waveform: learnable sinc filters, residual convs
    "ssl": ssl,  # transformers wav2vec2 / AST front-end and a light head (needs the peft extra)
    "spoof_side": spoof_side,  # countermeasure: a side network on a frozen speaker trunk (lightsv.spoof.models)
}


def build_model(name: str, **options) -> nn.Module:
    """Build a registered backbone; `options` override fields of its config dataclass."""
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; known models: {', '.join(sorted(MODELS))}")
    try:
        model = MODELS[name](**options)
    except TypeError as err:
        raise ConfigError(f"bad options for model {name!r}: {err}") from None
    setattr(model, "model_name", name)  # noqa: B010 - a plain attribute on any nn.Module; checkpoints need it
    return model


__all__ = [
    "MODELS",
    "build_model",
    "Amcrn",
    "AmcrnConfig",
    "EcapaConfig",
    "EcapaTdnn",
    "RawNet",
    "RawNetConfig",
    "ResNet",
    "ResNetConfig",
]
