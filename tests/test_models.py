import pytest
import torch

import lightsv
from lightsv.models import MODELS, build_model

# Full-size models are checked on short inputs to keep the suite fast on two cores.
FRAMES = 64


# The speaker backbones on fbank; "ssl" (transformers front-ends, waveform or 128-bin input, scored
# one clip at a time rather than padded) has its own tests in test_peft.py, "rawnet" (waveform) below.
@pytest.fixture(params=sorted(name for name in MODELS if name not in ("ssl", "rawnet")))
def model(request):
    torch.manual_seed(0)
    return build_model(request.param)


def test_contract_shape(model):
    model.eval()
    with torch.no_grad():
        emb = model(torch.randn(3, FRAMES, model.feat_dim))
    assert emb.shape == (3, model.embed_dim)
    assert torch.isfinite(emb).all()


def test_padding_does_not_change_embeddings(model):
    model.eval()
    feats = torch.randn(2, FRAMES, model.feat_dim)
    short = 41  # odd, so ResNet's stride-2 stages round it
    padded = feats.clone()
    padded[1, short:] = 123.0  # garbage in the padding must not leak
    with torch.no_grad():
        batch = model(padded, torch.tensor([FRAMES, short]))
        alone = model(feats[1:, :short])
        full = model(feats[:1])
    torch.testing.assert_close(batch[1:], alone, rtol=1e-3, atol=1e-3 * alone.abs().max().item())
    torch.testing.assert_close(batch[:1], full, rtol=1e-3, atol=1e-3 * full.abs().max().item())


def test_lengths_none_equals_full_lengths(model):
    model.eval()
    feats = torch.randn(2, FRAMES, model.feat_dim)
    with torch.no_grad():
        torch.testing.assert_close(model(feats), model(feats, torch.tensor([FRAMES, FRAMES])))


@pytest.mark.parametrize("name", ["ecapa_tdnn_small", "resnet18", "amcrn_small"])
def test_every_parameter_gets_a_gradient(name):
    torch.manual_seed(0)
    model = build_model(name).train()
    emb = model(torch.randn(3, FRAMES, 80), torch.tensor([FRAMES, 50, 40]))
    (emb * torch.randn_like(emb)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead


def test_factories_differ_in_size():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert (
        count(build_model("ecapa_tdnn_1024"))
        > count(build_model("ecapa_tdnn"))
        > count(build_model("ecapa_tdnn_small"))
    )
    assert count(build_model("resnet34")) > count(build_model("resnet18"))
    # ResNet34 at base width 32 is the usual 6.6M-parameter speaker model
    assert 6.0e6 < count(build_model("resnet34")) < 7.0e6


def test_options_override_config():
    model = build_model("ecapa_tdnn_small", embed_dim=128, feat_dim=40)
    with torch.no_grad():
        assert model.eval()(torch.randn(1, 30, 40)).shape == (1, 128)


def test_unknown_model_and_bad_option():
    with pytest.raises(lightsv.ConfigError, match="unknown model 'nope'.*ecapa_tdnn"):
        build_model("nope")
    with pytest.raises(lightsv.ConfigError, match="bad options for model 'resnet34'"):
        build_model("resnet34", widht=3)


def test_attentive_pooling_equals_its_definition_on_the_concatenated_context():
    """The pooling applies its first attention layer to [x, mean, std] without building that input
    (W_x x + W_m mean + W_s std); the result must be the layer on the concatenation, padding included."""
    from lightsv.models.pooling import AttentiveStatsPool, frame_mask, masked_mean_std

    torch.manual_seed(0)
    pool = AttentiveStatsPool(12, 8).eval()
    with torch.no_grad():
        pool.attention[2].running_mean.uniform_(-1, 1)  # a trained batch norm, not the identity
    x = torch.randn(3, 12, 40)
    mask = frame_mask(torch.tensor([40, 25, 7]), x)
    with torch.no_grad():
        mean, std = masked_mean_std(x, mask)
        context = torch.cat([x, mean[..., None].expand_as(x), std[..., None].expand_as(x)], dim=1)
        weights = torch.softmax(pool.attention(context).masked_fill(mask == 0, float("-inf")), dim=-1)
        want = torch.cat(masked_mean_std(x, weights), dim=1)
        got = pool(x, mask)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got[1], pool(x[1:2])[0], atol=1e-3)  # the mask is used


# ----------------------------------------------------------------------------- rawnet (waveform)


def test_rawnet_reads_waveforms_and_ignores_padding():
    torch.manual_seed(0)
    model = build_model("rawnet", feat_dim=80).eval()
    assert model.input_kind == "wav" and model.feat_dim == 1
    wav = 0.1 * torch.randn(2, 8000, 1)
    padded = wav.clone()
    padded[1, 5001:] = 123.0  # garbage past the second row's length must not leak
    with torch.no_grad():
        batch = model(padded, torch.tensor([8000, 5001]))
        alone = model(wav[1:, :5001])
        full = model(wav[:1])
    assert batch.shape == (2, 1) and torch.isfinite(batch).all()
    torch.testing.assert_close(batch[1:], alone, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(batch[:1], full, rtol=1e-4, atol=1e-5)


def test_rawnet_learns_its_filter_edges():
    torch.manual_seed(0)
    model = build_model("rawnet", channels=[8, 8], sinc_filters=6).train()
    out = model(0.1 * torch.randn(3, 4000, 1), torch.tensor([4000, 3000, 2000]))
    (out * torch.randn_like(out)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead  # the sinc filters' cut-offs and widths included


def test_sinc_filters_pass_their_band():
    from lightsv.models.rawnet import SincConv

    sinc = SincConv(4, 257, 16000)
    with torch.no_grad():
        taps = sinc.filters()
        low, high = sinc.MIN_LOW + sinc.low.abs(), sinc.MIN_LOW + sinc.low.abs() + sinc.MIN_BAND + sinc.band.abs()
    assert torch.allclose(taps[:, 128], torch.ones(4))  # SincNet's scaling: a unit centre tap
    gain = torch.fft.rfft(taps, n=16000).abs()  # 1 Hz bins
    skirt = 250  # Hz: beyond the Hamming window's main lobe (2 x 16000 / 257 Hz) on either edge
    for k in range(4):
        centre, below, above = int((low[k] + high[k]) / 2), int(low[k]) - skirt, int(high[k]) + skirt
        assert below < 0 or gain[k, below] < 0.05 * gain[k, centre]
        assert above > 8000 or gain[k, above] < 0.05 * gain[k, centre]


def test_rawnet_refuses_clips_too_short_to_pool():
    model = build_model("rawnet", channels=[8, 8], sinc_filters=6).eval()
    with pytest.raises(lightsv.errors.AudioError, match="at least 27 samples"):
        model(torch.zeros(1, 20, 1))
    with pytest.raises(lightsv.errors.AudioError):
        model(torch.zeros(2, 100, 1), torch.tensor([100, 10]))


def test_rawnet_bad_config():
    with pytest.raises(lightsv.errors.ConfigError):
        build_model("rawnet", sinc_kernel=128)
    with pytest.raises(lightsv.errors.ConfigError):
        build_model("rawnet", channels=[])
