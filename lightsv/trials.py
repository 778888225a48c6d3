"""Trial lists (VoxCeleb1 format), kept free of torch so the onnx runtime can score them."""

from __future__ import annotations

import os
from dataclasses import dataclass

from lightsv.errors import ConfigError


@dataclass(frozen=True)
class Trial:
    label: int
    enroll: str
    test: str


def read_trials(path: str | os.PathLike) -> list[Trial]:
    """A VoxCeleb1 trial list: `<1|0> <enroll> <test>` per line (blank and `#` lines skipped)."""
    trials = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"trial list {path}: cannot read it ({getattr(err, 'strerror', None) or err})") from None
    for number, line in enumerate(lines, 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if len(fields) != 3 or fields[0] not in ("0", "1"):
            raise ConfigError(
                f"trial list {path}, line {number}: expected '<1|0> <enroll> <test>', got {line.strip()[:80]!r}"
            )
        trials.append(Trial(int(fields[0]), fields[1], fields[2]))
    if not trials:
        raise ConfigError(f"trial list {path}: no trials")
    return trials
