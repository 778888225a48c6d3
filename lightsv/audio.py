"""Load audio as float32 mono at 16 kHz, from a file, a numpy array or a torch tensor.

Every unusable input raises :class:`~lightsv.errors.AudioError` naming the source and the problem.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Literal

import numpy as np
import soundfile as sf

from lightsv.errors import AudioError

SAMPLE_RATE = 16000
#: Longest input accepted, in seconds; files are checked before they are decoded, so memory stays bounded.
MAX_SECONDS = 600.0
#: Default shortest input, in seconds; models that need more context pass a larger ``min_seconds``.
MIN_SECONDS = 0.1
#: Highest input sample rate accepted (384 kHz: the top of studio audio).
MAX_RATE = 384_000

# Leading bytes of the containers soundfile reads: a file that starts like one of these but fails to
# open has a corrupt header, anything else is not audio at all.
_MAGIC = (
    b"RIFF",
    b"RIFX",
    b"RF64",
    b"FORM",
    b"fLaC",
    b"OggS",
    b"ID3",
    b"\xff\xfb",
    b"\xff\xfa",
    b"\xff\xf3",
    b"\xff\xf2",
    b".snd",
    b"caff",
    b"NIST",
)
_CORRUPT = "corrupt or truncated audio header"
_INT_SCALE = {np.dtype(np.int16): 2.0**15, np.dtype(np.int32): 2.0**31}


def central_crop(wav: np.ndarray, seconds: float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """The central `seconds` of `wav` (the whole of a shorter clip): how test segments are cut."""
    n = int(round(seconds * sample_rate))
    if len(wav) <= n:
        return wav
    start = (len(wav) - n) // 2
    return wav[start : start + n]


def info(path: str | os.PathLike) -> sf._SoundFileInfo:
    """soundfile's header information for ``path``, with every failure turned into an AudioError."""
    name = _path_name(path)
    if not os.path.exists(path):
        raise AudioError(f"{name}: no such file")
    if os.path.isdir(path):
        raise AudioError(f"{name}: is a directory, not an audio file")
    if os.path.getsize(path) == 0:
        raise AudioError(f"{name}: empty file (0 bytes)")
    try:
        os.fsdecode(path).encode("utf-8")
    except UnicodeError:  # libsndfile takes UTF-8 names; its error would call the file corrupt
        raise AudioError(f"{name}: the file name is not valid UTF-8 (the audio decoder needs it); rename it") from None
    try:
        return sf.info(os.fspath(path))
    except Exception as exc:
        problem = _open_problem(path)
        # libsndfile's own words add something only for a file that looks like audio.
        detail = f" ({_short(exc)})" if problem == _CORRUPT else ""
        raise AudioError(f"{name}: {problem}{detail}") from exc


