"""Cost of every backbone, plain and behind the transformation module, side by side in one run.

    python benchmarks/backbones.py            # writes benchmarks/results/backbones.{json,md}

Ratios are against the plain backbone of the same row group; speechbrain's ECAPA-TDNN, where the
`lightsv[speechbrain]` extra is installed, is the outside peer for ECAPA-TDNN (same channels).
Latency is one 3 s utterance on one torch thread; the load average at the start is recorded since
other work on the machine inflates it.
"""

import argparse
import json
import os
import platform
import sys
from pathlib import Path

import torch

import lightsv
from lightsv.profile import profile, profile_table, profile_variants, with_ratios

VARIANTS = [{"subsets": 2}, {"subsets": 4}, {"subsets": 4, "share": True}]
BACKBONES = ["ecapa_tdnn", "resnet34", "amcrn"]
RESULTS = Path(__file__).parent / "results"


def speechbrain_ecapa():
    try:
        from speechbrain.lobes.models.ECAPA_TDNN import ECAPA_TDNN
    except Exception:  # noqa: BLE001  (missing extra, or torchaudio that does not load)
        return None

    class Peer(torch.nn.Module):
        feat_dim, embed_dim = 80, 192

        def __init__(self):
            super().__init__()
            self.model = ECAPA_TDNN(input_size=80, lin_neurons=192, channels=[512, 512, 512, 512, 1536])

        def forward(self, feats, lengths=None):
            return self.model(feats).squeeze(1)

    return Peer()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    load = os.getloadavg()[0]
    rows = []
    for name in BACKBONES:
        rows += profile_variants(name, VARIANTS, seconds=args.seconds, repeats=args.repeats)
    peer = speechbrain_ecapa()
    if peer is not None:
        result = profile(peer, seconds=args.seconds, repeats=args.repeats)
        ours = next(r for r in rows if r["name"] == "ecapa_tdnn")
        rows.append({"name": "speechbrain ECAPA_TDNN (peer)", "model": "speechbrain", **with_ratios(result, ours)})
    args.out.mkdir(parents=True, exist_ok=True)
    meta = {
        "command": "python benchmarks/backbones.py",
        "torch": torch.__version__,
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "load_average_at_start": load,
        "seconds": args.seconds,
        "threads": 1,
        "lightsv": lightsv.__version__,
    }
    (args.out / "backbones.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    table = profile_table(rows)
    (args.out / "backbones.md").write_text(
        f"Written by `{meta['command']}` (torch {meta['torch']}, {meta['cpus']} CPUs, load average "
        f"{load:.1f} at start; latency: one {args.seconds:g} s utterance, 1 thread, median of {args.repeats}).\n\n"
        "```\n" + table + "\n```\n"
    )
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
