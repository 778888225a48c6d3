"""Export a lightsv model to ONNX with the filterbank inside the graph: waveform in, embedding out.

    python export/export_onnx.py --checkpoint model.pt --out model.onnx
    python export/export_onnx.py --model amcrn_small --subsets 4 --out model.onnx   # untrained, for sizing

A thin wrapper over `lightsv.edge.export` (also `lightsv export`, which adds --int8 and
--format sherpa-onnx). Inputs: `wav` [batch, samples] float32 at 16 kHz in [-1, 1] and `lengths`
[batch] int64; output: `embedding` [batch, dim]. Batch and samples are dynamic axes.
"""

import argparse
import sys

import lightsv
from lightsv.edge.export import ExportConfig
from lightsv.edge.export import WaveformEmbedder as EmbeddingGraph  # noqa: F401  (the name this script had)
from lightsv.edge.export import export as _export


def export(model, path: str, opset: int = 18, extra: dict | None = None) -> str:
    return str(_export(model, path, extra=extra, config=ExportConfig(opset=opset)))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a lightsv checkpoint")
    source.add_argument("--model", help=f"an untrained registered model: {', '.join(lightsv.MODELS)}")
    parser.add_argument("--subsets", type=int, help="wrap an untrained --model with the transformation module")
    parser.add_argument("--out", required=True)
    parser.add_argument("--opset", type=int, default=18)
    args = parser.parse_args(argv)
    try:
        extra = None
        if args.checkpoint:
            model, extra = lightsv.load_model(args.checkpoint, return_extra=True)
        else:
            model = lightsv.build_model(args.model)
        if args.subsets:
            lightsv.transform.apply(model, subsets=args.subsets)
        print(export(model, args.out, args.opset, extra))
    except lightsv.LightsvError as err:
        print(f"export_onnx: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
