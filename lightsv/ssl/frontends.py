"""The transformer front-ends: named sizes, the tuner sites of each family, local checkpoints."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from lightsv.errors import ConfigError
from lightsv.peft.adapters import Site


@dataclass(frozen=True)
class Family:
    """A transformers model class and where tuners attach in it (names relative to the encoder)."""

    model_type: str  # transformers' config.model_type
    input_kind: str  # "wav": raw waveform [B, N, 1]; "fbank": log-mels [B, T, F]
    layers: str  # regex of the transformer layers
    attention: str  # self-attention modules
    ffn: str  # feed-forward modules (residual added outside)
    linears: dict[str, str]  # short names of the linear layers inside a layer: q, k, v, out, ffn1, ffn2

    def sites(self, prefix: str) -> dict[str, str]:
        sites = {"layer": self.layers, "attention": self.attention, "ffn": self.ffn}
        sites.update({k: rf"{self.layers}\.{v}" for k, v in self.linears.items()})
        return {k: _tolerant(rf"{prefix}\.{v}") for k, v in sites.items()}

    def adapter_sites(self, prefix: str) -> dict[str, Site]:
        return {
            "attention": Site(_tolerant(rf"{prefix}\.{self.attention}")),
            "ffn": Site(_tolerant(rf"{prefix}\.{self.ffn}")),
        }


def _tolerant(pattern: str) -> str:
    """`pattern` also matching where earlier tuners put a wrapper in the path (`...base_layer...`),
    so tuners stack: LoRA on q after a Houlsby adapter wrapped the attention, say."""
    return pattern.replace(r"\.", r"(?:\.base_layer)*\.")


WAV2VEC2 = Family(
    "wav2vec2",
    "wav",
    r"encoder\.layers\.\d+",
    r"encoder\.layers\.\d+\.attention",
    r"encoder\.layers\.\d+\.feed_forward",
    {
        "q": r"attention\.q_proj",
        "k": r"attention\.k_proj",
        "v": r"attention\.v_proj",
        "out": r"attention\.out_proj",
        "ffn1": r"feed_forward\.intermediate_dense",
        "ffn2": r"feed_forward\.output_dense",
    },
)
AST = Family(
    "audio-spectrogram-transformer",
    "fbank",
    r"layers\.\d+",
    r"layers\.\d+\.attention",
    r"layers\.\d+\.mlp",
    {
        "q": r"attention\.q_proj",
        "k": r"attention\.k_proj",
        "v": r"attention\.v_proj",
        "out": r"attention\.o_proj",
        "ffn1": r"mlp\.fc1",
        "ffn2": r"mlp\.fc2",
    },
)
FAMILIES = {f.model_type: f for f in (WAV2VEC2, AST)}


@dataclass(frozen=True)
class Size:
    family: Family
    config: dict[str, Any] = field(default_factory=dict)  # transformers config fields


# Random-weight sizes train without SpecAugment masking or layer drop: both are training
# regularisers of pretraining-era recipes and make step costs and tests depend on chance.
_PLAIN = {"apply_spec_augment": False, "layerdrop": 0.0}
_TINY_CONV = {
    "conv_dim": (32,) * 7,
    "conv_kernel": (10, 3, 3, 3, 3, 2, 2),
    "conv_stride": (5, 2, 2, 2, 2, 2, 2),
    "num_conv_pos_embeddings": 16,
    "num_conv_pos_embedding_groups": 4,
}
SIZES: dict[str, Size] = {
    # XLS-R 300M (Babu et al. 2021): wav2vec2 large with stable layer norm, 24 x 1024
    "xlsr_300m": Size(
        WAV2VEC2,
        {
            **_PLAIN,
            "hidden_size": 1024,
            "num_hidden_layers": 24,
            "num_attention_heads": 16,
            "intermediate_size": 4096,
            "feat_extract_norm": "layer",
            "do_stable_layer_norm": True,
            "conv_bias": True,
        },
    ),
    "wav2vec2_base": Size(WAV2VEC2, dict(_PLAIN)),
    "wav2vec2_small": Size(
        WAV2VEC2,
        {
            **_PLAIN,
            **_TINY_CONV,
            "conv_dim": (64,) * 7,
            "hidden_size": 128,
            "num_hidden_layers": 4,
            "num_attention_heads": 4,
            "intermediate_size": 256,
        },
    ),
    "wav2vec2_tiny": Size(
        WAV2VEC2,
        {
            **_PLAIN,
            **_TINY_CONV,
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
        },
    ),
    "ast_base": Size(AST),
    "ast_tiny": Size(
        AST,
        {
            "hidden_size": 32,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "intermediate_size": 64,
            "max_length": 100,
        },
    ),
}


def _transformers() -> Any:
    try:
        return importlib.import_module("transformers")  # optional: the peft extra
    except ImportError:
        raise ConfigError(
            "transformer front-ends need transformers: pip install -c constraints.txt 'lightsv[peft]'"
        ) from None


def encoder_class(family: Family) -> Any:
    t = _transformers()
    return t.Wav2Vec2Model if family is WAV2VEC2 else t.ASTModel


def config_class(family: Family) -> Any:
    t = _transformers()
    return t.Wav2Vec2Config if family is WAV2VEC2 else t.ASTConfig


def from_config(model_type: str, config: dict[str, Any]) -> tuple[Family, Any]:
    """A randomly initialised encoder of `model_type` from a config dict."""
    family = _family(model_type, "encoder config")
    cfg = config_class(family)(**{k: v for k, v in config.items() if k != "model_type"})
    return family, encoder_class(family)(cfg)


def from_size(size: str) -> tuple[Family, Any]:
    if size not in SIZES:
        raise ConfigError(f"unknown front-end size {size!r}; known: {', '.join(SIZES)} (or pretrained: DIR)")
    spec = SIZES[size]
    return from_config(spec.family.model_type, spec.config)


def from_pretrained(directory: str) -> tuple[Family, Any]:
    """The encoder stored in a local transformers checkpoint directory; no download is attempted."""
    path = Path(directory)
    if not path.is_dir():
        raise ConfigError(f"pretrained {directory}: no such directory")
    config_file = path / "config.json"
    if not config_file.is_file():
        raise ConfigError(f"pretrained {directory}: not a transformers checkpoint (no config.json)")
    try:
        model_type = json.loads(config_file.read_text()).get("model_type")
    except (json.JSONDecodeError, AttributeError):
        raise ConfigError(f"pretrained {directory}: config.json is not a JSON object") from None
    family = _family(model_type, f"pretrained {directory}")
    try:
        encoder = encoder_class(family).from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError) as err:
        raise ConfigError(
            f"pretrained {directory}: cannot load a {model_type} model ({' '.join(str(err).split())[:200]})"
        ) from None
    return family, encoder


def _family(model_type: Any, where: str) -> Family:
    if model_type not in FAMILIES:
        raise ConfigError(f"{where}: model_type {model_type!r} is not one of {', '.join(FAMILIES)}")
    return FAMILIES[model_type]
