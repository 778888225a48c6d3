"""`python -m lightsv.spoof CONFIG [--set key=value ...]`: the entries a countermeasure config trains
and is evaluated on, per split and spoofing system (stage 1 of recipes/spoof)."""

from __future__ import annotations

import argparse
import sys
from collections import Counter

from lightsv.errors import LightsvError
from lightsv.spoof.data import entries
from lightsv.train.config import load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m lightsv.spoof", description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        if config.spoof is None:
            raise LightsvError(f"{args.config}: no spoof section")
        for which in ("train", "dev"):
            found = entries(config.spoof, config.data.root, which)
            systems = Counter(e.system for e in found)
            speakers = len({e.speaker for e in found})
            print(
                f"{which}: {len(found)} clips of {speakers} speakers; "
                + ", ".join(f"{k} {v}" for k, v in sorted(systems.items()))
            )
    except LightsvError as err:
        print(f"lightsv.spoof: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
