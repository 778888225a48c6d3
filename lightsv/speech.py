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

import math
from collections import deque
from dataclasses import dataclass

import numpy as np

from lightsv.audio import SAMPLE_RATE
from lightsv.errors import AudioError, ConfigError


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
    #: kept before each span's onset instead of ``margin_s`` (None: ``margin_s``). Streams use a short
    #: one: their early decisions rest on the first second embedded, of which a 0.5 s run-up of
    #: silence before the user speaks would be half (lightsv.streaming)
    onset_margin_s: float | None = None

    @property
    def onset_margin(self) -> float:
        return self.margin_s if self.onset_margin_s is None else self.onset_margin_s


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


def room_tone(wav: np.ndarray, seconds: float, config: SpeechConfig = SpeechConfig()) -> np.ndarray:
    """``seconds`` of the recording's own background: its quietest 50 ms (the window whose loudest
    frame is the quietest, so a short clip that is mostly speech still gives its pause), tiled back
    and forth so the joins do not click."""
    if not np.isfinite(seconds) or seconds < 0:
        raise ConfigError(f"room_tone: seconds must be a finite number >= 0, got {seconds!r}")
    if len(wav) == 0:
        raise AudioError("room_tone: empty audio has no background")
    hop, n = int(config.hop_s * SAMPLE_RATE), 5
    energy = frame_energies_db(wav, config)
    windows = np.lib.stride_tricks.sliding_window_view(energy, n).max(axis=1) if len(energy) > n else energy[:1]
    start = min(hop * int(np.argmin(windows)), max(0, len(wav) - n * hop))
    quiet = wav[start : start + n * hop]
    total = int(round(seconds * SAMPLE_RATE))
    tiles = [quiet if k % 2 == 0 else quiet[::-1] for k in range(total // len(quiet) + 1)]
    return np.concatenate(tiles)[:total].astype(wav.dtype, copy=False)


def speech_threshold(floor: float, peak: float, config: SpeechConfig = SpeechConfig()) -> float:
    """The energy (dB) above which a frame is speech in a recording with this noise floor and peak:
    +inf when the range is too narrow for speech (steady noise, silence), the absolute floor (every
    audible frame) when it is too narrow to split speech from noise reliably."""
    if peak - floor < config.steady_db:
        return math.inf
    if peak - floor < config.confident_db:
        return config.absolute_floor_db
    return max(floor + config.floor_margin_db, peak - config.dynamic_range_db, config.absolute_floor_db)


def speech_spans(wav: np.ndarray, config: SpeechConfig = SpeechConfig()) -> list[tuple[int, int]]:
    """Speech regions of a 16 kHz clip as (start, end) sample indices, without margins."""
    energy = frame_energies_db(wav, config)
    # Digital silence (padding, muted stretches) says nothing about the recording's noise floor.
    audible = energy[energy > config.absolute_floor_db]
    if audible.size == 0:
        return []
    floor, peak = float(np.percentile(audible, config.floor_percentile)), float(audible.max())
    threshold = speech_threshold(floor, peak, config)
    if threshold == math.inf:
        return []
    if peak - floor < config.confident_db:
        return [(0, len(wav))]
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
    """The clip's speech spans with ``margin_s`` around each (``onset_margin_s`` before), joined; non-speech
    beyond the margins is dropped.

    Raises AudioError ("no speech found") when the clip has no speech, or when its speech with its
    margins is shorter than ``min_seconds`` (the model's minimum input).
    """
    spans = speech_spans(wav, config)
    if not spans:
        raise AudioError(f"{name}: no speech found")
    before, margin = int(config.onset_margin * SAMPLE_RATE), int(config.margin_s * SAMPLE_RATE)
    kept: list[tuple[int, int]] = []
    for start, end in spans:
        start, end = max(0, start - before), min(len(wav), end + margin)
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


class SpeechGate:
    """The detector above run causally on a stream: ``push(samples)`` returns the samples to embed.

        gate = SpeechGate()
        for chunk in microphone():
            speech = gate.push(chunk)     # speech with its margins, possibly empty; delayed by up to ~1.6 s
        speech = gate.flush()             # at the stream's end: what is still held and belongs to speech

    Each 10 ms frame is judged once, when its 25 ms window is complete, against the statistics of
    everything heard so far (the offline detector uses the whole clip's): the noise floor is the
    ``floor_percentile`` of a histogram of frame energies (0.1 dB bins, fixed size), the peak a
    running maximum. As offline: below ``steady_db`` of range nothing is speech; between that and
    ``confident_db`` (a noisy recording, or too little heard to tell) every audible frame is; above
    it, frames over the threshold are. Spans shorter than ``min_span_s`` are dropped, gaps up to
    ``bridge_gap_s`` bridged, ``onset_margin_s`` kept before and ``margin_s`` after each: audio whose
    fate is still open (the margin before a possible onset, a gap that may yet be bridged, an
    unconfirmed span) is held back, at most margin + bridge + min span, so memory and work per sample
    are bounded for any stream.

    Counters, in samples: ``heard`` (pushed), ``speech`` (detected speech spans, bridged pauses
    included, margins not: what :func:`speech_seconds` counts offline), ``admitted`` (returned).
    """

    BIN_DB = 0.1
    TOP_DB = 10.0  # frame energies are at most ~+3 dB re full scale for samples in [-1, 1]

    def __init__(self, config: SpeechConfig = SpeechConfig()):
        self.config = config
        self._hop = int(config.hop_s * SAMPLE_RATE)
        self._frame = int(config.frame_s * SAMPLE_RATE)
        self._margin = int(round(config.onset_margin / config.hop_s))  # before an onset, in frames
        # The offline span ends where its last frame's window ends, (frame - hop) samples past its hop.
        self._trail = int(math.ceil((config.margin_s * SAMPLE_RATE + self._frame - self._hop) / self._hop))
        self._bridge = config.bridge_gap_s / config.hop_s  # gap frames a span bridges
        self._min = config.min_span_s / config.hop_s  # frames a span needs
        bins = int(math.ceil((self.TOP_DB - config.absolute_floor_db) / self.BIN_DB))
        self._hist = np.zeros(bins, dtype=np.int64)
        self._audible = 0
        self._peak = -math.inf
        self._tail = np.zeros(0, dtype=np.float32)  # samples of frames whose window is not complete yet
        self._frames = 0  # frames judged
        self._held: deque[np.ndarray] = deque()  # hops not yet admitted nor dropped, oldest first
        self._start = -1  # first frame of the open span (-1: none)
        self._last = -1  # last speech frame of the open span
        self._confirmed = False  # the open span is long enough to be speech
        self.heard = 0
        self.speech = 0
        self.admitted = 0
        #: whether the last audible frame was judged with loud and quiet frames ``confident_db`` apart,
        #: by an energy threshold, rather than as "every audible frame" (too little heard to tell, a noisy
        #: recording, or a run-up of fluctuating noise before anything louder)
        self.sure = False

    @property
    def speech_seconds(self) -> float:
        """Seconds of detected speech so far, the open span up to its last speech frame included."""
        open_span = self._last - self._start + 1 if self._confirmed else 0
        return (self.speech + open_span * self._hop) / SAMPLE_RATE

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Judge the frames these samples complete; return the samples now known to be kept."""
        return self._emit([hop for _, _, hops, _ in self.frames(samples) for hop in hops])

    def frames(self, samples: np.ndarray) -> list[tuple[int, float, list[np.ndarray], bool]]:
        """As :meth:`push`, frame by frame: (samples heard when the frame was judged, speech seconds
        then, the hops it released, :attr:`sure` then); only frames that released audio are listed.
        None of it depends on how the stream was cut into chunks."""
        samples = np.asarray(samples, dtype=np.float32).reshape(-1)
        wav = np.concatenate([self._tail, samples]) if self._tail.size else samples
        base = self.heard - self._tail.size  # where wav starts in the stream
        self.heard += len(samples)
        n = 0 if len(wav) < self._frame else (len(wav) - self._frame) // self._hop + 1
        out: list[tuple[int, float, list[np.ndarray], bool]] = []
        if n:
            energies = frame_energies_db(wav[: (n - 1) * self._hop + self._frame], self.config)
            for i, energy in enumerate(energies.tolist()):
                kept = self._judge(wav[i * self._hop : (i + 1) * self._hop], energy)
                if kept:
                    self.admitted += sum(len(h) for h in kept)
                    out.append((base + i * self._hop + self._frame, self.speech_seconds, kept, self.sure))
        self._tail = wav[n * self._hop :].copy()
        return out

    def flush(self) -> np.ndarray:
        """At the stream's end: the unjudged last samples when a confirmed span's trailing margin
        still runs; everything else held (an unconfirmed span, margins before no speech) is dropped."""
        kept = self._tail if self._confirmed and self._frames - 1 - self._last < self._trail else self._tail[:0]
        self._close_span()
        self._held.clear()
        self._tail = np.zeros(0, dtype=np.float32)
        self.admitted += len(kept)
        return kept

    # ------------------------------------------------------------------ internals

    @staticmethod
    def _emit(hops: list[np.ndarray]) -> np.ndarray:
        return np.concatenate(hops) if hops else np.zeros(0, dtype=np.float32)

    def _is_speech(self, energy: float) -> bool:
        c = self.config
        if energy <= c.absolute_floor_db:
            return False
        index = min(int((energy - c.absolute_floor_db) / self.BIN_DB), self._hist.size - 1)
        self._hist[index] += 1
        self._audible += 1
        self._peak = max(self._peak, energy)
        # the floor_percentile of the audible frames, to a bin
        rank = int(np.searchsorted(np.cumsum(self._hist), c.floor_percentile / 100 * self._audible))
        floor = c.absolute_floor_db + (rank + 0.5) * self.BIN_DB
        self.sure = self._peak - floor >= c.confident_db
        return energy > speech_threshold(floor, self._peak, c)

    def _judge(self, hop: np.ndarray, energy: float) -> list[np.ndarray]:
        """Judge one frame by its energy; its hop (the window's first hop_s) is kept, held or dropped."""
        k = self._frames
        self._frames += 1
        if self._is_speech(energy):
            if self._start < 0:
                self._start = k
            self._last = k
            if not self._confirmed and k - self._start + 1 >= self._min:
                self._confirmed = True
            if self._confirmed:  # the margin before, a bridged gap, the unconfirmed start: all kept
                kept = [*self._held, hop]
                self._held.clear()
                return kept
            self._held.append(hop.copy())
            return []
        gap = k - self._last  # frames since the last speech frame (this one included)
        if self._start >= 0 and gap > self._bridge:  # the open span ends here
            self._close_span()
        if self._confirmed and gap <= self._trail:  # trailing margin
            return [hop]
        self._held.append(hop.copy())
        if self._start < 0:  # no open span: only a leading margin's worth may still be kept
            while len(self._held) > self._margin:
                self._held.popleft()
        return []

    def _close_span(self) -> None:
        if self._confirmed:
            self.speech += (self._last - self._start + 1) * self._hop
        self._start, self._last, self._confirmed = -1, -1, False
