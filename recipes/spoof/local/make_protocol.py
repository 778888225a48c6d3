"""Stage 0 of recipes/spoof: the spoof set's protocol plus bona fide clips of the speech corpus.

Every real recording in shared/data/speech is bona fide; the WORLD-vocoded VCTK clips
(source vctk-world-mscproject) are spoofs and are already in the spoof protocol, as are the raw VCTK
clips. Extra bona fide clips are drawn evenly over speakers, at most --per-source from each source
family, and keep the speech corpus's speaker split (train speakers train; dev speakers go to split
`dev_speech`, outside the spoof set's own dev split that the goals are measured on).

    python local/make_protocol.py DATA_ROOT OUT.csv [--per-source 120] [--dev-per-source 40]
"""

import argparse
import csv
import random
from collections import defaultdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="shared/data")
    parser.add_argument("out")
    parser.add_argument("--per-source", type=int, default=120)
    parser.add_argument("--dev-per-source", type=int, default=40)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args()
    root = Path(args.root)
    rows = list(csv.DictReader((root / "spoof" / "protocol.csv").open()))
    taken = {r["path"] for r in rows}
    split_of = {r["speaker"]: r["split"] for r in csv.DictReader((root / "speech" / "splits.csv").open())}
    # source -> split -> speaker -> paths
    pool: dict = defaultdict(lambda: defaultdict(lambda: defaultdict(list)))
    for r in csv.DictReader((root / "speech" / "manifest.csv").open()):
        path = f"speech/{r['path']}"
        if r["source"] == "vctk-world-mscproject" or path in taken:
            continue
        family = r["source"].split("-")[0]  # both LibriSpeech sources are one family
        pool[family][split_of[r["speaker"]]][r["speaker"]].append(path)
    rng = random.Random(args.seed)
    extra = []
    for family in sorted(pool):
        for split, cap, name in (("train", args.per_source, "train"), ("dev", args.dev_per_source, "dev_speech")):
            speakers = {s: sorted(p) for s, p in sorted(pool[family][split].items())}
            for paths in speakers.values():
                rng.shuffle(paths)
            picked: list[tuple[str, str]] = []
            while len(picked) < cap and any(speakers.values()):  # round-robin over speakers
                for speaker, paths in speakers.items():
                    if paths and len(picked) < cap:
                        picked.append((speaker, paths.pop()))
            extra += [
                {"path": p, "speaker": s, "system": "bonafide", "label": "bonafide", "split": name} for s, p in picked
            ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "speaker", "system", "label", "split"])
        writer.writeheader()
        writer.writerows(rows + extra)
    counts: dict = defaultdict(int)
    for r in rows + extra:
        counts[(r["split"], r["label"])] += 1
    print(f"{out}: " + ", ".join(f"{s} {lab} {n}" for (s, lab), n in sorted(counts.items())))


if __name__ == "__main__":
    main()
