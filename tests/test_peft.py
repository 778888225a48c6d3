"""Tuners (adapters, deep prompts, prefix, LoRA) on tiny random transformers front-ends."""

import json
import subprocess
import sys

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import lightsv  # noqa: E402
from lightsv.errors import AudioError, ConfigError  # noqa: E402
from lightsv.peft import adapters, lora, merge, prompts, tuner_parameters  # noqa: E402
from lightsv.peft.prompts import Prefixed  # noqa: E402

INPUTS = {"wav2vec2_tiny": (2, 8000, 1), "ast_tiny": (2, 100, 128)}
ADAPTERS = [
    dict(kind=k, placement=p, mode=m, reduction=4)
    for k in ("bottleneck", "conformer")
    for p in ("pfeiffer", "houlsby")
    for m in ("parallel", "sequential")
]
TUNERS = {
    **{f"adapter_{a['kind']}_{a['placement']}_{a['mode']}": ("adapter", a) for a in ADAPTERS},
    "prompt": ("prompt", {"length": 3}),
    "prefix": ("prefix", {"length": 3}),
    "lora": ("lora", {"r": 2, "targets": ["q", "v"]}),
    "lora_all": ("lora", {"r": 2, "targets": ["q", "k", "v", "out", "ffn1", "ffn2"]}),
}
APPLY = {"adapter": adapters.apply, "prompt": prompts.apply_prompts, "prefix": prompts.apply_prefix, "lora": lora.apply}


def make(size: str, tuner: str | None = None, **options) -> lightsv.ssl.SSLModel:
    torch.manual_seed(0)
    model = lightsv.build_model("ssl", size=size, head_dim=8, **options)
    if tuner is not None:
        kind, opts = TUNERS[tuner]
        APPLY[kind](model, **opts)
    model.prepare_training()
    return model


def perturb_tuners(model) -> None:
    """Move tuner weights off their (often zero) initial values so that they matter."""
    with torch.no_grad():
        for _, p in tuner_parameters(model):
            p.add_(0.1 * torch.randn_like(p))


def feats(size: str) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.randn(*INPUTS[size])


@pytest.mark.parametrize("size", INPUTS)
@pytest.mark.parametrize("tuner", TUNERS)
def test_identity_at_init_except_prompts(size, tuner):
    base = make(size).eval()
    tuned = make(size, tuner).eval()
    x = feats(size)
    with torch.no_grad():
        diff = (tuned(x) - base(x)).abs().max().item()
    if tuner in ("prompt", "prefix"):
        # added positions take softmax weight from the real ones: no initial value gives an identity
        assert diff > 1e-6
    else:
        assert diff == 0.0


@pytest.mark.parametrize("size", INPUTS)
def test_prefix_attention_matches_the_base_attention(size):
    """The prefixed attention recomputes attention itself; without its prefix it is the base module."""
    model = make(size, "prefix").eval()
    wrapper = next(m for m in model.modules() if isinstance(m, Prefixed))
    x = torch.randn(2, 7, model.ssl.config.hidden_size)
    with torch.no_grad():
        ours = wrapper.attend(x, None, prefix=False)
        theirs = wrapper.base_layer(x)[0]
    torch.testing.assert_close(ours, theirs)


@pytest.mark.parametrize("size", INPUTS)
@pytest.mark.parametrize("tuner", ["adapter_conformer_houlsby_parallel", "prompt", "prefix", "lora"])
def test_only_tuner_and_head_parameters_get_gradients(size, tuner):
    model = make(size, tuner).train()
    model(feats(size)).sum().backward()
    head = {n for n, _ in model.named_parameters() if n.startswith("head.")}
    expected = {n for n, _ in tuner_parameters(model)} | head
    got = {n for n, p in model.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == expected
    assert got and got <= expected
    assert any(not n.startswith("head.") for n in got)  # the tuner itself learns, not just the head


@pytest.mark.parametrize("size", INPUTS)
def test_frozen_encoder_stays_in_eval_mode_while_training(size):
    model = make(size, "adapter_bottleneck_pfeiffer_parallel")
    for m in model.ssl.modules():  # strong dropout everywhere in the encoder: it must stay off
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.5
    model.train()
    assert model.training and model.head.training
    base_modules = [m for n, m in model.ssl.named_modules() if "adapter" not in n]
    assert not any(m.training for m in base_modules)
    assert all(m.training for n, m in model.ssl.named_modules() if ".adapter" in n)
    x = feats(size)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model(x))  # no dropout in the frozen encoder
    full = make(size, "lora", finetune="full").train()
    assert all(m.training for m in full.modules())
    assert all(p.requires_grad for p in full.parameters())


@pytest.mark.parametrize("size", INPUTS)
def test_lora_merges_with_the_same_outputs(size, tmp_path):
    model = make(size, "lora_all").eval()
    perturb_tuners(model)
    x = feats(size)
    with torch.no_grad():
        before = model(x)
        merge(model)
        after = model(x)
    torch.testing.assert_close(after, before, rtol=1e-5, atol=1e-5)
    assert not list(tuner_parameters(model)) and model.tuners == []
    assert not any("lora_" in n or "proj.base_layer" in n for n, _ in model.named_parameters())
    lightsv.save_model(model, tmp_path / "merged.pt")
    with torch.no_grad():
        torch.testing.assert_close(lightsv.load_model(tmp_path / "merged.pt")(x), before, rtol=1e-5, atol=1e-5)


