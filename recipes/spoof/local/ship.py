"""Ship a trained countermeasure: calibrate its threshold, write it into the package with float16
weights, export it to ONNX (filterbank in the graph) and check the two agree (`lightsv.spoof.ship`).

    python local/ship.py EXP/model.pt [--protocol data/protocol.csv] [--root ../../../shared/data]
        [--dest ../../lightsv/assets/countermeasure]      # writes DEST.pt and DEST.onnx

The threshold is the EER point of the shipped file's scores on the development data: the spoof set's
dev split plus the real recordings of the speech corpus's dev speakers (split dev_speech), so that
it is not set by 22 bona fide clips alone.
"""

import argparse
import csv
import json
import os

from lightsv.audio import load
from lightsv.spoof.data import BONAFIDE, read_protocol
from lightsv.spoof.ship import ship


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--protocol", default="data/protocol.csv")
    parser.add_argument("--root", default="../../../shared/data")
    parser.add_argument("--dest", default="../../lightsv/assets/countermeasure")
    args = parser.parse_args()
    dev = read_protocol(args.protocol, args.root, "dev")
    speech = [r["path"] for r in csv.DictReader(open(args.protocol)) if r["split"] == "dev_speech"]
    paths = [e.path for e in dev] + [os.path.join(args.root, p) for p in speech]
    labels = [int(e.label == BONAFIDE) for e in dev] + [1] * len(speech)
    wavs = [load(p) for p in paths]
    summary = ship(args.model, wavs, labels, args.dest, trials=f"{args.protocol}: dev + dev_speech bona fide")
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
