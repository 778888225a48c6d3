"""Training machinery: configs (`config`), the training loop (`loop`), its losses, augmentation,
teacher, dev evaluation and process group, and the command line `python -m lightsv.train`.

    from lightsv.train import load_config, train
    trained = train(load_config("recipes/voxceleb/conf/default.yaml"), "exp/default")

The names below load on first use, so importing one submodule (say `lightsv.train.config`) does not
import the whole loop.
"""

import importlib

_LAZY = {
    "TrainConfig": "lightsv.train.config",
    "build": "lightsv.train.config",
    "config_from_dict": "lightsv.train.config",
    "load_config": "lightsv.train.config",
    "Trained": "lightsv.train.loop",
    "train": "lightsv.train.loop",
    "evaluate_spoof": "lightsv.train.cli",
    "export": "lightsv.train.cli",
    "main": "lightsv.train.cli",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'lightsv.train' has no attribute {name!r}")
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))


__all__ = sorted(_LAZY)
