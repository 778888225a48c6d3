"""lightsv: lightweight on-device speaker verification."""

from lightsv import transform
from lightsv.checkpoint import load_model, save_model
from lightsv.errors import (
    AudioError,
    CheckpointError,
    ConfigError,
    LightsvError,
    ScoresError,
    StoreError,
    ThresholdError,
    UnknownSpeakerError,
)
from lightsv.models import MODELS, build_model
from lightsv.verifier import Verifier

__version__ = "0.1.0"

__all__ = [
    "AudioError",
    "CheckpointError",
    "ConfigError",
    "LightsvError",
    "ScoresError",
    "StoreError",
    "ThresholdError",
    "UnknownSpeakerError",
    "MODELS",
    "Verifier",
    "build_model",
    "load_model",
    "save_model",
    "transform",
    "__version__",
]
