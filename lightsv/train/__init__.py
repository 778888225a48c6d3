"""Training machinery: configs (`config`), the training loop (`loop`), its losses, augmentation,
teacher, dev evaluation and process group, and the command line `python -m lightsv.train`.

    from lightsv.train import load_config, train
    trained = train(load_config("recipes/voxceleb/conf/default.yaml"), "exp/default")

The names below load on first use, so importing one submodule (say `lightsv.train.config`) does not
import the whole loop.
"""

from lightsv.lazy import lazy_names

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


__getattr__, __dir__ = lazy_names(__name__, _LAZY)

__all__ = sorted(_LAZY)
