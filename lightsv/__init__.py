"""lightsv: lightweight on-device speaker verification.

Importing lightsv does not import torch: the torch-backed names (models, checkpoints, the
transformation module) load on first use, so the onnx runtime works where torch is not installed.
"""

import importlib

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


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lightsv' has no attribute {name!r}")
    module = importlib.import_module(_LAZY[name])
    value = module if module.__name__.endswith("." + name) else getattr(module, name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


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
