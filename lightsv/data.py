"""Training data: VoxCeleb-layout scanning, speaker splits, trial lists, random crops, balanced batches.

Every random choice (which speakers, which clips, where a crop starts, how it is augmented) comes
from a seed derived from (run seed, epoch, batch, position), never from a global generator, so a
run is the same whatever the number of loader workers and resumes at any batch exactly.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from lightsv.audio import SAMPLE_RATE, load
from lightsv.errors import ConfigError
from lightsv.trials import Trial, read_trials  # noqa: F401  (torch-free; re-exported here)

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".opus", ".mp3")
UNLABELED = -1


@dataclass(frozen=True)
class Utterance:
    path: str  # as found on disk (absolute when the root was)
    key: str  # relative to the scanned root, "/"-separated: <speaker>/<session>/<utt>.<ext>
    speaker: str
    session: str


def scan(root: str | os.PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[Utterance]:
    """Every `<root>/<speaker>/<session>/<utt>.<ext>`, sorted by key; deeper or shallower files are ignored."""
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"data folder {root}: not a directory")
    extensions = tuple(e.lower() for e in extensions)
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):  # corpora are often symlinked in
        dirnames.sort()
        rel = Path(dirpath).relative_to(root).parts
        if len(rel) != 2:
            continue
        for name in sorted(filenames):
            if name.lower().endswith(extensions):
                found.append(Utterance(str(Path(dirpath) / name), "/".join((*rel, name)), rel[0], rel[1]))
    if not found:
        raise ConfigError(f"data folder {root}: no <speaker>/<session>/<utt>{{{','.join(extensions)}}} files")
    return sorted(found, key=lambda u: u.key)


def find_audio(root: str | os.PathLike, extensions: Iterable[str] = AUDIO_EXTENSIONS) -> list[str]:
    """Audio files anywhere under `root`, sorted (clips without speaker labels)."""
    suffixes = tuple(e.lower() for e in extensions)
    found = [
        str(Path(d) / n)
        for d, _, names in os.walk(os.fspath(root), followlinks=True)
        for n in names
        if n.lower().endswith(suffixes)
    ]
    return sorted(found)


def read_list(path: str | os.PathLike) -> list[str]:
    """Audio paths, one a line; relative ones are relative to the list file's folder."""
    path = Path(path)
    base = path.parent
    with open(path) as f:
        return [
            str(base / line) if not os.path.isabs(line) else line
            for line in (raw.strip() for raw in f)
            if line and not line.startswith("#")
        ]


