"""Streaming verification that decides as soon as the evidence is clear.

    s = verifier.stream("alice", error=0.05, max_seconds=6.0)   # sample_rate=48000 for a 48 kHz source
    for chunk in microphone():                 # any chunk size, float32
        state = s.feed(chunk)                  # state.seconds, .speech_seconds, .score, .llr, .decision
        if state.decision != "undecided":
            break
    state = s.close()                          # forces a decision if there is none yet

Speech. As clips are trimmed to their speech before embedding, a stream first goes through
:class:`lightsv.speech.SpeechGate`, the same energy detector run causally (each 10 ms frame judged
against the noise floor and peak of everything heard so far): leading silence and long pauses are
not embedded and are not evidence, so the session stays undecided (no score) until there is speech,
and the LLR's duration is the audio embedded (speech with its margins), as for a trimmed clip. The
stream keeps 0.1 s before an onset (:data:`STREAM_SPEECH`) where a clip keeps 0.5 s: a session is
usually opened before the user speaks, and with 0.5 s of that run-up embedded the first second
scored was half silence, which the model scores far from the speaker (with 2 s of faint noise
before each dev clip, 61 % of the targets decided early were rejected; ``benchmarks/streaming.py``
replays such streams). The state reports seconds heard and seconds of speech. A stream without
speech cannot be decided: ``close()`` (or ``max_seconds``) raises AudioError "no speech found", as a
clip without speech does. ``vad=False`` embeds everything fed. The gate holds back at most ~1.6 s
of audio whose fate is open (the margin before a possible onset, a pause that may be bridged).
Until it has heard loud and quiet frames far enough apart (``SpeechGate.sure``) the gate takes every
audible frame for speech, so a run-up of fluctuating noise is embedded: no reject bound decides on
such audio (noise scores like nobody; an accept needs the speaker's voice), and once speech is
heard, a run-up of at least :data:`UNSURE_RUN_UP_SECONDS` is dropped and the embedding starts again.

Design. The shipped model (ECAPA-TDNN) pools attentive statistics over the whole clip, and its
attention reads the clip's global mean and deviation, so a frame-by-frame incremental pass would
change what the model computes. Instead the stream is cut into blocks of ``block_seconds`` (3 s):
every ``hop_seconds`` (0.25 s) of new embedded audio the current block, with ``context_seconds`` of the
previous block before it, is embedded again (bounded work: at most 3.5 s of audio per update,
whatever the stream's length), and the running embedding is the duration-weighted sum of the
finished blocks' embeddings plus the current block's. Within the first block, where early decisions
are made, this is exactly the embedding of everything heard; beyond it, the average of block
embeddings that WeSpeaker's runtime uses. Memory: one block of samples and one embedding sum.

Deciding. The running cosine (AS-norm with a cohort: the verifier passes ``score``) goes through the
duration-aware calibration of those scores (:mod:`lightsv.duration`: the model's, or the cohort
file's) to an LLR, and Wald's sequential-test bounds decide: accept when
``llr >= log((1 - miss) / false_accept)``, reject when ``llr <= log(miss / (1 - false_accept))``,
else wait. The calibrated LLR of the whole stream so far replaces Wald's sum of per-observation
LLRs (the observations are not independent frames; the embedding already pools them), as in Vogt,
Sridharan & Mason (IEEE TASLP 2010). The bounds decide only once ``min_speech_seconds`` (0.5 s) of
speech is in: below that a test clip's EER is 26-37 % on the dev lists, so a bound crossed there is
mostly the calibration's tail, not evidence. Looking again every hop spends some of the error budget, so the
realised rates differ from the requested ones: ``benchmarks/streaming.py`` measures them. At
``max_seconds`` or :meth:`StreamSession.close` the decision is forced at the midpoint of the two
bounds (0 for symmetric rates: the Bayes decision at equal priors).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from lightsv.audio import SAMPLE_RATE, chunk
from lightsv.errors import AudioError, ConfigError
from lightsv.resample import StreamResampler
from lightsv.speech import SpeechConfig, SpeechGate

DECISIONS = ("accept", "reject", "undecided")
#: Audio the detector took for speech at a stream's start, before it could first tell speech from
#: noise (SpeechGate.sure), past which it is a run-up of noise before the user spoke, dropped once
#: speech is heard. Far longer than a recording's quiet onset, whose speech it would drop with it.
UNSURE_RUN_UP_SECONDS = 1.5
#: The speech detector's settings for streams: the offline detector's, with a short run-up before onsets.
STREAM_SPEECH = SpeechConfig(onset_margin_s=0.1)


@dataclass(frozen=True)
class StreamConfig:
    """How often the stream is re-scored and how much audio one update embeds at most."""

    hop_seconds: float = 0.25
    block_seconds: float = 3.0
    context_seconds: float = 0.5
    #: seconds of detected speech (all audio without the gate) before a bound may decide
    min_speech_seconds: float = 0.5

    def __post_init__(self):
        for name in ("hop_seconds", "block_seconds", "context_seconds", "min_speech_seconds"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise ConfigError(f"{name} must be a finite number >= 0, got {value!r}")
        if self.hop_seconds <= 0 or self.block_seconds < self.hop_seconds:
            raise ConfigError("hop_seconds must be > 0 and block_seconds at least one hop")
        # Updates then fall on block boundaries, so a block is folded into the sum exactly when full.
        for name in ("block_seconds", "context_seconds"):
            hops = getattr(self, name) / self.hop_seconds
            if abs(hops - round(hops)) > 1e-9:
                raise ConfigError(f"{name} must be a whole number of hops (hop_seconds)")


@dataclass(frozen=True)
class StreamState:
    """The running state: ``seconds`` of audio heard, ``speech_seconds`` of them detected as speech
    (all of them without speech detection), the running ``score`` (cosine, or AS-norm with a cohort)
    and ``llr`` (None until there is enough speech for the model), and ``decision``: accept, reject or
    undecided.
    ``embedded_seconds``: the audio the running embedding is of (the speech with its margins; the
    LLR's duration)."""

    speaker: str
    seconds: float
    score: float | None
    llr: float | None
    decision: str
    #: Why the decision was made: "accept bound", "reject bound", "max_seconds", "closed", or "" while undecided.
    reason: str = ""
    speech_seconds: float = 0.0
    embedded_seconds: float = 0.0
    #: whether the speech detector could tell speech from noise at this update (SpeechGate.sure; always
    #: without the gate): a reject bound decides only then
    sure: bool = True

    @property
    def decided(self) -> bool:
        return self.decision != "undecided"

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def sprt_bounds(miss: float, false_accept: float) -> tuple[float, float]:
    """Wald's (reject, accept) LLR bounds for the target miss and false-accept rates asked for."""
    for name, rate in (("miss", miss), ("false_accept", false_accept)):
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate < 0.5:
            raise ConfigError(f"the {name} rate must be a number in (0, 0.5), got {rate!r}")
    return math.log(miss / (1 - false_accept)), math.log((1 - miss) / false_accept)


def error_rates(error) -> tuple[float, float]:
    """``error``: one rate for both kinds, or (miss, false_accept)."""
    if isinstance(error, (tuple, list)) and len(error) == 2:
        return error[0], error[1]
    return error, error


class StreamSession:
    """One speaker's verification over a stream of samples; see the module docstring.

    ``sample_rate``: of the samples fed; other rates than 16 kHz are resampled as they come
    (:class:`lightsv.resample.StreamResampler`: the samples loading the whole clip would give).

    ``embed``: waveform -> unit embedding; ``score``: running embedding -> score (default: its cosine
    with ``enrolled``; the verifier passes AS-norm when it has a cohort); ``llr``: (score, seconds
    embedded) -> LLR. ``vad``: pass
    the stream through :class:`lightsv.speech.SpeechGate` first (with :data:`STREAM_SPEECH`), so that
    only speech (with its margins) is embedded and counted as evidence (a
    :class:`lightsv.speech.SpeechConfig`: with those settings); False embeds everything fed.
    """

    def __init__(
        self,
        speaker: str,
        enrolled: np.ndarray,
        embed: Callable[[np.ndarray], np.ndarray],
        llr: Callable[[float, float], float],
        *,
        min_seconds: float,
        score: Callable[[np.ndarray], float] | None = None,
        max_seconds: float = 6.0,
        error=0.05,
        config: StreamConfig | None = None,
        vad: bool | SpeechConfig = True,
        sample_rate: int = SAMPLE_RATE,
    ):
        if config is not None and not isinstance(config, StreamConfig):
            raise ConfigError(f"config must be a StreamConfig, got {type(config).__name__}")
        self.config = config or StreamConfig()
        # a microphone at 44.1 or 48 kHz: resampled as it comes, to what loading the clip would give
        self._resampler = None if sample_rate == SAMPLE_RATE else StreamResampler(sample_rate)
        if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float)) or not 0 < max_seconds < math.inf:
            raise ConfigError(f"max_seconds must be a positive finite number, got {max_seconds!r}")
        self.miss, self.false_accept = error_rates(error)
        self.reject_bound, self.accept_bound = sprt_bounds(self.miss, self.false_accept)
        self.speaker = speaker
        self.max_seconds = float(max_seconds)
        if self.max_seconds < min_seconds:
            raise ConfigError(f"max_seconds must be at least the model's minimum of {min_seconds:g} s")
        self._max = int(round(self.max_seconds * SAMPLE_RATE))
        self._enrolled = np.asarray(enrolled, dtype=np.float32)
        self._embed, self._llr = embed, llr
        self._score = score or (lambda running: float(running @ self._enrolled))
        self._min = int(math.ceil(min_seconds * SAMPLE_RATE))
        self._hop = int(round(self.config.hop_seconds * SAMPLE_RATE))
        self._block = int(round(self.config.block_seconds * SAMPLE_RATE))
        self._context = int(round(self.config.context_seconds * SAMPLE_RATE))
        if self._context + self._block < self._min:  # a block could never be embedded, nor folded
            raise ConfigError(
                f"block_seconds + context_seconds must be at least the model's minimum of {min_seconds:g} s"
            )
        if not isinstance(vad, (bool, np.bool_, SpeechConfig)):  # "no" would be truthy
            raise ConfigError(f"vad must be True, False or a SpeechConfig, got {vad!r}")
        gate = vad if isinstance(vad, SpeechConfig) else STREAM_SPEECH if vad else None
        self._gate = None if gate is None else SpeechGate(gate)
        # [context of the previous block | current block] of embedded audio; never grows past this.
        self._buffer = np.zeros(self._context + self._block, dtype=np.float32)
        self._start = 0  # where the current block begins in the buffer (the context before it)
        self._fill = 0
        self._heard = 0  # samples fed in total
        self._taken = 0  # samples embedded in total (= heard without the gate)
        self._scored = 0  # samples taken at the last update
        self._sum = np.zeros_like(self._enrolled, dtype=np.float64)  # seconds-weighted finished blocks
        self._unsure = 0  # samples taken while the gate could not tell speech from noise
        self._was_sure = False  # it could, for some audio taken: what came before that was no run-up
        self._speech_base = 0.0  # the gate's speech seconds when a run-up was dropped
        self._before_drop: StreamState | None = None  # the last scored state before it, if any
        self._state = StreamState(speaker, 0.0, None, None, "undecided")
        self._running = np.zeros_like(self._enrolled)
        self.updates = 0  # embeddings computed (the cost counter the tests read)
        self._ended = False

    @property
    def state(self) -> StreamState:
        return self._state

    @property
    def embedding(self) -> np.ndarray:
        """The running unit embedding of everything embedded at the last update (zeros before the first)."""
        return self._running.copy()

    def feed(self, samples) -> StreamState:
        """Add mono samples (float in [-1, 1], any length, at the session's ``sample_rate``) and return
        the running state.

        Once decided, the decision stands and further audio is ignored; a stream that ended without
        one (``close()`` or max_seconds with no speech: AudioError) is over, and feeding it is a
        ConfigError."""
        wav = chunk(samples)
        if self._state.decided:
            return self._state
        if self._ended:
            raise ConfigError("this stream has ended (close() or max_seconds) without a decision; start a new one")
        if self._resampler is not None:
            wav = self._resampler.push(wav)
        return self._push(wav)

    def _push(self, wav: np.ndarray) -> StreamState:
        wav = wav[: self._max - self._heard]
        if self._gate is None:
            self._take(wav, None)
        else:
            for heard, speech, hops, sure in self._gate.frames(wav):
                if sure and not self._was_sure and self._unsure >= UNSURE_RUN_UP_SECONDS * SAMPLE_RATE:
                    self._drop_run_up(heard, speech)
                for hop in hops:
                    self._take(hop, heard, speech - self._speech_base, sure)
                    self._unsure += 0 if sure else len(hop)
                    self._was_sure = self._was_sure or sure
                if self._state.decided:
                    break
        self._heard += len(wav)
        if not self._state.decided:
            if self._heard >= self._max:
                self._end("max_seconds")
            else:
                self._state = dataclasses.replace(
                    self._state, seconds=self._heard / SAMPLE_RATE, speech_seconds=self._speech_seconds()
                )
        return self._state

    def close(self) -> StreamState:
        """Score what is left and force a decision (a decided stream keeps its decision)."""
        if not self._state.decided:
            self._end("closed")
        return self._state

    # ------------------------------------------------------------------ internals

    def _speech_seconds(self) -> float:
        if self._gate is None:
            return self._heard / SAMPLE_RATE
        return self._gate.speech_seconds - self._speech_base

    def _drop_run_up(self, heard: int, speech: float) -> None:
        """The detector, sure now, would not have kept the noise it took for speech before: drop all
        that was embedded and start again from here. (Should the stream end before enough is heard
        to score again, a noisy recording whose one loud sound came last, the forced decision falls
        back on what was scored before.)"""
        self._before_drop = self._state if self._state.llr is not None else None
        self._buffer[:] = 0
        self._start = self._fill = self._taken = self._scored = self._unsure = 0
        self._sum[:] = 0
        self._running[:] = 0
        self._speech_base = speech
        self._state = StreamState(self.speaker, heard / SAMPLE_RATE, None, None, "undecided")

    def _take(self, wav: np.ndarray, heard: int | None, speech: float | None = None, sure: bool = True) -> None:
        """Embed ``wav`` into the blocks, updating at every hop. ``heard``, ``speech``: the samples
        heard and seconds of speech found when the gate released this audio (None: no gate, the
        audio is the stream itself, heard as it is taken); ``sure``: whether the gate could tell
        speech from noise then (a reject bound decides only on audio it could)."""
        pos = 0
        while pos < len(wav) and not self._state.decided:
            # Up to the next hop boundary or the block's end, whichever comes first.
            room = min(self._hop - (self._taken - self._scored), self._buffer.size - self._fill)
            take = min(room, len(wav) - pos)
            self._buffer[self._fill : self._fill + take] = wav[pos : pos + take]
            self._fill += take
            self._taken += take
            pos += take
            if self._taken - self._scored >= self._hop:
                self._update(self._heard + pos if heard is None else heard, speech, sure)

    def _end(self, reason: str) -> None:
        self._ended = True  # even if no decision comes below: the resampler and the gate have flushed
        if self._resampler is not None:  # the few ms the resampler still holds
            tail, self._resampler = self._resampler.flush(), None
            if self._heard < self._max:
                self._push(tail)  # which ends the stream itself if the tail reaches max_seconds
                if self._state.decided:
                    return
        if self._gate is not None:
            tail = self._gate.flush()
            self._take(tail, self._heard, self._speech_seconds(), self._gate.sure)
        if not self._state.decided and self._taken > self._scored:
            self._update(self._heard, self._speech_seconds(), self._gate is None or self._gate.sure)
        if not self._state.decided:
            self._finish(reason)

    def _update(self, heard: int, speech: float | None, sure: bool = True) -> None:
        self._scored = self._taken
        seconds, embedded = heard / SAMPLE_RATE, self._taken / SAMPLE_RATE
        speech_seconds = seconds if speech is None else speech
        if self._taken < self._min:
            self._state = dataclasses.replace(
                self._state, seconds=seconds, speech_seconds=speech_seconds, embedded_seconds=embedded
            )
            return
        # The current block with the previous block's tail before it (a later block is never shorter
        # than context + one hop, so never below the model's minimum once the first block had it).
        current = self._embed(self._buffer[: self._fill]).astype(np.float64)
        self.updates += 1
        block_seconds = (self._fill - self._start) / SAMPLE_RATE
        total = self._sum + block_seconds * current
        self._running = (total / max(float(np.linalg.norm(total)), 1e-12)).astype(np.float32)
        score = float(self._score(self._running))
        llr = float(self._llr(score, embedded))
        decision, reason = "undecided", ""
        if speech_seconds >= self.config.min_speech_seconds - 1e-9:
            if llr >= self.accept_bound:
                decision, reason = "accept", "accept bound"
            elif llr <= self.reject_bound and sure:  # noise scores like nobody: no reject on it
                decision, reason = "reject", "reject bound"
        self._state = StreamState(self.speaker, seconds, score, llr, decision, reason, speech_seconds, embedded, sure)
        if self._fill == self._buffer.size:  # the block is full: fold it into the sum, keep its tail as context
            self._sum += block_seconds * current
            tail = self._buffer[self._fill - self._context : self._fill].copy()
            self._buffer[: self._context] = tail
            self._start = self._fill = self._context

    def _finish(self, reason: str) -> None:
        state = self._state
        if state.llr is None and self._before_drop is not None:
            state = self._before_drop
        if state.llr is None:
            heard = self._heard / SAMPLE_RATE
            if self._gate is not None and self._gate.speech == 0:
                raise AudioError(f"the stream: no speech found in {heard:.2f} s: nothing to decide on")
            what = "of speech (with margins)" if self._gate is not None else ""
            raise AudioError(
                f"the stream ended after {heard:.2f} s with {self._taken / SAMPLE_RATE:.2f} s {what}, less than "
                f"the model's minimum of {self._min / SAMPLE_RATE:.2f} s: no speech found to decide on"
            )
        middle = 0.5 * (self.accept_bound + self.reject_bound)
        decision = "accept" if state.llr >= middle else "reject"
        self._state = dataclasses.replace(
            state,
            decision=decision,
            reason=reason,
            seconds=self._heard / SAMPLE_RATE,
            speech_seconds=self._speech_seconds(),
        )


