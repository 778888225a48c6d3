"""Training machinery: configs (`config`), the training loop (`loop`), its losses, augmentation,
teacher, dev evaluation and process group, and the command line `python -m lightsv.train`.

    from lightsv.train import load_config, train
    trained = train(load_config("recipes/voxceleb/conf/default.yaml"), "exp/default")
"""

from lightsv.train.cli import evaluate_spoof, export, main
from lightsv.train.config import TrainConfig, build, config_from_dict, load_config
from lightsv.train.loop import Trained, train

__all__ = [
    "TrainConfig",
    "Trained",
    "build",
    "config_from_dict",
    "evaluate_spoof",
    "export",
    "load_config",
    "main",
    "train",
]
