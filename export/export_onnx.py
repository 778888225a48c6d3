"""Export a lightsv model to ONNX with the filterbank inside the graph: waveform in, embedding out.

    python export/export_onnx.py --checkpoint model.pt --out model.onnx
    python export/export_onnx.py --model amcrn_small --subsets 4 --out model.onnx   # untrained, for sizing

Inputs: `wav` [batch, samples] float32 at 16 kHz in [-1, 1] and `lengths` [batch] int64 (valid samples
per row); output: `embedding` [batch, dim]. Batch and samples are dynamic axes.
"""

import argparse
import sys

import torch
from torch import nn

import lightsv
from lightsv.features import Fbank


class EmbeddingGraph(nn.Module):
    """Waveform -> log-mel -> speaker embedding, one traceable module."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.fbank = Fbank()
        self.model = model

    def forward(self, wav: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        feats, frames = self.fbank(wav, lengths)
        return self.model(feats, frames)


def export(model: nn.Module, path: str, opset: int = 17) -> str:
    graph = EmbeddingGraph(model).eval()
    wav = torch.randn(2, 32000) * 0.1
    lengths = torch.tensor([32000, 24000])
    torch.onnx.export(
        graph,
        (wav, lengths),
        path,
        input_names=["wav", "lengths"],
        output_names=["embedding"],
        dynamic_axes={"wav": {0: "batch", 1: "samples"}, "lengths": {0: "batch"}, "embedding": {0: "batch"}},
        opset_version=opset,
        dynamo=False,
    )
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--checkpoint", help="a lightsv checkpoint")
    source.add_argument("--model", help=f"an untrained registered model: {', '.join(lightsv.MODELS)}")
    parser.add_argument("--subsets", type=int, help="wrap an untrained --model with the transformation module")
    parser.add_argument("--out", required=True)
    parser.add_argument("--opset", type=int, default=17)
    args = parser.parse_args(argv)
    try:
        model = lightsv.load_model(args.checkpoint) if args.checkpoint else lightsv.build_model(args.model)
        if args.subsets:
            lightsv.transform.apply(model, subsets=args.subsets)
        print(export(model, args.out, args.opset))
    except lightsv.LightsvError as err:
        print(f"export_onnx: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