def read_splits(path: str | os.PathLike) -> dict[str, str]:
    """speaker -> split name, from a csv with a `speaker,split` header."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if not reader.fieldnames or not {"speaker", "split"} <= set(reader.fieldnames):
            raise ConfigError(f"split file {path}: needs a 'speaker,split' header, found {reader.fieldnames}")
        return {row["speaker"]: row["split"] for row in reader}


def select_split(
    utterances: Sequence[Utterance], splits: dict[str, str] | str | os.PathLike | None, split: str | None
) -> list[Utterance]:
    """The utterances of speakers in `split`; all of them when `splits` or `split` is None."""
    if splits is None or split is None:
        return list(utterances)
    if not isinstance(splits, dict):
        splits = read_splits(splits)
    chosen = [u for u in utterances if splits.get(u.speaker) == split]
    if not chosen:
        raise ConfigError(f"no utterance belongs to split {split!r}")
    return chosen


def num_samples(path: str) -> int:
    """Length at 16 kHz, from the header (no decoding)."""
    meta = sf.info(path)
    return int(round(meta.frames * SAMPLE_RATE / meta.samplerate))


@dataclass(frozen=True)
class Clip:
    path: str
    label: int  # class index, or UNLABELED for clips used only through the teacher


@dataclass(frozen=True)
class Segment:
    """Samples [start, stop) of one source clip that a crop contains, for mapping to teacher windows."""

    path: str
    start: int
    stop: int


def mix_seed(*parts: int) -> int:
    """A 63-bit seed from integers, stable across processes and Python versions (not `hash`)."""
    return int(np.random.SeedSequence([int(p) & 0xFFFFFFFF for p in parts]).generate_state(1, np.uint64)[0]) >> 1


class CropDataset(torch.utils.data.Dataset):
    """Fixed-length random crops of `clips`, indexed by `(clip index, seed)` pairs from a sampler.

    A clip shorter than the crop is joined with other clips of the same speaker (`short="join"`;
    unlabeled clips and single-clip speakers fall back to repeating) or repeated (`short="repeat"`).
    `augment(wav, rng)` and `speed(rng)` come from lightsv.train.augment; `target(segments)` (the teacher)
    maps the crop to a teacher embedding.  With `keep_clean` the crop before `augment` (after any
    speed change) comes too, for a teacher run in the training loop.  Items: wav [N] float32, label,
    target [D], target weight, clean wav [N] (empty without `keep_clean`).
    """

    def __init__(
        self,
        clips: Sequence[Clip],
        crop_seconds: float,
        *,
        short: str = "join",
        preload: bool = True,
        augment: Callable | None = None,
        target: Callable[[list[Segment]], np.ndarray] | None = None,
        target_dim: int = 0,
        speed: Callable | None = None,
        num_labels: int = 0,
        keep_clean: bool = False,
    ):
        if short not in ("join", "repeat"):
            raise ConfigError(f"short clips: use 'join' or 'repeat', not {short!r}")
        self.clips = list(clips)
        self.crop = int(round(crop_seconds * SAMPLE_RATE))
        self.short, self.augment, self.target, self.target_dim, self.speed = short, augment, target, target_dim, speed
        self.keep_clean = keep_clean
        self.num_labels = num_labels or (max((c.label for c in self.clips), default=-1) + 1)
        self.preload = preload
        self._audio: dict[int, np.ndarray] = {}
        self.by_label: dict[int, list[int]] = {}
        for i, clip in enumerate(self.clips):
            if clip.label != UNLABELED:
                self.by_label.setdefault(clip.label, []).append(i)
        if preload:
            for i in range(len(self.clips)):
                self.audio(i)

    def __len__(self) -> int:
        return len(self.clips)

    def audio(self, index: int) -> np.ndarray:
        wav = self._audio.get(index)
        if wav is None:
            # short clips are kept too: joining makes them usable
            wav = load(self.clips[index].path, min_seconds=0.0)
            if self.preload:
                # int16 halves the memory of a preloaded corpus; the files are 16-bit anyway
                self._audio[index] = np.clip(np.round(wav * 32768.0), -32768, 32767).astype(np.int16)
                return wav
        return wav.astype(np.float32) / 32768.0 if wav.dtype == np.int16 else wav

    def random_crop(self, rng: np.random.Generator, length: int | None = None) -> np.ndarray:
        """A crop of a random clip (babble material for augmentation)."""
        length = length or self.crop
        wav, _ = self._crop(int(rng.integers(len(self.clips))), length, rng, join=False)
        return wav

    def __getitem__(self, item: tuple[int, int] | tuple[int, int, int]):
        index, seed, *length = item  # a sampler may set the crop length (samples) per batch
        crop = length[0] if length else self.crop
        rng = np.random.default_rng(seed)
        clip = self.clips[index]
        factor_index, factor = self.speed(rng) if self.speed else (0, 1.0)
        need = int(math.ceil(crop * factor))
        wav, segments = self._crop(index, need, rng, join=self.short == "join" and clip.label != UNLABELED)
        if factor != 1.0:
            from lightsv.train.augment import change_speed

            wav = change_speed(wav, factor, crop)
        clean = np.ascontiguousarray(wav, np.float32) if self.keep_clean else np.zeros(0, np.float32)
        if self.augment is not None:
            wav = self.augment(wav, rng)
        label = clip.label
        if label != UNLABELED and factor_index:
            label += factor_index * self.num_labels  # a sped-up voice counts as another speaker
        target = np.zeros(self.target_dim, np.float32)
        weight = 0.0
        # the teacher heard the clip at its own speed; a changed voice has no target
        if self.target is not None and factor == 1.0:
            target, weight = self.target(segments).astype(np.float32), 1.0
        return (
            torch.from_numpy(np.ascontiguousarray(wav, np.float32)),
            label,
            torch.from_numpy(target),
            weight,
            torch.from_numpy(clean),
        )

    def _crop(self, index: int, length: int, rng: np.random.Generator, join: bool):
        pieces: list[np.ndarray] = []
        segments, total = [], 0
        first = self.audio(index)
        order = [index]
        if join and len(first) < length:
            others = [i for i in self.by_label.get(self.clips[index].label, []) if i != index]
            order += [others[j] for j in rng.permutation(len(others))]
        # one pass over the speaker's clips, then repeats, until the crop is full
        k = 0
        while total < length or not pieces:
            i = order[k % len(order)]
            wav = first if i == index else self.audio(i)
            pieces.append(wav)
            segments.append(Segment(self.clips[i].path, 0, len(wav)))
            total += len(wav)
            k += 1
        joined = np.concatenate(pieces) if len(pieces) > 1 else pieces[0]
        start = int(rng.integers(len(joined) - length + 1))
        return joined[start : start + length], _clip_segments(segments, start, start + length)


def _clip_segments(segments: list[Segment], start: int, stop: int) -> list[Segment]:
    """The parts of consecutive `segments` that fall inside [start, stop) of their concatenation."""
    out, offset = [], 0
    for s in segments:
        size = s.stop - s.start
        lo, hi = max(start, offset), min(stop, offset + size)
        if hi > lo:
            out.append(Segment(s.path, s.start + lo - offset, s.start + hi - offset))
        offset += size
    return out


def collate(batch):
    wavs, labels, targets, weights, clean = zip(*batch, strict=True)
    return (
        torch.stack(wavs),
        torch.tensor(labels, dtype=torch.long),
        torch.stack(targets),
        torch.tensor(weights, dtype=torch.float32),
        torch.stack(clean),
    )


class BalancedBatchSampler(torch.utils.data.Sampler):
    """Batches of `(clip index, seed)`: speakers drawn uniformly, then `per_speaker` clips of each.

    Each global batch has `batch_size * world_size` items, speakers without replacement within
    it when there are enough, plus `unlabeled` teacher-only clips per rank drawn uniformly; rank r
    takes its own slice, so the union over ranks is the same global batch whatever the world size.
    With `crop_range=(low, high)` (samples) every batch draws one crop length in it and its items
    are `(clip index, seed, length)`: test clips are as short as 1 s, and a model only ever shown
    2 s crops, or 1 s clips joined into 2 s, has not learnt them.
    Batch b of epoch e depends only on (seed, e, b): `set_epoch(e, start=b)` resumes mid-epoch.
    """

    def __init__(
        self,
        labels: Sequence[int],
        batch_size: int,
        batches_per_epoch: int,
        *,
        per_speaker: int = 1,
        unlabeled: int = 0,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        crop_range: tuple[int, int] | None = None,
    ):
        label_array = np.asarray(labels)
        if batch_size < 1 or unlabeled < 0 or unlabeled >= batch_size:
            raise ConfigError(f"batch size {batch_size} must exceed the unlabeled clips per batch ({unlabeled})")
        if per_speaker < 1 or (batch_size - unlabeled) % per_speaker:
            raise ConfigError(
                f"labelled clips per batch ({batch_size - unlabeled}) must be a multiple of per_speaker ({per_speaker})"
            )
        self.speakers = [np.flatnonzero(label_array == s) for s in np.unique(label_array[label_array != UNLABELED])]
        self.unlabeled_index = np.flatnonzero(label_array == UNLABELED)
        if not self.speakers:
            raise ConfigError("no labelled clip to train on")
        if unlabeled and not len(self.unlabeled_index):
            unlabeled = 0  # nothing to draw from: fill the batch with labelled clips instead
        self.batch_size, self.batches, self.per_speaker, self.unlabeled = (
            batch_size,
            batches_per_epoch,
            per_speaker,
            unlabeled,
        )
        self.seed, self.rank, self.world_size, self.crop_range = seed, rank, world_size, crop_range
        self.epoch, self.start = 0, 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        return self.batches - self.start

    def batch(self, number: int) -> list[tuple[int, int]]:
        rng = np.random.default_rng(mix_seed(self.seed, self.epoch, number))
        labelled = (self.batch_size - self.unlabeled) * self.world_size
        n_speakers = labelled // self.per_speaker
        who = rng.choice(len(self.speakers), n_speakers, replace=n_speakers > len(self.speakers))
        parts = [np.concatenate([rng.choice(self.speakers[s], self.per_speaker) for s in who])]
        if self.unlabeled:
            parts.append(rng.choice(self.unlabeled_index, self.unlabeled * self.world_size))
        # drawn last, so a fixed-length run picks the same clips
        length = (int(rng.integers(self.crop_range[0], self.crop_range[1] + 1)),) if self.crop_range else ()
        mine, offset = [], 0
        for part in parts:
            # a crop's seed follows its place in the global batch, so it does not depend on the rank
            mine += [
                (int(part[i]), mix_seed(self.seed, self.epoch, number, offset + i), *length)
                for i in range(self.rank, len(part), self.world_size)
            ]
            offset += len(part)
        return mine

    def __iter__(self):
        for number in range(self.start, self.batches):
            yield self.batch(number)
