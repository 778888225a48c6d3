import math

import numpy as np
import pytest
import torch

from lightsv.audio import load
from lightsv.errors import AudioError, ConfigError
from lightsv.features import Fbank, FbankConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def kaldi_fbank_reference(x, c: FbankConfig):
    """Kaldi's compute-fbank written out the plain, slow way (float64, one frame at a time)."""
    x = np.asarray(x, np.float64) * 32768
    win = int(c.sample_rate * c.frame_length_ms / 1000)
    hop = int(c.sample_rate * c.frame_shift_ms / 1000)
    n = np.arange(win)
    if c.window == "hamming":
        window = 0.54 - 0.46 * np.cos(2 * np.pi * n / (win - 1))
    else:
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / (win - 1))
        if c.window == "povey":
            window = window**0.85

    def mel(f):
        return 1127.0 * math.log(1.0 + f / 700.0)

    nyquist = c.sample_rate / 2
    high = c.high_freq if c.high_freq > 0 else nyquist + c.high_freq
    mel_low, mel_high = mel(c.low_freq), mel(high)
    step = (mel_high - mel_low) / (c.n_mels + 1)
    banks = np.zeros((c.n_mels, c.n_fft // 2 + 1))
    for m in range(c.n_mels):
        left, center, right = mel_low + m * step, mel_low + (m + 1) * step, mel_low + (m + 2) * step
        for k in range(c.n_fft // 2):
            f = mel(k * c.sample_rate / c.n_fft)
            if left < f < right:
                banks[m, k] = (f - left) / (center - left) if f <= center else (right - f) / (right - center)

    out = []
    for t in range(1 + (len(x) - win) // hop):
        frame = x[t * hop : t * hop + win].copy()
        if c.remove_dc:
            frame -= frame.mean()
        previous = np.concatenate([frame[:1], frame[:-1]])
        frame = (frame - c.preemphasis * previous) * window
        power = np.abs(np.fft.rfft(frame, c.n_fft)) ** 2
        out.append(np.log(np.maximum(banks @ power, c.log_floor)))
    out = np.array(out)
    return out - out.mean(axis=0) if c.mean_norm else out


def features(config, wav, lengths=None):
    feats, frames = Fbank(config)(torch.as_tensor(wav)[None], lengths)
    return feats[0].numpy(), frames


@pytest.fixture(scope="module")
def clip(speech_clip):
    return load(speech_clip[0])


@pytest.mark.parametrize(
    "config",
    [
        FbankConfig(mean_norm=False),
        FbankConfig(mean_norm=True),
        FbankConfig(window="hamming", mean_norm=True),  # WeSpeaker's settings
        FbankConfig(window="hann", n_mels=40, low_freq=100, high_freq=-400, preemphasis=0.0, remove_dc=False),
    ],
    ids=["povey", "povey-cmn", "hamming-cmn", "hann-40mel-band"],
)
def test_matches_plain_numpy_reference(clip, config):
    ours, frames = features(config, clip)
    ref = kaldi_fbank_reference(clip, config)
    assert ours.shape == ref.shape == (frames.item(), config.n_mels)
    assert np.abs(ours - ref).max() < 1e-3


def test_matches_torchaudio_kaldi(clip):
    try:
        from torchaudio.compliance import kaldi
    except (ImportError, OSError) as exc:  # absent, or a build whose native library does not load
        pytest.skip(f"torchaudio not usable: {exc}")
    # float64: torchaudio's own float32 path is off by ~1e-3 on quiet bins.
    wav = torch.from_numpy(clip).double()
    for window in ("povey", "hamming"):
        ref = kaldi.fbank(
            wav[None] * 32768,
            num_mel_bins=80,
            frame_length=25,
            frame_shift=10,
            dither=0.0,
            sample_frequency=16000,
            window_type=window,
            use_energy=False,
        )
        ours, _ = features(FbankConfig(window=window, mean_norm=False), clip)
        assert np.abs(ours - ref.numpy()).max() < 1e-3


def test_digital_silence_hits_log_floor():
    feats, _ = features(FbankConfig(mean_norm=False), np.zeros(1600, np.float32))
    np.testing.assert_allclose(feats, math.log(FbankConfig().log_floor), rtol=1e-6)


def test_frame_count():
    c = FbankConfig()
    assert [c.frame_count(n) for n in (0, 399, 400, 559, 560, 16000)] == [0, 0, 1, 1, 2, 98]
    assert c.frame_count(torch.tensor([399, 400, 16000])).tolist() == [0, 1, 98]
    fbank = Fbank()
    for n in (400, 559, 560, 12345):
        assert fbank(torch.zeros(1, n))[0].shape[1] == fbank.frame_count(n)


def test_padded_batch_matches_unpadded_rows(clip):
    fbank = Fbank()
    rows = [clip[:16000], clip[3000 : 3000 + 12345], clip[:401]]
    lengths = torch.tensor([len(r) for r in rows])
    batch = torch.zeros(len(rows), max(lengths))
    for i, r in enumerate(rows):
        batch[i, : len(r)] = torch.from_numpy(r)
    feats, frames = fbank(batch, lengths)
    assert frames.tolist() == [fbank.frame_count(len(r)) for r in rows]
    for i, r in enumerate(rows):
        alone, _ = fbank(torch.from_numpy(r)[None])
        torch.testing.assert_close(feats[i, : frames[i]], alone[0], atol=1e-4, rtol=0)
        assert not feats[i, frames[i] :].any()


def test_full_lengths_equal_no_lengths(clip):
    fbank = Fbank()
    wav = torch.from_numpy(clip[:20000]).repeat(2, 1)
    a, fa = fbank(wav)
    b, fb = fbank(wav, torch.tensor([20000, 20000]))
    torch.testing.assert_close(a, b)
    assert fa.tolist() == fb.tolist() == [123, 123]


def test_derived_tables_are_buffers_not_state():
    fbank = Fbank()
    assert not list(fbank.parameters()) and not fbank.state_dict()
    assert {name for name, _ in fbank.named_buffers()} == {"dft", "mel"}


def test_bad_input_and_config():
    with pytest.raises(AudioError, match="shorter than one frame"):
        Fbank()(torch.zeros(1, 399))
    with pytest.raises(AudioError, match=r"\[batch, samples\]"):
        Fbank()(torch.zeros(16000))
    with pytest.raises(ConfigError, match="window"):
        Fbank(FbankConfig(window="blackman"))
    with pytest.raises(ConfigError, match="n_fft"):
        Fbank(FbankConfig(n_fft=256))
    with pytest.raises(ConfigError, match="high_freq"):
        Fbank(FbankConfig(low_freq=9000))


def test_export_with_dynamic_length_matches_eager(clip):
    fbank = Fbank().eval()
    wav = torch.from_numpy(clip[:16000]).repeat(2, 1)
    # The exported graph needs at least 2 frames (560 samples): torch.export specialises size-1 dims.
    samples, batch = torch.export.Dim("samples", min=560, max=600 * 16000), torch.export.Dim("batch", max=64)
    program = torch.export.export(
        fbank,
        (wav, torch.tensor([16000, 12000])),
        dynamic_shapes={"wav": {0: batch, 1: samples}, "lengths": {0: batch}},
    )
    other = torch.from_numpy(clip[:23456]).repeat(3, 1)
    lengths = torch.tensor([23456, 20000, 401])
    exported, eager = program.module()(other, lengths), fbank(other, lengths)
    torch.testing.assert_close(exported[0], eager[0])
    assert exported[1].tolist() == eager[1].tolist() == [145, 123, 1]
