"""Resampling audio that arrives in chunks, to the same samples ``lightsv.audio.load`` gives a whole clip.

    r = StreamResampler(48000)            # to 16 kHz
    for chunk in microphone():            # any chunk sizes
        wav16 = r.push(chunk)             # what can be computed so far (a few ms behind the input)
    wav16 = r.flush()                     # the rest, as if the input ended with silence

``load`` resamples a clip with ``scipy.signal.resample_poly`` (a Kaiser-windowed FIR, polyphase). This
is the same filter, run with its state carried across chunks: the concatenated output equals
``resample_poly`` of the concatenated input (to float rounding), whatever the chunk sizes, so a stream
is embedded as the same audio loaded as a file would be. Work per chunk is proportional to the chunk;
memory is one filter's span of input.
"""

from __future__ import annotations

import math

import numpy as np

from lightsv.audio import SAMPLE_RATE, _rate, chunk
from lightsv.errors import ConfigError


class StreamResampler:
    """``rate`` Hz in, ``target`` Hz out, chunk by chunk; see the module docstring."""

    def __init__(self, rate: int, target: int = SAMPLE_RATE):
        from scipy.signal import firwin

        rate, target = _rate(rate, "stream"), _rate(target, "stream")
        g = math.gcd(rate, target)
        self.up, self.down = target // g, rate // g
        self._same = self.up == self.down  # nothing to do (resample_poly is not called either)
        self._flushed = False
        if self._same:
            return
        # resample_poly's filter and alignment (scipy.signal._signaltools.resample_poly)
        half_len = 10 * max(self.up, self.down)
        h = firwin(2 * half_len + 1, 1.0 / max(self.up, self.down), window=("kaiser", 5.0)) * self.up
        pre_pad = self.down - half_len % self.down
        h = np.concatenate([np.zeros(pre_pad), h])
        self._next = (half_len + pre_pad) // self.down  # first output sample of resample_poly's result
        self._first = self._next
        taps = -(-len(h) // self.up)  # input samples one output reads
        h = np.concatenate([h, np.zeros(taps * self.up - len(h))])
        # polyphase: output n reads x[(n * down) // up - j] * h[(n * down) % up + j * up], j < taps
        self._phases = h.reshape(taps, self.up).T.copy()  # [phase, j]
        self._taps = taps
        self._history = np.zeros(taps - 1)  # the last inputs before the current chunk (zeros before the start)
        self._seen = 0  # input samples pushed

    def push(self, samples: np.ndarray) -> np.ndarray:
        """Resample the next chunk; returns the output samples whose input is complete."""
        if self._flushed:  # the zeros flush() assumed after the end would sit between the two parts
            raise ConfigError("this StreamResampler was flushed (its input ended); start a new one")
        wav = chunk(samples)
        if self._same:
            return wav
        x = wav.astype(np.float64)
        buf = np.concatenate([self._history, x])
        start = self._seen - (self._taps - 1)  # input index of buf[0]
        self._seen += len(x)
        out = self._outputs(buf, start, self._seen)
        self._history = buf[len(buf) - (self._taps - 1) :] if self._taps > 1 else buf[:0]
        return out

    def flush(self) -> np.ndarray:
        """The remaining output, the input taken as ending here (zeros beyond, as ``resample_poly`` does);
        the resampler is then finished (pushing more is a ConfigError; flushing again gives nothing)."""
        if self._flushed:
            return np.zeros(0, dtype=np.float32)
        self._flushed = True
        if self._same:
            return np.zeros(0, dtype=np.float32)
        end = self._first + -(-self._seen * self.up // self.down)  # resample_poly's output length
        pad = np.zeros(self._taps + (end * self.down) // self.up - self._seen + 1)
        buf = np.concatenate([self._history, pad])
        out = self._outputs(buf, self._seen - (self._taps - 1), self._seen + len(pad), stop=end)
        self._history = np.zeros(self._taps - 1)
        return out

    def _outputs(self, buf: np.ndarray, start: int, available: int, stop: int | None = None) -> np.ndarray:
        # every output n whose newest input (n * down) // up has arrived
        last = ((available * self.up) - 1) // self.down
        if stop is not None:
            last = min(last, stop - 1)
        n = np.arange(self._next, last + 1)
        if n.size == 0:
            return np.zeros(0, dtype=np.float32)
        newest, phase = (n * self.down) // self.up - start, (n * self.down) % self.up
        y = np.zeros(n.size)
        for j in range(self._taps):
            y += self._phases[phase, j] * buf[newest - j]
        self._next = int(n[-1]) + 1
        return y.astype(np.float32)
