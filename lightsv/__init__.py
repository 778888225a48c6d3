"""lightsv: lightweight on-device speaker verification.

Importing lightsv does not import torch: the torch-backed names (models, checkpoints, the
transformation module) load on first use, so the onnx runtime works where torch is not installed.
"""

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
from lightsv.lazy import lazy_names
from lightsv.verifier import Verifier

__version__ = "0.1.0"

# name -> module that defines it (a submodule itself when the name is the module's last part)
_LAZY = {
    "transform": "lightsv.transform",
    "load_model": "lightsv.checkpoint",
    "save_model": "lightsv.checkpoint",
    "MODELS": "lightsv.models",
    "build_model": "lightsv.models",
    "import_model": "lightsv.importers",
}


__getattr__, __dir__ = lazy_names(__name__, _LAZY)


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
    "import_model",
    "load_model",
    "save_model",
    "transform",
    "__version__",
]
