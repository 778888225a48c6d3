"""Join side-network countermeasures trained on one trunk into one (the mean of their logits).

    python local/ensemble.py DEST.pt A/model.pt B/model.pt [...]

The trunk still runs once; each member adds its side network (58k parameters). Ship DEST.pt with
local/ship.py like a single CM.
"""

import argparse
import sys

from lightsv.errors import LightsvError
from lightsv.spoof.models import ensemble


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest")
    parser.add_argument("members", nargs="+")
    args = parser.parse_args()
    try:
        print(ensemble(args.members, args.dest))
    except LightsvError as err:
        print(f"ensemble: error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
