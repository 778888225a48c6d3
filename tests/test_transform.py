import itertools

import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

import lightsv
from lightsv import transform
from lightsv.models import build_model

BACKBONES = ["ecapa_tdnn", "resnet34", "amcrn"]
VARIANTS = list(itertools.product([2, 4], [False, True], ["sum", "concat", "pool"]))


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def macs(model, frames=100, feat_dim=80):
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model.eval()(torch.randn(1, frames, feat_dim))
    return counter.get_total_flops() / 2


@pytest.mark.parametrize("subsets,share,fusion", VARIANTS)
@pytest.mark.parametrize("name", ["ecapa_tdnn_small", "resnet18", "amcrn_small"])
def test_variant_keeps_contract_and_trains(name, subsets, share, fusion):
    torch.manual_seed(0)
    model = transform.apply(build_model(name), subsets=subsets, share=share, fusion=fusion).train()
    emb = model(torch.randn(3, 48, 80), torch.tensor([48, 40, 33]))
    assert emb.shape == (3, model.embed_dim)
    (emb * torch.randn_like(emb)).sum().backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not dead
    wrapped = [m for m in model.modules() if isinstance(m, transform.Transformed)]
    assert wrapped and all(len(m.blocks) == (1 if share else subsets) for m in wrapped)


def randomise_norms(model: nn.Module, seed: int = 0) -> nn.Module:
    """Trained-looking batch-norm statistics and affine weights: a fresh BN (mean 0, var 1, bias 0)
    maps zeroed padding to zero and hides a missing re-mask."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            if m.affine:
                m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.data.copy_(torch.randn(n, generator=g) * 0.5)
    return model


@pytest.mark.parametrize("share", [False, True])
@pytest.mark.parametrize("fusion", ["sum", "concat", "pool"])
@pytest.mark.parametrize("name", ["ecapa_tdnn_small", "resnet18", "amcrn_small"])
def test_padding_is_exact_with_trained_norms(name, fusion, share):
    torch.manual_seed(0)
    model = randomise_norms(transform.apply(build_model(name), subsets=4, share=share, fusion=fusion)).eval()
    feats = torch.randn(3, 50, 80)
    padded = feats.clone()
    padded[1, 31:] = 50.0  # garbage beyond the valid frames must not leak in
    padded[2, 17:] = -50.0
    with torch.no_grad():
        batch = model(padded, torch.tensor([50, 31, 17]))
        alone = [model(feats[i : i + 1, :n]) for i, n in enumerate([50, 31, 17])]
    torch.testing.assert_close(batch, torch.cat(alone), rtol=1e-4, atol=1e-4)


def test_fusion_by_hand():
    """Each fusion on a 2-subset input with identity projections and an identity batch norm."""
    x = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [10.0, 20.0], [30.0, 40.0]]])  # [B=1, C=4, T=2]
    a, b = x[:, :2], x[:, 2:]  # the two subsets, in channel order
    mean = (a + b) / 2

    def fusion(kind: str) -> transform.PartitionFusion:
        f = transform.PartitionFusion(2, subsets=2, fusion=kind).eval()
        f.norm.running_var.fill_(1 - f.norm.eps)  # BN(y) == y exactly
        eye = torch.eye(2)[:, :, None]
        f.proj.weight.data.copy_(torch.cat([eye, 2 * eye], dim=1) if kind == "concat" else eye)
        if f.score is not None:
            f.score.weight.data.copy_(eye)
        return f

    with torch.no_grad():
        out = fusion("sum")(x)
        torch.testing.assert_close(out, [a + mean, b + mean])
        out = fusion("concat")(x)  # proj([subset, mean]) = subset + 2 * mean, added to the subset
        torch.testing.assert_close(out, [2 * a + 2 * mean, 2 * b + 2 * mean])
        # pool: per channel, softmax over subsets of the time-averaged value weights the subsets
        pooled = torch.stack([a.mean(-1), b.mean(-1)])  # [K, B, C/K]
        w = torch.softmax(pooled, dim=0)[..., None]
        summary = w[0] * a + w[1] * b
        out = fusion("pool")(x)
        torch.testing.assert_close(out, [a + summary, b + summary])
        mask = torch.tensor([[[1.0, 0.0]]])  # the second frame is padding
        pooled = torch.stack([a[..., 0], b[..., 0]])
        w = torch.softmax(pooled, dim=0)[..., None]
        summary = w[0] * a + w[1] * b
        out = fusion("pool")(x, mask)
        torch.testing.assert_close(out, [(a + summary) * mask, (b + summary) * mask])


def test_outputs_are_joined_in_subset_order():
    wrapped = transform.Transformed(nn.Conv1d(4, 4, 1, bias=False), subsets=2, share=False, fusion="sum").eval()
    wrapped.fusion.proj.weight.data.zero_()  # no fusion: each block sees its own subset
    wrapped.fusion.norm.running_var.fill_(1 - wrapped.fusion.norm.eps)
    for k, block in enumerate(wrapped.blocks):
        block.weight.data.copy_((k + 1) * torch.eye(2)[:, :, None])
    x = torch.randn(1, 4, 3)
    with torch.no_grad():
        torch.testing.assert_close(wrapped(x), torch.cat([x[:, :2], 2 * x[:, 2:]], dim=1))


@pytest.mark.parametrize("fusion", ["sum", "pool"])
@pytest.mark.parametrize("name", ["ecapa_tdnn_small", "resnet18", "amcrn_small"])
def test_shared_block_equals_per_subset_blocks_with_the_same_weights(name, fusion):
    torch.manual_seed(0)
    shared = randomise_norms(transform.apply(build_model(name), subsets=4, share=True, fusion=fusion)).eval()
    per_subset = transform.apply(build_model(name), subsets=4, share=False, fusion=fusion).eval()
    state = shared.state_dict()
    # every per-subset block gets the shared block's weights; everything else is copied as is
    copied = {}
    for key in per_subset.state_dict():
        parts = key.split(".")
        if "blocks" in parts:
            i = len(parts) - 1 - parts[::-1].index("blocks")  # the Transformed wrapper's ModuleList
            if isinstance(per_subset.get_submodule(".".join(parts[:i])), transform.Transformed):
                key_shared = ".".join([*parts[: i + 1], "0", *parts[i + 2 :]])
                copied[key] = state[key_shared]
                continue
        copied[key] = state[key]
    per_subset.load_state_dict(copied)
    feats = torch.randn(3, 40, 80)
    lengths = torch.tensor([40, 27, 13])  # padded rows: masks must be tiled per subset
    with torch.no_grad():
        torch.testing.assert_close(shared(feats, lengths), per_subset(feats, lengths), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", BACKBONES)
def test_k4_cuts_params_and_macs_of_full_backbones(name):
    plain = build_model(name)
    per_subset = transform.apply(build_model(name), subsets=4)
    shared = transform.apply(build_model(name), subsets=4, share=True)
    # the bar: K=4 at or below 35% of the parameters and 40% of the MACs
    assert n_params(per_subset) <= 0.35 * n_params(plain)
    assert macs(per_subset) <= 0.40 * macs(plain)
    # one shared narrow block cuts wrapped parameters by about K^2
    assert n_params(shared) <= 0.12 * n_params(plain)


@pytest.mark.parametrize("share,param_ratio", [(False, 1 / 4), (True, 1 / 16)])
def test_single_block_costs_fall_by_design(share, param_ratio):
    from lightsv.models.ecapa import SERes2Block

    block = SERes2Block(256, 256, kernel_size=3, dilation=2, scale=8, se_channels=128)
    wrapped = transform.Transformed(block, subsets=4, share=share, fusion="sum")
    fusion = n_params(wrapped.fusion)
    assert fusion < 0.05 * n_params(block)
    assert n_params(wrapped) - fusion == pytest.approx(param_ratio * n_params(block), rel=0.05)

    def block_macs(m):
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            m.eval()(torch.randn(1, 256, 100))
        return counter.get_total_flops() / 2

    assert block_macs(wrapped) == pytest.approx(block_macs(block) / 4, rel=0.1)


def test_narrow_divides_every_channel_count():
    block = nn.Sequential(
        nn.Conv1d(64, 128, 3, padding=1),
        nn.BatchNorm1d(128),
        nn.PReLU(128),
        nn.Conv1d(128, 128, 3, padding=1, groups=128),
        nn.Conv1d(128, 32, 1),
    )
    small = transform.narrow(block, 4)
    assert [getattr(m, "out_channels", None) for m in small] == [32, None, None, 32, 8]
    assert small[3].groups == 32 and small[1].num_features == 32 and small[2].num_parameters == 32
    assert small(torch.randn(2, 16, 10)).shape == (2, 8, 10)
    assert block[0].out_channels == 128  # the original is untouched


def test_third_party_model_by_pattern():
    # a model lightsv knows nothing about: channel-first blocks found by name pattern
    model = nn.Sequential(
        nn.Conv1d(80, 64, 3, padding=1),
        nn.ReLU(),
        nn.Sequential(nn.Conv1d(64, 64, 3, padding=1), nn.BatchNorm1d(64), nn.ReLU()),
        nn.Conv1d(64, 32, 1),
    )
    transform.apply(model, subsets=4, targets=["2", "3"])
    assert isinstance(model[2], transform.Transformed) and isinstance(model[3], transform.Transformed)
    assert model(torch.randn(2, 80, 20)).shape == (2, 32, 20)


def test_bad_options_are_clear():
    with pytest.raises(lightsv.ConfigError, match="unknown fusion 'max'"):
        transform.apply(build_model("amcrn_small"), fusion="max")
    with pytest.raises(lightsv.ConfigError, match="subsets must be an integer >= 2"):
        transform.apply(build_model("amcrn_small"), subsets=1)
    with pytest.raises(lightsv.ConfigError, match="cannot split .* into 3 subsets"):
        transform.apply(build_model("amcrn_small"), subsets=3)
    with pytest.raises(lightsv.ConfigError, match="matches targets"):
        transform.apply(build_model("amcrn_small"), targets="no_such_block")
    with pytest.raises(lightsv.ConfigError, match="names no default transform_targets"):
        transform.apply(nn.Sequential(nn.Linear(4, 4)))


def test_unknown_layer_with_parameters_is_refused():
    class Scale(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(16))

        def forward(self, x):
            return x * self.gain[:, None]

    model = nn.Sequential(nn.Sequential(nn.Conv1d(16, 16, 1), Scale()))
    with pytest.raises(lightsv.ConfigError, match="cannot narrow Scale"):
        transform.apply(model, subsets=2, targets="0")


def test_apply_is_recorded_for_checkpoints(tmp_path):
    model = transform.apply(build_model("resnet18"), subsets=2, share=True, fusion="pool")
    assert model.tuners == [
        {
            "kind": "transform",
            "options": {
                "subsets": 2,
                "share": True,
                "fusion": "pool",
                "targets": list(model.transform_targets),
                "in_channels": None,
            },
        }
    ]
    path = lightsv.save_model(model, tmp_path / "m.pt")
    again = lightsv.load_model(path)
    feats = torch.randn(1, 40, 80)
    with torch.no_grad():
        torch.testing.assert_close(again(feats), model.eval()(feats))


def test_speechbrain_ecapa_unmodified():
    ecapa_module = pytest.importorskip(
        "speechbrain.lobes.models.ECAPA_TDNN", reason="the lightsv[speechbrain] extra is not installed"
    )
    torch.manual_seed(0)
    plain = ecapa_module.ECAPA_TDNN(input_size=80, lin_neurons=192)
    model = ecapa_module.ECAPA_TDNN(input_size=80, lin_neurons=192)
    transform.apply(model, subsets=4, targets=[r"blocks\.[0-3]", "mfa"])
    assert sum(isinstance(m, transform.Transformed) for m in model.modules()) == 5
    emb = model.train()(torch.randn(2, 60, 80))
    assert emb.shape == plain.eval()(torch.randn(2, 60, 80)).shape
    (emb * torch.randn_like(emb)).sum().backward()
    assert all(p.grad is not None for p in model.parameters())
    assert n_params(model) < 0.55 * n_params(plain)
    assert macs(model) < 0.45 * macs(plain)
