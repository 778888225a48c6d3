"""Countermeasure protocols: ASVspoof `SPEAKER FILE - SYSTEM KEY` lines or CSV `path,speaker,system,label[,split]`."""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path

from lightsv.data import AUDIO_EXTENSIONS
from lightsv.errors import ConfigError

BONAFIDE, SPOOF = 1, 0  # class labels: the model's output is the logit of bona fide
LABELS = {"bonafide": BONAFIDE, "bona-fide": BONAFIDE, "spoof": SPOOF}


@dataclass(frozen=True)
class Entry:
    path: str  # absolute
    speaker: str
    system: str  # "bonafide" for bona fide entries
    label: int  # BONAFIDE or SPOOF
    split: str = ""


def read_protocol(path: str | os.PathLike, root: str | os.PathLike, split: str | None = None) -> list[Entry]:
    """Entries of a protocol file, audio resolved under `root`; `split` keeps one split (CSV only)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"protocol {path}: no such file")
    text = path.read_text()
    first = text.lstrip().split("\n", 1)[0]
    entries = _read_csv(path, text, root) if "," in first else _read_asvspoof(path, text, root)
    if split is not None:
        if any(e.split == "" for e in entries):
            raise ConfigError(f"protocol {path}: has no split column to select {split!r} from")
        entries = [e for e in entries if e.split == split]
    if not entries:
        raise ConfigError(f"protocol {path}: no entries{f' in split {split!r}' if split else ''}")
    if len({e.label for e in entries}) < 2:
        raise ConfigError(f"protocol {path}: needs both bona fide and spoof entries")
    return entries


def _label(value: str, where: str) -> int:
    if value.lower() not in LABELS:
        raise ConfigError(f"{where}: label {value!r} is neither bonafide nor spoof")
    return LABELS[value.lower()]


def _resolve(root: str | os.PathLike, name: str, where: str, guess_extension: bool) -> str:
    base = os.path.abspath(os.path.join(root, name))
    candidates = [base] if not guess_extension else [base + ext for ext in AUDIO_EXTENSIONS] + [base]
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    raise ConfigError(f"{where}: no audio file {name!r} under {root}")


def _read_csv(path: Path, text: str, root) -> list[Entry]:
    rows = list(csv.DictReader(text.splitlines()))
    need = {"path", "speaker", "system", "label"}
    header = set(rows[0]) if rows else set()
    if not need <= header:
        raise ConfigError(
            f"protocol {path}: CSV needs columns {', '.join(sorted(need))}; has {', '.join(sorted(header))}"
        )
    out = []
    for i, row in enumerate(rows, start=2):
        where = f"protocol {path} line {i}"
        label = _label(row["label"], where)
        system = "bonafide" if label == BONAFIDE else row["system"]
        out.append(
            Entry(_resolve(root, row["path"], where, False), row["speaker"], system, label, row.get("split") or "")
        )
    return out


def _read_asvspoof(path: Path, text: str, root) -> list[Entry]:
    out = []
    for i, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split()
        where = f"protocol {path} line {i}"
        if len(fields) != 5:
            raise ConfigError(f"{where}: expected 'SPEAKER FILE - SYSTEM KEY', got {line.strip()!r}")
        speaker, name, _, system, key = fields
        label = _label(key, where)
        out.append(
            Entry(_resolve(root, name, where, True), speaker, "bonafide" if label == BONAFIDE else system, label)
        )
    return out


@dataclass
class SpoofConfig:
    """The `spoof:` section of a training config: a countermeasure trains on these protocols."""

    protocol: str = ""  # training entries (CSV or ASVspoof); audio paths relative to data.root
    train_split: str | None = "train"  # CSV split column value; null: every entry trains (ASVspoof files)
    dev_protocol: str | None = None  # default: `protocol`
    dev_split: str | None = "dev"  # null: every entry of dev_protocol
    asv: str | None = "default"  # speaker model scoring the ASV trials of the t-DCF (a checkpoint); null: no t-DCF
    # Training draws every spoofing system equally often (small systems' clips repeated), so the
    # largest systems do not decide what "spoof" means; bona fide entries are untouched.
    balance_systems: bool = False
    # A countermeasure checkpoint whose scores the model also learns (e.g. an ensemble taught to one
    # network): binary cross-entropy towards its probabilities, weighted by teacher_weight against
    # the labels'. It must read what the model reads (the same filterbank or the waveform).
    teacher: str | None = None
    teacher_weight: float = 0.5

    def __post_init__(self) -> None:
        if not 0.0 <= self.teacher_weight <= 1.0:
            raise ConfigError(f"spoof.teacher_weight must be within [0, 1], got {self.teacher_weight}")


def balance_systems(entries: list[Entry]) -> list[Entry]:
    """Each spoofing system's entries repeated (whole copies, then the first ones again) up to the
    largest system's count; bona fide entries once."""
    by_system: dict[str, list[Entry]] = {}
    for e in entries:
        if e.label == SPOOF:
            by_system.setdefault(e.system, []).append(e)
    if not by_system:
        return list(entries)
    most = max(len(v) for v in by_system.values())
    out = [e for e in entries if e.label == BONAFIDE]
    for items in by_system.values():
        out += (items * (most // len(items) + 1))[:most]
    return out


def entries(config: SpoofConfig, root: str | os.PathLike, which: str) -> list[Entry]:
    """The "train" or "dev" entries a config describes (train entries balanced over spoofing systems
    when the config asks)."""
    if which == "train":
        train = read_protocol(config.protocol, root, config.train_split)
        return balance_systems(train) if config.balance_systems else train
    return read_protocol(config.dev_protocol or config.protocol, root, config.dev_split)
