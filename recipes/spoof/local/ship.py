"""Ship a trained countermeasure: calibrate its threshold, write it into the package with float16
weights, export it to ONNX (filterbank in the graph) and check the two agree.

    python local/ship.py EXP/model.pt [--protocol data/protocol.csv] [--root ../../../shared/data]
        [--dest ../../lightsv/assets/countermeasure]      # writes DEST.pt and DEST.onnx

The threshold is the EER point of the CM's scores on the development data: the spoof set's dev
split plus the real recordings of the speech corpus's dev speakers (split dev_speech), so that it
is not set by 22 bona fide clips alone.
"""

import argparse
import csv
import json
import os
from pathlib import Path

import numpy as np

import lightsv
from lightsv.audio import load
from lightsv.calibrate import calibration
from lightsv.spoof.countermeasure import Countermeasure
from lightsv.spoof.data import BONAFIDE, read_protocol


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--protocol", default="data/protocol.csv")
    parser.add_argument("--root", default="../../../shared/data")
    parser.add_argument("--dest", default="../../lightsv/assets/countermeasure")
    args = parser.parse_args()
    cm = Countermeasure.load(args.model, backend="torch", threshold=0.0)
    dev = read_protocol(args.protocol, args.root, "dev")
    speech = [r["path"] for r in csv.DictReader(open(args.protocol)) if r["split"] == "dev_speech"]
    paths = [e.path for e in dev] + [os.path.join(args.root, p) for p in speech]
    labels = [int(e.label == BONAFIDE) for e in dev] + [1] * len(speech)
    wavs = [load(p) for p in paths]
    scores = np.array([cm.score_wav(w) for w in wavs])
    cal = calibration(scores, labels, fars=[0.01], trials=f"{args.protocol}: dev + dev_speech bona fide")
    cal["kind"] = "countermeasure"  # scores are logits of bona fide; label 1 = bona fide
    model, extra = lightsv.load_model(args.model, return_extra=True)
    keep = {k: extra[k] for k in ("training_config", "steps", "eer") if k in extra}
    dest = Path(args.dest)
    pt = lightsv.save_model(model, dest.with_suffix(".pt"), half=True, calibration=cal, **keep)

    from lightsv.edge.export import export_checkpoint, set_metadata, write

    # from the saved file, whose metadata (the filterbank it learnt on, the calibration) the export carries
    onnx_path = export_checkpoint(pt, dest.with_suffix(".onnx"))
    import onnx

    proto = onnx.load(str(onnx_path))
    props = {p.key: p.value for p in proto.metadata_props}
    props["kind"] = "countermeasure"
    set_metadata(proto, props)
    write(proto, onnx_path)
    shipped = Countermeasure.load(pt, backend="torch")
    exported = Countermeasure.load(onnx_path, backend="onnx")
    diff = max(abs(shipped.score_wav(w) - exported.score_wav(w)) for w in wavs[:20])
    print(
        json.dumps(
            {
                "checkpoint": str(pt),
                "checkpoint_bytes": pt.stat().st_size,
                "onnx": str(onnx_path),
                "onnx_bytes": onnx_path.stat().st_size,
                "threshold": cal["eer_threshold"],
                "calibration_eer": cal["eer"],
                "onnx_vs_torch_max_abs_diff": diff,
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