# ---------------------------------------------------------------------- lightsv verify --stream


def add_stream_options(parser) -> None:
    """The ``lightsv verify --stream`` options (kept here so the CLI module stays small)."""
    group = parser.add_argument_group("streaming (--stream)")
    group.add_argument(
        "--stream", action="store_true", help="feed the clip in real-time-sized chunks and print the running state"
    )
    group.add_argument("--chunk-seconds", type=float, default=0.1, metavar="S", help="chunk size (default: 0.1)")
    group.add_argument(
        "--error", type=float, default=0.05, metavar="R", help="miss = false-accept rate asked (default: 0.05)"
    )
    group.add_argument("--max-seconds", type=float, default=6.0, metavar="S", help="force a decision after S s")
    group.add_argument("--realtime", action="store_true", help="wait a chunk's duration between chunks of a clip")
    group.add_argument("--mic", action="store_true", help="read the default microphone (needs sounddevice)")


def run_stream_command(verifier, args) -> int:
    """Run one stream for the CLI: print each state as it changes, end with the decision."""
    import sys

    if args.mic == (args.clip is not None):
        raise ConfigError("--stream reads either a CLIP or --mic, one of the two")
    if not (isinstance(args.chunk_seconds, float) and 0.01 <= args.chunk_seconds <= 10):
        raise ConfigError(f"--chunk-seconds must be between 0.01 and 10, got {args.chunk_seconds!r}")
    rate = _microphone_rate() if args.mic else SAMPLE_RATE
    session = verifier.stream(args.name, max_seconds=args.max_seconds, error=args.error, sample_rate=rate)
    chunk = int(round(args.chunk_seconds * rate))
    chunks = _microphone(chunk, rate) if args.mic else _clip_chunks(args.clip, chunk, args.realtime)
    last = None
    for samples in chunks:
        state = session.feed(samples)
        if state != last and state.score is not None:
            _print_state(state, args.json)
            last = state
        if state.decided:
            break
    if not session.state.decided:
        state = session.close()
        _print_state(state, args.json)
    if not args.json:
        state = session.state
        print(
            f"{state.speaker}: {state.decision} after {state.seconds:.2f} s, {state.speech_seconds:.2f} s of speech "
            f"({state.reason})"
        )
    sys.stdout.flush()
    return 1 if args.exit_code and session.state.decision != "accept" else 0


