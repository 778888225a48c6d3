import math

import numpy as np
import pytest
import soundfile as sf
import torch

from lightsv import audio
from lightsv.audio import MAX_SECONDS, SAMPLE_RATE, load
from lightsv.errors import AudioError


def sine(freq=440.0, seconds=1.0, rate=SAMPLE_RATE, amp=0.5):
    t = np.arange(int(seconds * rate)) / rate
    return (amp * np.sin(2 * math.pi * freq * t)).astype(np.float32)


def peak_hz(x, rate=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.argmax(spectrum) * rate / len(x)


@pytest.fixture
def wav_bytes(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(), SAMPLE_RATE, subtype="PCM_16")
    return path.read_bytes()


def expect_error(source, *fragments, **kwargs):
    with pytest.raises(AudioError) as info:
        load(source, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


# ---- bad files: each message names the path and the problem ----


def test_missing_path(tmp_path):
    path = tmp_path / "nope.wav"
    expect_error(path, str(path), "no such file")


def test_directory(tmp_path):
    expect_error(tmp_path, str(tmp_path), "directory")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.touch()
    expect_error(path, str(path), "empty file")


def test_text_file(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("these are not the samples you are looking for\n" * 20)
    expect_error(path, str(path), "not an audio file")


def test_truncated_header(tmp_path, wav_bytes):
    path = tmp_path / "truncated.wav"
    path.write_bytes(wav_bytes[:20])
    expect_error(path, str(path), "corrupt or truncated audio header")


def test_garbled_header(tmp_path, wav_bytes):
    path = tmp_path / "garbled.wav"
    path.write_bytes(wav_bytes[:8] + b"XXXX" + wav_bytes[12:])
    expect_error(path, str(path), "corrupt or truncated audio header")


def test_header_without_frames(tmp_path, wav_bytes):
    path = tmp_path / "header_only.wav"
    path.write_bytes(wav_bytes[:44])
    expect_error(path, str(path), "no samples")


def test_file_shorter_than_minimum(tmp_path):
    path = tmp_path / "short.flac"
    sf.write(path, sine(seconds=0.05), SAMPLE_RATE)
    expect_error(path, str(path), "0.050 s", "minimum of 0.1 s")


def test_caller_can_raise_minimum(tmp_path):
    path = tmp_path / "one_second.wav"
    sf.write(path, sine(), SAMPLE_RATE)
    expect_error(path, "1.000 s", "minimum of 2 s", min_seconds=2.0)


def test_file_longer_than_default_maximum_is_refused_before_decoding(tmp_path, monkeypatch):
    # 100 Hz keeps a file just over MAX_SECONDS tiny.
    path = tmp_path / "long.wav"
    sf.write(path, np.zeros(int(MAX_SECONDS * 100) + 100, np.int16), 100)
    monkeypatch.setattr(audio.sf, "read", lambda *a, **k: pytest.fail("decoded a too-long file"))
    expect_error(path, str(path), "601.0 s", f"maximum of {MAX_SECONDS:g} s")


def test_nan_in_file(tmp_path):
    path = tmp_path / "nan.wav"
    x = sine()
    x[100] = np.nan
    sf.write(path, x, SAMPLE_RATE, subtype="FLOAT")
    expect_error(path, str(path), "NaN or infinite")


def test_file_rate_mismatch(tmp_path):
    path = tmp_path / "8k.wav"
    sf.write(path, sine(rate=8000), 8000)
    expect_error(path, str(path), "8000 Hz", sample_rate=16000)


def test_decoder_failure_is_wrapped(tmp_path, monkeypatch):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(), SAMPLE_RATE)

    def broken_read(*args, **kwargs):
        raise sf.LibsndfileError(1, "Error reading: ")

    monkeypatch.setattr(audio.sf, "read", broken_read)
    expect_error(path, str(path), "cannot decode")


# ---- bad arrays / tensors ----


def test_array_needs_sample_rate():
    expect_error(sine(), "array", "sample_rate is required")


@pytest.mark.parametrize("rate", [0, -16000, 16000.5, "16k", True])
def test_bad_sample_rate(rate):
    expect_error(sine(), "array", "bad sample_rate", sample_rate=rate)


def test_rates_above_the_supported_are_refused_before_resampling(tmp_path, monkeypatch):
    expect_error(sine(), "array", "above the 384000 Hz supported", sample_rate=10_000_019)
    # a header claiming 1 MHz: resampling from it would need a filter of millions of taps
    path = tmp_path / "fast.wav"
    sf.write(path, np.zeros(200_000, np.int16), 1_000_003)
    monkeypatch.setattr(audio.sf, "read", lambda *a, **k: pytest.fail("decoded a file at an unsupported rate"))
    expect_error(path, str(path), "1000003 Hz is above")


def test_a_file_name_that_is_not_utf8_is_named_as_such(tmp_path):
    import os

    path = os.path.join(os.fsencode(tmp_path), b"bad\xff name.wav")
    sf.write(tmp_path / "ok.wav", sine(), SAMPLE_RATE)
    os.rename(tmp_path / "ok.wav", path)
    message = expect_error(os.fsdecode(path), "not valid UTF-8")
    assert "corrupt" not in message


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_array(bad):
    x = sine()
    x[5] = bad
    expect_error(x, "array", "NaN or infinite", sample_rate=SAMPLE_RATE)


def test_non_finite_tensor():
    x = torch.from_numpy(sine())
    x[0] = float("nan")
    expect_error(x, "tensor", "NaN or infinite", sample_rate=SAMPLE_RATE)


def test_empty_array():
    expect_error(np.zeros(0, np.float32), "array", "no samples", sample_rate=SAMPLE_RATE)
    expect_error(np.zeros((0, 2), np.float32), "array", "no samples", sample_rate=SAMPLE_RATE)


def test_array_too_short():
    expect_error(sine(seconds=0.01), "array", "0.010 s", "minimum", sample_rate=SAMPLE_RATE)


def test_array_too_long():
    expect_error(sine(seconds=3.0), "array", "3.0 s", "maximum of 2 s", sample_rate=SAMPLE_RATE, max_seconds=2.0)


def test_three_dimensional_array():
    expect_error(np.zeros((1, 2, 16000), np.float32), "array", "3 dimensions", sample_rate=SAMPLE_RATE)


def test_unsupported_dtype_and_type():
    expect_error(np.ones(16000, np.complex64), "array", "dtype", sample_rate=SAMPLE_RATE)
    expect_error([0.0] * 16000, "list", "expected a path", sample_rate=SAMPLE_RATE)


# ---- good input ----


def test_real_clip(speech_clip):
    path, seconds = speech_clip
    x = load(path)
    assert x.dtype == np.float32 and x.ndim == 1 and x.flags.c_contiguous
    assert abs(len(x) / SAMPLE_RATE - seconds) < 1e-3
    assert 0 < np.abs(x).max() <= 1.0
    assert load(str(path), SAMPLE_RATE).tobytes() == x.tobytes()


def test_stereo_file_is_averaged(tmp_path):
    left, right = sine(440, amp=0.4), sine(1000, amp=0.2)
    path = tmp_path / "stereo.wav"
    sf.write(path, np.stack([left, right], axis=1), SAMPLE_RATE, subtype="FLOAT")
    np.testing.assert_allclose(load(path), (left + right) / 2, atol=1e-7)


@pytest.mark.parametrize("channels_first", [False, True])
def test_stereo_array_either_layout(channels_first):
    stereo = np.stack([sine(440), np.zeros(SAMPLE_RATE, np.float32)], axis=0 if channels_first else 1)
    np.testing.assert_allclose(load(stereo, SAMPLE_RATE), sine(440) / 2, atol=1e-7)


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_resampling_length_and_frequency(rate):
    x = sine(440, rate=rate)
    y = load(x, rate)
    assert y.dtype == np.float32
    assert len(y) == math.ceil(len(x) * SAMPLE_RATE / rate)
    assert abs(peak_hz(y) - 440) <= 1.0


def test_resampled_file(tmp_path):
    path = tmp_path / "8k.flac"
    sf.write(path, sine(1000, seconds=0.5, rate=8000), 8000)
    y = load(path)
    assert len(y) == 8000 and abs(peak_hz(y) - 1000) <= 2.0


def test_integer_arrays_are_scaled():
    np.testing.assert_array_equal(load(np.array([16384, -32768] * 1000, np.int16), SAMPLE_RATE)[:2], [0.5, -1.0])
    np.testing.assert_array_equal(load(np.array([2**30, -(2**31)] * 1000, np.int32), SAMPLE_RATE)[:2], [0.5, -1.0])


def test_tensor_input():
    x = sine()
    np.testing.assert_array_equal(load(torch.from_numpy(x), SAMPLE_RATE), x)
    # torchaudio layout: channels x frames, float64 and int16 tensors too
    np.testing.assert_allclose(load(torch.from_numpy(x).double()[None], SAMPLE_RATE), x, atol=1e-7)
    ints = torch.tensor([16384, -16384] * 1000, dtype=torch.int16)
    assert load(ints, SAMPLE_RATE)[:2].tolist() == [0.5, -0.5]


def lossy_round_trip(tmp_path, ext):
    path = tmp_path / f"tone.{ext}"
    sf.write(path, sine(440), SAMPLE_RATE)
    y = load(path)
    assert abs(len(y) - SAMPLE_RATE) < 0.05 * SAMPLE_RATE  # encoders may pad a frame
    assert abs(peak_hz(y) - 440) <= 1.0
    assert 0.3 < np.abs(y).max() < 0.7


def test_ogg_round_trip(tmp_path):
    lossy_round_trip(tmp_path, "ogg")


@pytest.mark.skipif("MP3" not in sf.available_formats(), reason="libsndfile built without MP3")
def test_mp3_round_trip(tmp_path):
    lossy_round_trip(tmp_path, "mp3")


def test_info_helper(tmp_path):
    path = tmp_path / "ok.wav"
    sf.write(path, sine(), SAMPLE_RATE)
    meta = audio.info(path)
    assert (meta.samplerate, meta.frames, meta.channels) == (SAMPLE_RATE, SAMPLE_RATE, 1)
    with pytest.raises(AudioError, match="no such file"):
        audio.info(tmp_path / "missing.wav")


def test_wav_shorter_than_its_header_is_refused(tmp_path):
    path = tmp_path / "cut.wav"
    sf.write(path, sine(seconds=2.0), SAMPLE_RATE, subtype="PCM_16")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    expect_error(path, str(path), "truncated: header says 2.00 s, file holds 1.00 s")
