"""Profiling: exact MAC counts on tiny models (recurrent layers included), peak memory, latency, table."""

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightsv.errors import ConfigError
from lightsv.profile import (
    EXTRA_FLOP_FORMULAS,
    PeakMemory,
    count_macs,
    inference_peak_bytes,
    profile,
    profile_table,
    train_peak_bytes,
)

F, C, D = 8, 16, 4


class TinyConv(nn.Module):
    feat_dim, embed_dim = F, D

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(F, C, 3, padding=1)
        self.bn = nn.BatchNorm1d(C)
        self.embed = nn.Linear(C, D)

    def forward(self, feats, lengths=None):
        return self.embed(torch.relu(self.bn(self.conv(feats.transpose(1, 2)))).mean(2))


class TinyRecurrent(nn.Module):
    feat_dim, embed_dim = F, D

    def __init__(self, rnn=nn.GRU, hidden=6, layers=2):
        super().__init__()
        self.rnn = rnn(F, hidden, num_layers=layers, bidirectional=True, batch_first=True)
        self.embed = nn.Linear(2 * hidden, D)

    def forward(self, feats, lengths=None):
        return self.embed(self.rnn(feats)[0].mean(1))


def recurrent_macs(gates, frames, hidden=6, layers=2):
    """Both directions of a stacked bidirectional RNN: G*H*(I + H) MACs per frame and direction."""
    inputs = [F] + [2 * hidden] * (layers - 1)
    return sum(2 * frames * gates * hidden * (i + hidden) for i in inputs)


def test_conv_macs_are_exact_and_per_second_of_audio():
    result = profile(TinyConv(), seconds=0.5, repeats=1, train_step=False)
    frames = 50
    assert result["macs_per_second"] == pytest.approx((C * F * 3 * frames + C * D) / 0.5)
    assert result["macs_by_module"] == pytest.approx({"conv": C * F * 3 * frames / 0.5, "embed": C * D / 0.5})


def test_gru_macs_counted_by_flop_counter():
    macs, by_module = count_macs(TinyRecurrent(nn.GRU).eval(), torch.randn(1, 20, F))
    assert by_module["rnn"] == recurrent_macs(3, 20)
    assert macs == recurrent_macs(3, 20) + 2 * 6 * D


@pytest.mark.filterwarnings("ignore:TF32")
def test_lstm_macs_counted_on_fused_cpu_path_as_on_decomposed_one():
    model, feats = TinyRecurrent(nn.LSTM).eval(), torch.randn(1, 20, F)
    fused, _ = count_macs(model, feats)
    if torch.backends.mkldnn.is_available():
        with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=EXTRA_FLOP_FORMULAS) as counter:
            model(feats)
        assert torch.ops.aten.mkldnn_rnn_layer in counter.get_flop_counts()["Global"]
    # Without oneDNN the LSTM decomposes into addmm, which flop_counter counts by itself.
    with torch.backends.mkldnn.flags(enabled=False):
        decomposed, _ = count_macs(model, feats)
    assert fused == decomposed == recurrent_macs(4, 20) + 2 * 6 * D


def test_peak_memory_counts_new_storage_not_existing_tensors():
    existing = torch.zeros(1000)
    with PeakMemory(existing) as tracker:
        existing.t().add_(1)  # a view and an in-place op allocate nothing
        a = torch.empty(1000)  # 4000 bytes
        del a
        b = torch.empty(500)  # 2000 bytes, after a was freed
    assert tracker.peak == 4000
    assert tracker.current == 2000
    del b
    assert tracker.current == 0


def test_peak_memory_grows_with_input_and_training_exceeds_inference():
    model = TinyRecurrent(nn.GRU).eval()
    short, long = torch.randn(2, 50, F), torch.randn(2, 200, F)
    assert inference_peak_bytes(model, long) > inference_peak_bytes(model, short) > 0
    assert train_peak_bytes(model, short) > inference_peak_bytes(model, short)
    # Adam keeps two moments per parameter that SGD does not; they show where parameters dominate.
    few_frames = torch.randn(2, 2, F)
    assert train_peak_bytes(TinyConv(), few_frames, "adam") > train_peak_bytes(TinyConv(), few_frames, "sgd")


def test_peak_memory_matches_torch_mem_tracker():
    mem_tracker = pytest.importorskip("torch.distributed._tools.mem_tracker")
    model, feats = TinyConv(), torch.randn(2, 100, F)
    opt = torch.optim.Adam(model.parameters())

    def tracked(step):
        tracker = mem_tracker.MemTracker()
        tracker.track_external(model, feats, opt)
        with tracker:
            step()
        own = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers(), feats])
        return tracker.get_tracker_snapshot("peak")[torch.device("cpu")]["Total"] - own

    def train():
        model(feats).square().mean().backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    with torch.no_grad():
        assert inference_peak_bytes(model.eval(), feats) == tracked(lambda: model(feats))
    model.train()
    assert train_peak_bytes(model, feats) == tracked(train)


def test_profile_reports_and_leaves_model_and_threads_as_they_were():
    model = TinyConv().train()
    model.bn.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    threads = torch.get_num_threads()
    result = profile(model, seconds=0.3, repeats=2, threads=1)
    assert torch.get_num_threads() == threads
    assert model.training and not model.bn.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    n = sum(p.numel() for p in model.parameters())
    assert result["params"] == result["trainable_params"] == n
    assert result["peak_memory_train_bytes"] > result["peak_memory_inference_bytes"] > 0
    assert result["latency_ms"] > 0
    assert result["real_time_factor"] == pytest.approx(result["latency_ms"] / 1000 / 0.3)


def test_trainable_params_excludes_frozen():
    model = TinyConv()
    model.conv.requires_grad_(False)
    result = profile(model, seconds=0.1, repeats=1)
    assert result["params"] - result["trainable_params"] == sum(p.numel() for p in model.conv.parameters())


@pytest.mark.parametrize("options", [{"seconds": 0}, {"threads": 0}, {"optimizer": "lbfgs"}])
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        profile(TinyConv(), **options)


def test_profile_table_is_fixed_width_with_ratios_to_baseline():
    base = {
        "name": "plain",
        "params": 1000,
        "macs_per_second": 2e6,
        "fbank_macs_per_second": 3e6,
        "peak_memory_inference_bytes": 2**20,
        "peak_memory_train_bytes": 3 * 2**20,
        "latency_ms": 1.5,
    }
    half = {
        **base,
        "name": "plain K=2 sum",
        "params": 500,
        "macs_per_second": 1e6,
        "peak_memory_train_bytes": None,
        "latency_ms": 0.75,
    }
    lines = profile_table([base, half], baseline=base).splitlines()
    assert len({len(line) for line in lines}) == 1
    assert lines[2].split() == ["plain", "1,000", "2.0", "3.0", "1.00", "3.00", "1.50", "1.000", "1.000", "1.000"]
    assert lines[3].split()[-6:] == ["1.00", "-", "0.75", "0.500", "0.500", "0.500"]
    assert "params x" not in profile_table([base])
