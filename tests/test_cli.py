"""The command line: `lightsv profile` output, and errors as one line with exit code 2."""

import json
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml
from torch import nn

from lightsv.cli import main
from lightsv.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
FAST = ["--seconds", "0.2", "--repeats", "1"]


class Tiny(nn.Module):
    feat_dim, embed_dim = 8, 4

    def __init__(self, groups=1):
        super().__init__()
        self.conv = nn.Conv1d(8, 16, 3, padding=1, groups=groups)
        self.embed = nn.Linear(16, 4)

    def forward(self, feats, lengths=None):
        return self.embed(self.conv(feats.transpose(1, 2)).mean(2))


@pytest.fixture
def registry(monkeypatch):
    """Stand-ins for lightsv.models and lightsv.transform: tiny models, K-way grouped convolution."""
    models = types.ModuleType("lightsv.models")
    models.MODELS = {"tiny": Tiny, "tiny_b": Tiny}
    models.build_model = lambda name, **options: models.MODELS[name](**options)

    def apply(model, subsets=4, share=False, fusion="sum", targets=None):
        if subsets < 2:
            raise ConfigError(f"subsets must be an integer >= 2, got {subsets}")
        model.conv = nn.Conv1d(8, 16, 3, padding=1, groups=subsets)
        return model

    transform = types.ModuleType("lightsv.transform")
    transform.apply = apply
    monkeypatch.setitem(sys.modules, "lightsv.models", models)
    monkeypatch.setitem(sys.modules, "lightsv.transform", transform)
    return models


def test_profile_json_has_a_row_per_variant_with_ratios_to_plain(registry, capsys):
    assert main(["profile", "tiny", "--subsets", "2", "4", "--share", *FAST, "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [(r["model"], r["subsets"], r["share"], r["fusion"]) for r in rows] == [
        ("tiny", None, None, None),
        ("tiny", 2, True, "sum"),
        ("tiny", 4, True, "sum"),
    ]
    assert rows[0]["params_ratio"] == rows[0]["macs_ratio"] == 1.0
    conv = 16 * 8 * 3
    for row in rows[1:]:
        assert row["params"] == rows[0]["params"] - conv + conv // row["subsets"]
        assert row["params_ratio"] == pytest.approx(row["params"] / rows[0]["params"])
        assert row["macs_ratio"] < 1
    for key in ("macs_per_second", "peak_memory_inference_bytes", "peak_memory_train_bytes", "latency_ms"):
        assert all(row[key] > 0 for row in rows)


def test_profile_table_defaults_to_every_registered_model(registry, capsys):
    assert main(["profile", "--subsets", "2", *FAST]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()[2:]]
    assert names == ["tiny", "tiny", "tiny_b", "tiny_b"]
    assert "tiny K=2 sum" in out and "params x" in out


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["profile", "nope", "tiny"],
            "lightsv: error: unknown model 'nope'; known models: tiny, tiny_b (or give a checkpoint file)",
        ),
        (["profile", "tiny", "--subsets", "1"], "lightsv: error: subsets must be an integer >= 2, got 1"),
        (["profile", "--seconds", "0"], "lightsv: error: --seconds must be positive, got 0.0"),
    ],
)
def test_bad_requests_are_one_line_errors(registry, capsys, argv, message):
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.err == message + "\n" and captured.out == ""


@pytest.mark.parametrize(
    "error",
    [
        ConfigError("bad\nconfig"),
        FileNotFoundError(2, "No such file or directory", "model.yaml"),
        yaml.YAMLError("mapping values are not allowed here\n  in line 3"),
        KeyboardInterrupt(),
    ],
)
def test_user_errors_and_interrupts_exit_2_without_traceback(registry, capsys, error):
    def build_model(name, **options):
        raise error

    registry.build_model = build_model
    assert main(["profile", "tiny"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lightsv: error: ") and err.count("\n") == 1


def test_argparse_exits_become_return_codes(capsys):
    assert main(["--help"]) == 0
    assert "profile" in capsys.readouterr().out
    assert main([]) == 2
    assert main(["profile", "--subsets", "x"]) == 2


def test_a_checkpoint_file_is_profiled_as_it_is(capsys, tmp_path):
    import lightsv

    model = lightsv.build_model(
        "ecapa_tdnn_small", channels=32, embed_dim=32, se_channels=16, attention_channels=16, mfa_channels=96
    )
    path = lightsv.save_model(model, tmp_path / "small.pt")
    assert main(["profile", str(path), "--seconds", "0.2", "--repeats", "1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["name"] == "small.pt" and row["params"] == sum(p.numel() for p in model.parameters())
    # MACs counted one way: the filterbank and the network, and their sum, waveform to embedding.
    assert row["fbank_macs_per_second"] > 0 and row["macs_per_second"] > 0
    assert row["total_macs_per_second"] == pytest.approx(row["fbank_macs_per_second"] + row["macs_per_second"])


def test_real_small_model_with_the_real_transform(capsys):
    models = pytest.importorskip("lightsv.models")
    name = "ecapa_tdnn_small" if "ecapa_tdnn_small" in models.MODELS else next(iter(models.MODELS))
    torch.manual_seed(0)
    assert main(["profile", name, "--subsets", "2", "--seconds", "0.1", "--repeats", "1", "--json"]) == 0
    plain, transformed = json.loads(capsys.readouterr().out)
    assert plain["model"] == transformed["model"] == name
    assert transformed["params_ratio"] < 1 and transformed["macs_ratio"] < 1


def test_python_dash_m_exits_2_with_one_line_and_no_traceback():
    result = subprocess.run(
        [sys.executable, "-m", "lightsv", "profile", "--seconds", "-1"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert result.stderr == "lightsv: error: --seconds must be positive, got -1.0\n"
    assert result.stdout == ""


def test_output_into_a_closed_pipe_ends_quietly():
    for argv in (["--help"], ["profile", "ecapa_tdnn_small", "--subsets", "--seconds", "0.1", "--repeats", "1"]):
        child = subprocess.Popen(
            [sys.executable, "-m", "lightsv", *argv], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        child.stdout.close()  # the reader is gone before anything is written, as with `| head` done early
        err = child.stderr.read().decode()
        assert child.wait(timeout=120) in (0, 141) and err == "", err