def load(
    source, sample_rate: int | None = None, *, min_seconds: float = MIN_SECONDS, max_seconds: float = MAX_SECONDS
) -> np.ndarray:
    """Return ``source`` as a 1-D float32 array at :data:`SAMPLE_RATE`, multichannel averaged to mono.

    ``source`` is a path (any format soundfile reads: wav, flac, ogg, mp3, ...) or a numpy array /
    torch tensor, for which ``sample_rate`` is required; integer arrays (int16, int32) are scaled to
    [-1, 1].  A 2-D array may be frames x channels or channels x frames: the smaller axis is taken as
    channels.  For a file, ``sample_rate`` may be given only to assert the file's rate.
    """
    if isinstance(source, (str, os.PathLike)):
        name = _path_name(source)
        meta = info(source)
        if sample_rate is not None and _rate(sample_rate, name) != meta.samplerate:
            raise AudioError(f"{name}: sample rate is {meta.samplerate} Hz, expected {sample_rate} Hz")
        rate = meta.samplerate
        _check_truncation(source, meta, name)
        _check_duration(meta.frames, rate, name, min_seconds, max_seconds)
        _check_rate(rate, name)
        try:
            # frames= caps the read, in case the header under-reports the length.
            cap = int(max_seconds * rate) + 1 if math.isfinite(max_seconds) else -1
            x, _ = sf.read(os.fspath(source), dtype="float32", always_2d=True, frames=cap)
        except Exception as exc:
            raise AudioError(f"{name}: cannot decode audio ({_short(exc)})") from exc
        if len(x) < meta.frames and (cap < 0 or len(x) < cap):
            _truncated(name, meta.frames, len(x), rate)
        x = x.mean(axis=1) if x.shape[1] > 1 else x[:, 0]
    else:
        name, x = _as_array(source)
        if sample_rate is None:
            raise AudioError(f"{name}: sample_rate is required for in-memory audio")
        rate = _rate(sample_rate, name)
        x = _to_mono(x, name)
    _check_duration(len(x), rate, name, min_seconds, max_seconds)
    if not np.isfinite(x).all():
        raise AudioError(f"{name}: contains NaN or infinite samples")
    if rate != SAMPLE_RATE:
        # Imported here: scipy.signal costs ~70 MB and seconds to import, and most clips are 16 kHz already.
        from scipy.signal import resample_poly

        g = math.gcd(rate, SAMPLE_RATE)
        x = resample_poly(x, SAMPLE_RATE // g, rate // g)
    return np.ascontiguousarray(x, dtype=np.float32)


def chunk(samples, what: str = "stream samples") -> np.ndarray:
    """One chunk of a stream as float32 mono: 1-D (or [N, 1] / [1, N]) float samples, all finite.
    Streams take no integer PCM (scale it: samples / 32768), so a chunk is never scaled silently."""
    wav = np.asarray(samples)
    if wav.ndim == 2 and 1 in wav.shape:
        wav = wav.reshape(-1)
    if wav.ndim != 1:
        raise AudioError(f"{what} must be one channel, 1-D; got shape {wav.shape}")
    if wav.dtype.kind not in "fiu":
        raise AudioError(f"{what} must be numbers, got dtype {wav.dtype}")
    if wav.dtype.kind in "iu":
        raise AudioError(f"{what} must be float in [-1, 1] (convert integer PCM: samples / 32768)")
    wav = wav.astype(np.float32, copy=False)
    if not np.isfinite(wav).all():
        raise AudioError(f"{what} contain NaN or infinite values")
    return wav


def _as_array(source) -> tuple[str, np.ndarray]:
    torch = sys.modules.get("torch")  # a tensor can only exist if torch is already imported
    if torch is not None and isinstance(source, torch.Tensor):
        name = "tensor"
        t = source.detach().cpu()
        x = t.float().numpy() if t.is_floating_point() else t.numpy()
    elif isinstance(source, np.ndarray):
        name, x = "array", source
    else:
        raise AudioError(f"audio source of type {type(source).__name__}: expected a path, array or tensor")
    if x.dtype in _INT_SCALE:
        x = x.astype(np.float32) / _INT_SCALE[x.dtype]
    elif x.dtype.kind != "f":
        raise AudioError(f"{name}: unsupported dtype {x.dtype} (use float, int16 or int32)")
    return name, x.astype(np.float32, copy=False)


def _to_mono(x: np.ndarray, name: str) -> np.ndarray:
    if x.size == 0:
        raise AudioError(f"{name}: contains no samples")
    if x.ndim > 2:
        raise AudioError(f"{name}: has {x.ndim} dimensions, expected 1 (samples) or 2 (with channels)")
    if x.ndim == 2:
        # soundfile gives frames x channels, torchaudio channels x frames; channels are the fewer.
        x = x.mean(axis=0 if x.shape[0] < x.shape[1] else 1)
    return x


def _rate(sample_rate, name: str) -> int:
    try:
        ok = not isinstance(sample_rate, bool) and float(sample_rate).is_integer() and sample_rate > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise AudioError(f"{name}: bad sample_rate {sample_rate!r} (need a positive integer)")
    return _check_rate(int(sample_rate), name)


def _check_rate(rate: int, name: str) -> int:
    # resample_poly's filter grows with the rate's ratio to 16 kHz: a header claiming 10 MHz would
    # ask for gigabytes
    if rate > MAX_RATE:
        raise AudioError(f"{name}: sample rate {rate} Hz is above the {MAX_RATE} Hz supported")
    return rate


def _check_duration(frames: int, rate: int, name: str, min_seconds: float, max_seconds: float) -> None:
    if frames <= 0:
        raise AudioError(f"{name}: contains no samples")
    seconds = frames / rate
    if seconds > max_seconds:
        raise AudioError(f"{name}: {seconds:.1f} s is longer than the maximum of {max_seconds:g} s")
    if seconds < min_seconds:
        raise AudioError(f"{name}: {seconds:.3f} s is shorter than the minimum of {min_seconds:g} s")


def _check_truncation(path, meta: sf._SoundFileInfo, name: str) -> None:
    """Refuse a WAV whose data chunk is shorter than its header declares.

    libsndfile quietly clamps such a file's frame count to the bytes present, so a file cut short
    (an interrupted copy or download) would otherwise be used as if it were whole.
    """
    declared = _wav_declared_frames(path)
    # With nothing at all after the header, "contains no samples" says it more plainly.
    if declared is not None and declared > meta.frames > 0:
        _truncated(name, declared, meta.frames, meta.samplerate)


def _truncated(name: str, declared: int, present: int, rate: int) -> None:
    raise AudioError(f"{name}: truncated: header says {declared / rate:.2f} s, file holds {present / rate:.2f} s")


def _wav_declared_frames(path) -> int | None:
    """Frames the RIFF/RIFX header's data chunk declares, or None (not a WAV, or a streamed length)."""
    try:
        with open(path, "rb") as f:
            head = f.read(12)
            if len(head) < 12 or head[:4] not in (b"RIFF", b"RIFX") or head[8:12] != b"WAVE":
                return None
            order: Literal["little", "big"] = "little" if head[:4] == b"RIFF" else "big"
            block_align = None
            while True:
                chunk = f.read(8)
                if len(chunk) < 8:
                    return None
                kind, size = chunk[:4], int.from_bytes(chunk[4:], order)
                if kind == b"fmt ":
                    fmt = f.read(size)
                    if len(fmt) < 14:
                        return None
                    block_align = int.from_bytes(fmt[12:14], order)
                    f.seek(size % 2, os.SEEK_CUR)  # chunks are padded to an even size
                elif kind == b"data":
                    # 0 and 0xFFFFFFFF mark a length left unknown by a streaming writer.
                    if not block_align or size in (0, 0xFFFFFFFF):
                        return None
                    return size // block_align
                else:
                    f.seek(size + size % 2, os.SEEK_CUR)
    except OSError:
        return None


def _open_problem(path) -> str:
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as exc:
        return f"cannot read file: {exc.strerror}"
    if head.startswith(_MAGIC):
        return _CORRUPT
    return "not an audio file (format not recognised)"


def _short(exc: Exception) -> str:
    # LibsndfileError's str() repeats the path, which the message already names.
    return getattr(exc, "error_string", None) or str(exc)


def _path_name(path) -> str:
    return f"audio file '{os.fspath(path)}'"
