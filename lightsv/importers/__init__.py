"""Import speaker models trained by other toolkits: ``import_model("speechbrain", DIR, out="model.pt")``.

Toolkits: SpeechBrain (ECAPA-TDNN), WeSpeaker (ResNet18/34), 3D-Speaker (ECAPA-TDNN).

Each toolkit has one small module that reads the toolkit's own release layout (never executing its
YAML or pickled code), maps the weights onto a lightsv backbone whose config options reproduce the
source architecture exactly, and records the source's front-end in the checkpoint's
``extra["features"]``, so `Verifier.load`, `lightsv export` and the runtime make the source's
embeddings. Anything that does not match what the importer knows raises CheckpointError naming it.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from pathlib import Path

from lightsv.errors import ConfigError

#: toolkit name -> its module here
TOOLKITS = {"speechbrain": "speechbrain", "wespeaker": "wespeaker", "3dspeaker": "threedspeaker"}


def import_model(toolkit: str, source: str | os.PathLike, out: str | os.PathLike | None = None, **options):
    """(model, extra) imported from `source` (the toolkit's release directory or file); written to
    `out` as a lightsv checkpoint when given. `options` go to the toolkit's importer."""
    from lightsv.checkpoint import save_model

    importer = _importer(toolkit)
    model, extra = importer(Path(source), **options)
    if out is not None:
        save_model(model, out, **extra)
    return model, extra


def _importer(toolkit: str) -> Callable:
    if toolkit in TOOLKITS:  # one module per toolkit, imported on use
        return importlib.import_module(f"lightsv.importers.{TOOLKITS[toolkit]}").load
    raise ConfigError(f"unknown toolkit {toolkit!r}; lightsv imports from: {', '.join(TOOLKITS)}")
