"""Teacher embeddings for distillation, computed once and cached: per utterance and per window.

The default teacher is resemblyzer's GE2E encoder (optional dependency, imported on use).  It
embeds 1.6 s windows at a fixed rate; a training crop is mapped to the mean of the windows it
overlaps, each weighted by the fraction of the window inside the crop, so a crop's target comes
from the audio it actually contains without running the teacher during training.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch

from lightsv.audio import load
from lightsv.errors import ConfigError

CACHE_VERSION = 1


def _normalise(x: np.ndarray) -> np.ndarray:
    norm = np.linalg.norm(x)
    return x / norm if norm > 0 else x


class ResemblyzerTeacher:
    """`embed(wav) -> (utterance embedding [D], window embeddings [W, D], window starts, window stops)`."""

    def __init__(self, rate: float = 2.0, device: str = "cpu"):
        try:
            from resemblyzer import VoiceEncoder
            from resemblyzer.audio import normalize_volume
        except ImportError as err:
            raise ConfigError(
                "the resemblyzer teacher needs the optional 'teacher' extra (python -m lightsv.extras teacher)"
            ) from err
        self.encoder = VoiceEncoder(device, verbose=False)
        self.rate = rate
        self._normalise_volume = normalize_volume
        self.name = "resemblyzer"

    def embed(self, wav: np.ndarray):
        # only the volume step of resemblyzer's preprocessing: trimming silences would move the
        # windows away from the sample positions that crops are cut at
        wav = self._normalise_volume(wav, -30, increase_only=True)
        utt, partials, slices = self.encoder.embed_utterance(wav, return_partials=True, rate=self.rate)
        return utt, partials, np.array([s.start for s in slices]), np.array([s.stop for s in slices])


class TeacherCache:
    """Cached teacher embeddings, keyed by audio path (as given when the cache was built)."""

    def __init__(
        self,
        keys: Sequence[str],
        utterance: np.ndarray,
        windows: np.ndarray,
        offsets: np.ndarray,
        starts: np.ndarray,
        stops: np.ndarray,
        lengths: np.ndarray,
        meta: dict | None = None,
    ):
        self.keys = list(keys)
        self.index = {k: i for i, k in enumerate(self.keys)}
        self.utterance, self.windows = utterance.astype(np.float32), windows.astype(np.float32)
        self.offsets, self.starts, self.stops = offsets, starts, stops
        self.lengths, self.meta = lengths, dict(meta or {})
        # subtracted from crop targets when set: GE2E embeddings are non-negative, so a large shared
        # component would otherwise dominate the cosine a student is trained on
        self.center: np.ndarray | None = None

    def centre(self) -> TeacherCache:
        """Make crop targets relative to the mean utterance embedding of the cache."""
        self.center = self.utterance.mean(axis=0)
        return self

    @property
    def dim(self) -> int:
        return self.utterance.shape[1]

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.keys)

    def embedding(self, key: str) -> np.ndarray:
        return self.utterance[self._find(key)]

    def crop(self, key: str, start: int, stop: int) -> tuple[np.ndarray, float]:
        """(unnormalised weighted sum of the windows over samples [start, stop), total weight)."""
        i = self._find(key)
        lo, hi = self.offsets[i], self.offsets[i + 1]
        # a window past the end of the clip was zero-padded: only its real samples count
        w_start, w_stop = self.starts[lo:hi], np.minimum(self.stops[lo:hi], max(self.lengths[i], 1))
        overlap = np.clip(np.minimum(w_stop, stop) - np.maximum(w_start, start), 0, None)
        weight = overlap / np.maximum(w_stop - w_start, 1)
        if weight.sum() <= 0:
            return self.utterance[i] * (stop - start), float(stop - start)
        return weight @ self.windows[lo:hi], float(weight.sum())

    def target(self, segments) -> np.ndarray:
        """Unit-length teacher embedding of a crop made of `segments` (path, start, stop), each
        counted in proportion to its length."""
        total = np.zeros(self.dim, np.float64)
        for s in segments:
            vec, weight = self.crop(s.path, s.start, s.stop)
            total += _normalise(vec / weight) * (s.stop - s.start) if weight > 0 else 0.0
        total = _normalise(total)
        if self.center is not None:
            total = _normalise(total - self.center)
        return total.astype(np.float32)

    def _find(self, key: str) -> int:
        try:
            return self.index[key]
        except KeyError:
            raise ConfigError(f"teacher cache has no entry for {key}; rebuild it with the current data") from None

    def save(self, path: str | os.PathLike) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".npz")
        os.close(fd)
        try:
            np.savez(
                tmp,
                keys=np.array(self.keys, dtype=str),
                utterance=self.utterance,
                windows=self.windows,
                offsets=self.offsets,
                starts=self.starts,
                stops=self.stops,
                lengths=self.lengths,
                meta=np.array(json.dumps({**self.meta, "version": CACHE_VERSION})),
            )
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> TeacherCache:
        try:
            with np.load(path, allow_pickle=False) as f:
                meta = json.loads(str(f["meta"]))
                if meta.get("version") != CACHE_VERSION:
                    raise ConfigError(f"teacher cache {path}: version {meta.get('version')}, expected {CACHE_VERSION}")
                return cls(
                    f["keys"].tolist(),
                    f["utterance"],
                    f["windows"],
                    f["offsets"],
                    f["starts"],
                    f["stops"],
                    f["lengths"],
                    meta,
                )
        except (OSError, KeyError, ValueError) as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"teacher cache {path}: unreadable ({err})") from None


def build_cache(
    paths: Iterable[str], teacher=None, existing: TeacherCache | None = None, progress: bool = True
) -> TeacherCache:
    """Embed every path with `teacher` (default: ResemblyzerTeacher()); entries of `existing` are reused.

    `teacher.embed(wav)` returns (utterance [D], windows [W, D], window starts, window stops) in samples.
    """
    paths = list(dict.fromkeys(paths))
    teacher = teacher or ResemblyzerTeacher()
    utts, windows, starts, stops, lengths, counts = [], [], [], [], [], []
    if progress:
        from tqdm import tqdm

        iterator = tqdm(paths, desc="teacher", unit="utt")
    else:
        iterator = paths
    for path in iterator:
        if existing is not None and path in existing:
            i = existing.index[path]
            lo, hi = existing.offsets[i], existing.offsets[i + 1]
            utt, win, st, sp, n = (
                existing.utterance[i],
                existing.windows[lo:hi],
                existing.starts[lo:hi],
                existing.stops[lo:hi],
                existing.lengths[i],
            )
        else:
            wav = load(path, min_seconds=0.0)
            utt, win, st, sp = teacher.embed(wav)
            n = len(wav)
        utts.append(np.asarray(utt, np.float32))
        windows.append(np.asarray(win, np.float32).reshape(len(st), -1))
        starts.append(np.asarray(st, np.int64))
        stops.append(np.asarray(sp, np.int64))
        lengths.append(int(n))
        counts.append(len(st))
    if not utts:
        raise ConfigError("teacher cache: no audio to embed")
    meta = {"teacher": getattr(teacher, "name", type(teacher).__name__), "rate": getattr(teacher, "rate", None)}
    return TeacherCache(
        paths,
        np.stack(utts),
        np.concatenate(windows),
        np.concatenate([[0], np.cumsum(counts)]),
        np.concatenate(starts),
        np.concatenate(stops),
        np.array(lengths, np.int64),
        meta,
    )


class OnlineTeacher(torch.nn.Module):
    """resemblyzer's GE2E encoder run on training crops as they are drawn, whole batches at once.

    Cached windows can only describe the audio as recorded; run inside the training loop the
    teacher also labels crops the cache never saw (sped-up voices, every crop position), so a
    student can be taught on far more distinct voices than the corpus holds.  The mel front-end is
    resemblyzer's (librosa's power mel, 25 ms / 10 ms, 40 bands, no log) written in torch; a crop
    longer than the teacher's 1.6 s window is embedded as the mean of evenly spaced windows, as
    resemblyzer embeds an utterance.  `forward(wav [B, N]) -> unit embeddings [B, 256]`.
    """

    WINDOW = 160  # frames per teacher window (1.6 s)
    mel: torch.Tensor  # buffers
    window: torch.Tensor
    center: torch.Tensor

    def __init__(self):
        super().__init__()
        try:
            import librosa
            from resemblyzer import VoiceEncoder
        except ImportError as err:
            raise ConfigError(
                "the resemblyzer teacher needs the optional 'teacher' extra (python -m lightsv.extras teacher)"
            ) from err
        self.encoder = VoiceEncoder("cpu", verbose=False).eval()
        for p in self.encoder.parameters():
            p.requires_grad_(False)
        self.register_buffer("mel", torch.from_numpy(librosa.filters.mel(sr=16000, n_fft=400, n_mels=40)).float())
        self.register_buffer("window", torch.hann_window(400, periodic=True))
        self.register_buffer("center", torch.zeros(0))
        self.name, self.dim = "resemblyzer", self.encoder.linear.out_features

    def centre(self, wav: torch.Tensor) -> OnlineTeacher:
        """Make targets relative to the mean embedding of the crops `wav` (see TeacherCache.centre)."""
        self.center = self(wav).mean(0)
        return self

    def target(self, wav: torch.Tensor) -> torch.Tensor:
        emb = self(wav)
        return torch.nn.functional.normalize(emb - self.center, dim=1) if self.center.numel() else emb

    def mels(self, wav: torch.Tensor) -> torch.Tensor:
        # resemblyzer raises quiet audio to -30 dBFS (never lowers it) before the mel
        rms = wav.pow(2).mean(dim=1, keepdim=True).sqrt().clamp(min=1e-8)
        wav = wav * (10.0 ** (-30.0 / 20.0) / rms).clamp(min=1.0)
        spec = (
            torch.stft(wav, 400, 160, window=self.window, center=True, pad_mode="constant", return_complex=True)
            .abs()
            .pow(2)
        )
        return (self.mel @ spec).transpose(1, 2)  # [B, T, 40]

    @torch.no_grad()
    def forward(self, wav: torch.Tensor) -> torch.Tensor:
        mels = self.mels(wav)
        frames = wav.shape[1] // 160
        if frames < self.WINDOW:
            # resemblyzer zero-pads a clip shorter than a window (the power mel of silence is 0)
            mels = mels[:, : self.WINDOW]
            return self.encoder(torch.nn.functional.pad(mels, (0, 0, 0, self.WINDOW - mels.shape[1])))
        mels = mels[:, :frames]  # the last centred frame is half padding: 1.6 s is exactly one window
        count = math.ceil((frames - self.WINDOW) / (self.WINDOW // 2)) + 1
        starts = torch.linspace(0, frames - self.WINDOW, count).round().long().tolist()
        windows = torch.cat([mels[:, s : s + self.WINDOW] for s in starts])  # [count * B, 160, 40]
        emb = self.encoder(windows).view(count, len(wav), -1).mean(0)
        return torch.nn.functional.normalize(emb, dim=1)
