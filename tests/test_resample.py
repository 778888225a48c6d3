"""lightsv.resample: chunked resampling gives what resampling the whole clip gives."""

import math

import numpy as np
import pytest
from scipy.signal import resample_poly

from lightsv.errors import AudioError, ConfigError
from lightsv.resample import StreamResampler


def chunked(resampler, x, sizes):
    out, pos, i = [], 0, 0
    while pos < len(x):
        n = sizes[i % len(sizes)]
        out.append(resampler.push(x[pos : pos + n]))
        pos, i = pos + n, i + 1
    return out


@pytest.mark.parametrize("rate", [48000, 44100, 22050, 8000])
def test_chunks_give_what_resample_poly_gives_the_whole_clip(rate):
    x = np.random.default_rng(rate).standard_normal(int(rate * 0.77)).astype(np.float32)
    g = math.gcd(rate, 16000)
    whole = resample_poly(x, 16000 // g, rate // g)
    for sizes in ([len(x)], [1, 7, 480, 4410, 13], [int(rate * 0.01)]):
        r = StreamResampler(rate)
        out = chunked(r, x, sizes)
        pushed = sum(len(o) for o in out)
        assert len(whole) - pushed < 0.002 * 16000  # a couple of ms behind the input
        y = np.concatenate([*out, r.flush()])
        assert len(y) == len(whole)
        np.testing.assert_allclose(y, whole, atol=2e-6)


def test_16k_passes_through_and_bad_rates_are_refused():
    x = np.arange(100, dtype=np.float32)
    r = StreamResampler(16000)
    np.testing.assert_array_equal(r.push(x), x)
    assert r.flush().size == 0
    for bad in (0, -8000, 44100.5, "48k", True):
        with pytest.raises(AudioError, match="bad sample_rate"):
            StreamResampler(bad)


@pytest.mark.parametrize("rate", [48000, 16000])
def test_a_flushed_resampler_refuses_more_input(rate):
    r = StreamResampler(rate)
    r.push(np.zeros(1000, dtype=np.float32))
    r.flush()
    assert r.flush().size == 0  # flushing twice adds nothing
    with pytest.raises(ConfigError, match="flushed"):
        r.push(np.zeros(10, dtype=np.float32))


def test_chunks_are_checked_as_stream_chunks_are():
    r = StreamResampler(48000)
    for bad, match in [
        (np.zeros((480, 2), np.float32), "one channel"),
        (np.full(480, np.nan, np.float32), "NaN"),
        (np.zeros(480, np.int16), "float"),
        (np.array(["a"]), "numbers"),
    ]:
        with pytest.raises(AudioError, match=match):
            r.push(bad)
    x = np.random.default_rng(0).standard_normal(4800).astype(np.float32)
    np.testing.assert_allclose(np.concatenate([r.push(x), r.flush()]), resample_poly(x, 1, 3), atol=2e-6)
    with pytest.raises(AudioError, match="above the 384000 Hz supported"):
        StreamResampler(10_000_019)
