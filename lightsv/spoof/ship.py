"""Ship a trained countermeasure: float16 weights, a threshold calibrated on what ships, an ONNX export.

`recipes/spoof/local/ship.py` runs this on the development data. The threshold is the EER point of
the shipped file's own scores: the EER point is one clip's score, and rounding the weights to float16
moves scores a little, enough to put that clip on the other side of a threshold taken from the
float32 model.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from lightsv.calibrate import calibration, write_calibration
from lightsv.spoof.countermeasure import Countermeasure


def ship(
    model: str | os.PathLike,
    wavs: list[np.ndarray],
    labels: list[int],
    dest: str | os.PathLike,
    *,
    trials: str,
    fars: tuple[float, ...] = (0.01,),
) -> dict:
    """Write ``dest``.pt (float16, calibrated on its own scores of ``wavs``: label 1 bona fide, 0 spoof;
    the EER threshold and one per spoof acceptance rate in ``fars``) and ``dest``.onnx (filterbank in
    the graph); a summary with the ONNX / torch score difference."""
    import onnx

    from lightsv.checkpoint import load_model, save_model
    from lightsv.edge.export import export_checkpoint, set_metadata, write

    net, extra = load_model(model, return_extra=True)
    keep = {k: extra[k] for k in ("training_config", "features", "steps", "eer") if k in extra}
    dest = Path(dest)
    pt = save_model(net, dest.with_suffix(".pt"), half=True, **keep)
    shipped = Countermeasure.load(pt, backend="torch", threshold=0.0)
    scores = np.array([shipped.score_wav(w) for w in wavs])
    cal = calibration(scores, labels, fars=list(fars), trials=trials)
    cal["kind"] = "countermeasure"  # scores are logits of bona fide; label 1 = bona fide
    write_calibration(pt, cal)
    # from the saved file, whose metadata (the filterbank it learnt on, the calibration) the export carries
    onnx_path = export_checkpoint(pt, dest.with_suffix(".onnx"))
    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props["kind"] = "countermeasure"
    set_metadata(proto, props)
    write(proto, onnx_path)
    exported = Countermeasure.load(onnx_path, backend="onnx")
    # the calibration written since changes no weight: the torch scores above are the shipped file's
    diff = max(abs(score - exported.score_wav(w)) for score, w in zip(scores[:20], wavs[:20], strict=True))
    return {
        "checkpoint": str(pt),
        "checkpoint_bytes": pt.stat().st_size,
        "onnx": str(onnx_path),
        "onnx_bytes": onnx_path.stat().st_size,
        "threshold": cal["eer_threshold"],
        "calibration_eer": cal["eer"],
        "onnx_vs_torch_max_abs_diff": diff,
    }
