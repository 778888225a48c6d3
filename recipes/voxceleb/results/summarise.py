"""Best dev EER of every recipe run kept here, read from its train.log: writes variants.md.

python recipes/voxceleb/results/summarise.py
"""

import re
from pathlib import Path

HERE = Path(__file__).resolve().parent
EVAL = re.compile(r"epoch (\d+)(?: \(stopped[^)]*\))?: dev EER ([\d.]+)% minDCF ([\d.]+)")


def main() -> None:
    rows = [
        "| run | dev evaluations | best dev EER % (epoch) | minDCF there | last dev EER % |",
        "|---|---|---|---|---|",
    ]
    for log in sorted(HERE.glob("**/train.log")):
        found = [(int(e), float(r), float(d)) for e, r, d in EVAL.findall(log.read_text())]
        if not found:
            continue
        epoch, eer, dcf = min(found, key=lambda x: x[1])
        name = log.parent.relative_to(HERE).as_posix()
        rows.append(f"| {name} | {len(found)} | {eer:.2f} ({epoch}) | {dcf:.3f} | {found[-1][1]:.2f} |")
    (HERE / "variants.md").write_text("\n".join(rows) + "\n")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
