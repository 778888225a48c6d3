"""`lightsv import TOOLKIT SOURCE --out model.pt`: arguments and work (torch is imported only to run)."""

from __future__ import annotations

import argparse
from pathlib import Path

from lightsv.errors import ConfigError
from lightsv.importers import TOOLKITS

SOURCES = {
    "speechbrain": "the release directory: hyperparams.yaml, embedding_model.ckpt (mean_var_norm_emb.ckpt optional)",
    "wespeaker": "the release directory (config.yaml, avg_model.pt) or its avg_model.pt",
    "3dspeaker": "the ECAPA-TDNN model file as released (ecapa_tdnn.bin, ecapa-tdnn.ckpt) or its directory",
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("toolkit", choices=TOOLKITS, metavar="TOOLKIT", help=f"one of: {', '.join(TOOLKITS)}")
    parser.add_argument("source", metavar="SOURCE", help="; ".join(f"{k}: {v}" for k, v in SOURCES.items()))
    parser.add_argument("--out", required=True, metavar="CKPT", help="the lightsv checkpoint to write (.pt)")
    parser.add_argument(
        "--embedding-norm",
        action="store_true",
        help="speechbrain: also subtract the global embedding mean of mean_var_norm_emb.ckpt "
        "(encode_batch(normalize=True); SpeechBrain's verify_batch does not)",
    )


def run(args: argparse.Namespace) -> int:
    from lightsv.importers import import_model

    out = Path(args.out)
    if out.is_dir() or not out.parent.is_dir():
        raise ConfigError(f"--out {out}: need a file name in an existing directory")
    options = {"embedding_norm": True} if args.embedding_norm else {}
    if options and args.toolkit != "speechbrain":
        raise ConfigError("--embedding-norm applies to speechbrain imports only")
    model, extra = import_model(args.toolkit, args.source, out=out, **options)
    params = sum(p.numel() for p in model.parameters())
    style = extra["features"]["style"]
    print(f"{out}: {args.toolkit} {getattr(model, 'model_name', '')} ({params:,} parameters, {style} filterbank)")
    return 0
