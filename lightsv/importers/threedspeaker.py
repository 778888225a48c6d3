"""3D-Speaker ECAPA-TDNN (e.g. iic/speech_ecapa-tdnn_sv_en_voxceleb_16k) -> lightsv ``ecapa_tdnn``.

A 3D-Speaker release is a bare state dict (``ecapa_tdnn.bin``, ``ecapa-tdnn.ckpt``); its architecture
is fixed by the model id in 3D-Speaker's ``speakerlab/bin/infer_sv.py``, whose table is mirrored in
RELEASES, so the file name says which one it is (``model=`` names it for a renamed file). 3D-Speaker's
ECAPA-TDNN is SpeechBrain's (same modules and names), so the weights move as in
:mod:`lightsv.importers.speechbrain`. Its inference front-end differs: Kaldi fbank
(torchaudio.compliance.kaldi defaults: povey window, dither 0) on [-1, 1] samples, not int16-scaled,
then mean normalisation per utterance.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from lightsv.errors import CheckpointError
from lightsv.features import FbankConfig
from lightsv.importers.speechbrain import ecapa_config, ecapa_names, reorder_res2
from lightsv.importers.weights import load_state, move, sha256
from lightsv.models import build_model

# speakerlab/bin/infer_sv.py (speakerlab 0.0.6): ECAPA_CNCeleb, used by all three ECAPA releases
ECAPA_CNCELEB: dict[str, Any] = {"input_size": 80, "lin_neurons": 192, "channels": [1024, 1024, 1024, 1024, 3072]}
RELEASES = {"ecapa-tdnn.ckpt": ECAPA_CNCELEB, "ecapa_tdnn.bin": ECAPA_CNCELEB}
OTHERS = ("campplus", "eres2net")  # 3D-Speaker architectures lightsv has no definition of yet


def load(source: Path, model: str | None = None):
    """(model, extra) from a 3D-Speaker ECAPA-TDNN file, or the directory holding it."""
    if source.is_dir():
        found = [source / name for name in RELEASES if (source / name).is_file()]
        if len(found) != 1:
            others = sorted(p.name for p in source.iterdir() if any(o in p.name.lower() for o in OTHERS))
            hint = f"; {', '.join(others)}: CAM++ and ERes2Net are not imported yet" if others else ""
            raise CheckpointError(f"{source}: expected one 3D-Speaker ECAPA-TDNN file ({' or '.join(RELEASES)}){hint}")
        source = found[0]
    name = model or source.name
    if name not in RELEASES:
        lower = name.lower()
        if any(o in lower for o in OTHERS):
            raise CheckpointError(f"{source}: 3D-Speaker's CAM++ and ERes2Net are not imported yet (ECAPA-TDNN is)")
        raise CheckpointError(
            f"{source}: not a 3D-Speaker ECAPA-TDNN release file ({', '.join(RELEASES)}); "
            "pass model= one of those names for a renamed file"
        )
    args = RELEASES[name]
    config = ecapa_config(args, args["input_size"], str(source))
    lightsv_model = build_model("ecapa_tdnn", **config)
    state = load_state(source, "3D-Speaker ECAPA-TDNN state dict")
    move(reorder_res2(state, config), ecapa_names(state, config), lightsv_model, str(source))
    lightsv_model.eval()
    features = FbankConfig(n_mels=args["input_size"], int16_scale=False)  # Kaldi defaults otherwise (povey)
    extra = {
        "features": dataclasses.asdict(features),
        "imported_from": {
            "toolkit": "3dspeaker",
            "model": name,
            "source": str(source),
            "sha256": {name: sha256(source)},
        },
    }
    return lightsv_model, extra
