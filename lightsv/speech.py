"""Speech activity detection by frame energy: find where a clip has speech and drop long non-speech.

    spans = speech_spans(wav)          # [(start, end), ...] in samples, speech only
    wav = trim(wav, min_seconds=0.5)   # speech with margins, long pauses shortened; AudioError without speech

A frame (25 ms, 10 ms hop) is speech when its energy is above both the clip's noise floor plus
``floor_margin_db`` and its loudest frame minus ``dynamic_range_db``, and above ``absolute_floor_db``
(digital silence and dither are never speech). The noise floor is a low percentile of the frame
energies, so it adapts to each recording. Short gaps inside speech are bridged (``bridge_gap_s``) and
isolated blips dropped (``min_span_s``). Frames below the absolute floor (digital silence) do not
count towards the noise floor, so zero padding does not change what is found. A clip whose loud and
quiet frames differ by less than ``steady_db`` is steady noise or silence, not speech: speech always
swings between syllables and pauses. Between that and ``confident_db`` (a noisy recording) the
speech/noise split is unreliable, and the clip is taken whole rather than cut by a guess.

Energy detection is what resemblyzer-style pipelines do with webrtcvad's simplest mode, costs about
a millisecond per second of audio, ships no model and needs no download. It does not tell speech from
loud non-speech (music, a door): those pass as speech, as they did before.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lightsv.audio import SAMPLE_RATE
from lightsv.errors import AudioError


@dataclass(frozen=True)
class SpeechConfig:
    frame_s: float = 0.025
    hop_s: float = 0.010
    #: percentile of frame energies taken as the recording's noise floor
    floor_percentile: float = 10.0
    floor_margin_db: float = 12.0
    dynamic_range_db: float = 40.0
    absolute_floor_db: float = -65.0
    #: a clip whose frames span less than this (above digital silence) is steady noise: no speech
    steady_db: float = 6.0
    #: below this span the speech/noise split is a guess (noisy recording): the clip is kept whole
    confident_db: float = 20.0
    #: pauses up to this long stay: only long non-speech is dropped
    bridge_gap_s: float = 1.0
    min_span_s: float = 0.05
    #: kept around each speech span, so onsets and fading ends are not clipped
    margin_s: float = 0.5


def frame_energies_db(wav: np.ndarray, config: SpeechConfig = SpeechConfig()) -> np.ndarray:
    """Energy (dB re full scale) of each frame, its DC removed; a clip shorter than one frame is one frame."""
    frame, hop = int(config.frame_s * SAMPLE_RATE), int(config.hop_s * SAMPLE_RATE)
    if len(wav) < frame:
        wav = np.pad(wav, (0, frame - len(wav)))
    frames = np.lib.stride_tricks.sliding_window_view(wav, frame)[::hop]
    # The variance, not the mean square: a recording's DC offset (one LibriSpeech training clip sits at
    # -0.25) would otherwise be the loudest, steadiest "sound" in it and hide the speech.
    power = np.var(frames, axis=1, dtype=np.float64)
    return 10.0 * np.log10(power + 1e-12)


def speech_spans(wav: np.ndarray, config: SpeechConfig = SpeechConfig()) -> list[tuple[int, int]]:
    """Speech regions of a 16 kHz clip as (start, end) sample indices, without margins."""
    energy = frame_energies_db(wav, config)
    # Digital silence (padding, muted stretches) says nothing about the recording's noise floor.
    audible = energy[energy > config.absolute_floor_db]
    if audible.size == 0:
        return []
    floor, peak = float(np.percentile(audible, config.floor_percentile)), float(audible.max())
    if peak - floor < config.steady_db:
        return []
    if peak - floor < config.confident_db:
        return [(0, len(wav))]
    threshold = max(floor + config.floor_margin_db, peak - config.dynamic_range_db, config.absolute_floor_db)
    active = energy > threshold
    hop, frame = int(config.hop_s * SAMPLE_RATE), int(config.frame_s * SAMPLE_RATE)
    edges = np.flatnonzero(np.diff(np.r_[0, active.astype(np.int8), 0]))
    runs = [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]  # frame index ranges
    bridged: list[tuple[int, int]] = []
    for start, end in runs:
        if bridged and (start - bridged[-1][1]) * config.hop_s <= config.bridge_gap_s:
            bridged[-1] = (bridged[-1][0], end)
        else:
            bridged.append((start, end))
    min_frames = config.min_span_s / config.hop_s
    return [
        (start * hop, min(len(wav), (end - 1) * hop + frame)) for start, end in bridged if end - start >= min_frames
    ]


def speech_seconds(wav: np.ndarray, config: SpeechConfig = SpeechConfig()) -> float:
    return sum(end - start for start, end in speech_spans(wav, config)) / SAMPLE_RATE


def trim(
    wav: np.ndarray, *, min_seconds: float = 0.0, config: SpeechConfig = SpeechConfig(), name: str = "audio"
) -> np.ndarray:
    """The clip's speech spans with ``margin_s`` around each, joined; non-speech beyond the margins is dropped.

    Raises AudioError ("no speech found") when the clip has no speech, or when its speech with its
    margins is shorter than ``min_seconds`` (the model's minimum input).
    """
    spans = speech_spans(wav, config)
    if not spans:
        raise AudioError(f"{name}: no speech found")
    margin = int(config.margin_s * SAMPLE_RATE)
    kept: list[tuple[int, int]] = []
    for start, end in spans:
        start, end = max(0, start - margin), min(len(wav), end + margin)
        if kept and start <= kept[-1][1]:
            kept[-1] = (kept[-1][0], end)
        else:
            kept.append((start, end))
    seconds = sum(end - start for start, end in kept) / SAMPLE_RATE
    if seconds < min_seconds:
        raise AudioError(
            f"{name}: no speech found beyond {seconds:.2f} s (with margins), less than the model's minimum of "
            f"{min_seconds:g} s"
        )
    if kept == [(0, len(wav))]:
        return wav
    return np.ascontiguousarray(np.concatenate([wav[a:b] for a, b in kept]))