def _print_state(state: StreamState, as_json: bool) -> None:
    import json

    if as_json:
        print(json.dumps(state.as_dict()), flush=True)
    else:
        score = "-" if state.score is None else f"{state.score:.4f}"
        llr = "-" if state.llr is None else f"{state.llr:+.2f}"
        heard = f"{state.seconds:6.2f} s ({state.speech_seconds:5.2f} s speech)"
        print(f"{heard}  score {score}  llr {llr}  {state.decision}", flush=True)


def _clip_chunks(clip, chunk: int, realtime: bool):
    import time

    from lightsv.audio import load

    wav = load(clip)
    for start in range(0, len(wav), chunk):
        if realtime and start:
            time.sleep(chunk / SAMPLE_RATE)
        yield wav[start : start + chunk]


def _sounddevice():
    try:
        import sounddevice  # type: ignore[import-not-found]
    except ImportError:
        raise ConfigError("--mic needs sounddevice: pip install -c constraints.txt 'lightsv[mic]'") from None
    return sounddevice


def _microphone_rate() -> int:
    """The default input device's own rate: many devices cannot record at 16 kHz; the session resamples."""
    return int(_sounddevice().query_devices(kind="input")["default_samplerate"])


def _microphone(chunk: int, rate: int):
    sounddevice = _sounddevice()
    with sounddevice.InputStream(samplerate=rate, channels=1, dtype="float32", blocksize=chunk) as mic:
        while True:
            samples, _ = mic.read(chunk)
            yield samples[:, 0]