def test_non_linear_tuners_refuse_to_merge():
    model = make("ast_tiny", "adapter_bottleneck_pfeiffer_sequential")
    with pytest.raises(ConfigError, match="not linear"):
        merge(model)
    assert model.tuners  # nothing was merged


@pytest.mark.parametrize("size", INPUTS)
@pytest.mark.parametrize("tuner", ["adapter_conformer_houlsby_sequential", "prompt", "prefix", "lora"])
def test_checkpoint_round_trip_rebuilds_the_model(size, tuner, tmp_path):
    model = make(size, tuner).eval()
    perturb_tuners(model)
    lightsv.save_model(model, tmp_path / "m.pt")
    loaded = lightsv.load_model(tmp_path / "m.pt")
    x = feats(size)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))
    assert loaded.tuners == model.tuners
    assert loaded.state_dict().keys() == model.state_dict().keys()


def test_several_tuners_stack_and_replay(tmp_path):
    model = make("ast_tiny", "lora")
    adapters.apply(model, kind="conformer", placement="pfeiffer", reduction=4)
    prompts.apply_prompts(model, length=2)
    model.eval()
    perturb_tuners(model)
    lightsv.save_model(model, tmp_path / "m.pt")
    x = feats("ast_tiny")
    with torch.no_grad():
        torch.testing.assert_close(lightsv.load_model(tmp_path / "m.pt")(x), model(x))
    assert [r["kind"] for r in model.tuners] == ["lora", "adapter", "prompt"]


@pytest.mark.parametrize(
    "apply, options",
    [
        (lora.apply, {"targets": ["query_proj"]}),
        (adapters.apply, {"targets": [r"ssl\.nothing\.\d+"]}),
        (prompts.apply_prompts, {"targets": "blocks"}),
        (prompts.apply_prefix, {"targets": ["ssl.nowhere"]}),
    ],
)
def test_unknown_target_is_a_clear_error(apply, options):
    with pytest.raises(ConfigError, match="no module of SSLModel matches"):
        apply(make("wav2vec2_tiny"), **options)


def test_bad_tuner_options_are_clear_errors():
    with pytest.raises(ConfigError, match="LoRA here wraps linear layers"):
        lora.apply(make("wav2vec2_tiny"), targets=["attention"])
    with pytest.raises(ConfigError, match="placement"):
        adapters.apply(make("wav2vec2_tiny"), placement="middle")
    with pytest.raises(ConfigError, match="reduction"):
        adapters.apply(make("wav2vec2_tiny"), reduction=0)
    with pytest.raises(ConfigError, match="prefix tuning wraps"):
        prompts.apply_prefix(make("wav2vec2_tiny"), targets=["ffn"])


def test_graph_head_and_padding_of_wav2vec2():
    model = make("wav2vec2_tiny", head="graph").eval()
    x = feats("wav2vec2_tiny")
    assert model(x).shape == (2, 1)
    assert sum(p.numel() for p in model.head.parameters()) < 20_000


def test_ast_positions_are_interpolated_not_dropped():
    model = make("ast_tiny").eval()
    emb = model.ssl.embeddings
    table = emb.base_layer.position_embeddings
    assert emb.positions(100) is table  # the checkpoint's own length: unchanged
    with torch.no_grad():
        table[:, 2:] = torch.arange(9.0).repeat(12)[None, :, None]  # grid 12 x 9: time index as value
    longer = emb.positions(300)  # (300 - 16) // 10 + 1 = 29 time patches
    assert longer.shape == (1, 2 + 12 * 29, table.shape[-1])
    grid = longer[0, 2:, 0].reshape(12, 29)
    assert torch.all(grid[:, 1:] >= grid[:, :-1])  # still increasing along time: interpolated
    assert grid[:, 0].max() < 0.5 and grid[:, -1].min() > 7.5
    for frames in (40, 300):
        assert model(torch.randn(1, frames, 128)).shape == (1, 1)
    with pytest.raises(AudioError, match="shorter than one patch"):
        model(torch.randn(1, 10, 128))


def test_pretrained_directory_loads_locally_and_checkpoints_stand_alone(tmp_path):
    from transformers import Wav2Vec2Config, Wav2Vec2Model

    from lightsv.ssl.frontends import SIZES

    torch.manual_seed(3)
    encoder = Wav2Vec2Model(Wav2Vec2Config(**SIZES["wav2vec2_tiny"].config))
    encoder.save_pretrained(tmp_path / "w2v")
    model = lightsv.build_model("ssl", pretrained=str(tmp_path / "w2v"), head_dim=8).eval()
    for name, p in encoder.state_dict().items():
        torch.testing.assert_close(model.ssl.state_dict()[name], p)
    lightsv.save_model(model, tmp_path / "m.pt")
    (tmp_path / "w2v" / "config.json").unlink()  # the checkpoint must not need the directory
    x = feats("wav2vec2_tiny")
    with torch.no_grad():
        torch.testing.assert_close(lightsv.load_model(tmp_path / "m.pt")(x), model(x))


def test_missing_or_foreign_pretrained_directory_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="no such directory"):
        lightsv.build_model("ssl", pretrained=str(tmp_path / "absent"))
    with pytest.raises(ConfigError, match="no config.json"):
        lightsv.build_model("ssl", pretrained=str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ConfigError, match="'bert' is not one of"):
        lightsv.build_model("ssl", pretrained=str(tmp_path))
    with pytest.raises(ConfigError, match="unknown front-end size"):
        lightsv.build_model("ssl", size="gpt2")


def test_core_import_does_not_import_transformers():
    code = "import sys, lightsv, lightsv.train; print('transformers' in sys.modules or 'peft' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
