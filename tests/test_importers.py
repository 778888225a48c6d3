"""Importing other toolkits' speaker models (lightsv.importers): parity with the toolkits' own code.

Random weights in each toolkit's release layout, made by the toolkit's code (SpeechBrain; pyannote.audio's
port of WeSpeaker's ResNet; 3D-Speaker's speakerlab), are imported and must give the toolkit's
embeddings from the waveform, in torch and after ONNX export (unit-length embeddings within 1e-4,
cosine >= 0.9999). Needs the speechbrain, wespeaker and 3dspeaker extras
(`python -m lightsv.extras speechbrain wespeaker 3dspeaker`); skipped without.
"""

import importlib.util
import json
import shutil

import numpy as np
import pytest
import torch
from importers_fixtures import (
    speechbrain_release,
    threedspeaker_embed,
    threedspeaker_release,
    wespeaker_embed,
    wespeaker_release,
)
from test_train import corpus as training_corpus

import lightsv
from lightsv import train as trainer
from lightsv import transform
from lightsv.audio import load
from lightsv.cli import main
from lightsv.errors import CheckpointError, ConfigError
from lightsv.importers import import_model
from lightsv.train import config as train_config
from lightsv.verifier import EXAMPLES

pytestmark = pytest.mark.usefixtures("one_thread")
needs_speechbrain = pytest.mark.skipif(
    importlib.util.find_spec("speechbrain") is None,
    reason="speechbrain is not installed: python -m lightsv.extras speechbrain",
)


def _has_wespeaker() -> bool:
    try:
        from lightsv.extras import wespeaker_resnet

        wespeaker_resnet()
        return importlib.util.find_spec("einops") is not None and importlib.util.find_spec("torchaudio") is not None
    except ImportError:
        return False


needs_wespeaker = pytest.mark.skipif(
    not _has_wespeaker(), reason="pyannote.audio's WeSpeaker port is not installed: python -m lightsv.extras wespeaker"
)


needs_3dspeaker = pytest.mark.skipif(
    importlib.util.find_spec("speakerlab") is None or importlib.util.find_spec("torchaudio") is None,
    reason="speakerlab (3D-Speaker's code) is not installed: python -m lightsv.extras 3dspeaker",
)


def _clips():
    """Real speech of three lengths (the bundled examples), as float32 tensors."""
    files = sorted(EXAMPLES.rglob("*.flac"))[:3]
    wavs = [torch.from_numpy(load(f)) for f in files]
    return [wavs[0][: 16000 * 3], wavs[1][:23456], wavs[2][: 16000 * 5]]


def _unit(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _assert_same(ours, theirs):
    ours, theirs = _unit(ours), _unit(theirs)
    assert np.abs(ours - theirs).max() <= 1e-4
    assert (ours * theirs).sum(-1).min() >= 0.9999


def _onnx_embed(path, wavs):
    from lightsv.runtime import OnnxModel

    onnx = OnnxModel(path)
    return [onnx.session.run(None, {"wav": w.numpy()[None], "lengths": np.array([len(w)])})[0][0] for w in wavs]


@pytest.fixture(scope="module")
def speechbrain_pair(tmp_path_factory):
    directory, encoder = speechbrain_release(tmp_path_factory.mktemp("sb") / "release")
    out = directory.parent / "imported.pt"
    import_model("speechbrain", directory, out=out)
    return directory, encoder, out


@pytest.fixture(scope="module")
def wespeaker_pair(tmp_path_factory):
    directory, net = wespeaker_release(tmp_path_factory.mktemp("we") / "release")
    out = directory.parent / "imported.pt"
    import_model("wespeaker", directory, out=out)
    return directory, net, out


# ----------------------------------------------------------------------------- SpeechBrain


@needs_speechbrain
def test_speechbrain_front_end_is_speechbrains(speechbrain_pair):
    _, encoder, out = speechbrain_pair
    _, extra = lightsv.load_model(out, return_extra=True)
    from lightsv.edge.frontend import FftFbank
    from lightsv.features import Fbank, FbankConfig

    config = FbankConfig(**extra["features"])
    assert config.style == "speechbrain"
    for wav in _clips():
        with torch.no_grad():
            theirs = encoder.mods.mean_var_norm(encoder.mods.compute_features(wav[None]), torch.ones(1))
        for front in (Fbank(config), FftFbank(config)):
            ours, frames = front(wav[None], torch.tensor([len(wav)]))
            assert ours.shape == theirs.shape and int(frames) == theirs.shape[1]
            assert (ours - theirs).abs().max() < 1e-3  # dB values; ~1e-5 in practice


@needs_speechbrain
def test_speechbrain_embeddings_match_in_torch_verifier_and_onnx(speechbrain_pair, tmp_path):
    _, encoder, out = speechbrain_pair
    wavs = _clips()
    with torch.no_grad():
        theirs = [encoder.encode_batch(w[None])[0, 0].numpy() for w in wavs]
    verifier = lightsv.Verifier.load(out, vad=False)
    _assert_same(verifier.embed_many([w.numpy() for w in wavs], sample_rate=16000), theirs)  # one padded batch
    from lightsv.edge.export import ExportConfig, export_checkpoint

    # the default (matrix) front-end; the FFT one computes the same features (the test above) and
    # exports through the same ops as lightsv's own (test_edge)
    path = export_checkpoint(out, tmp_path / "m.onnx", config=ExportConfig(frontend="matrix"))
    _assert_same(_onnx_embed(path, wavs), theirs)
    onnx = lightsv.Verifier.load(path, vad=False)
    assert onnx.model_id == verifier.model_id
    _assert_same(onnx.embed_many([w.numpy() for w in wavs], sample_rate=16000), theirs)


@needs_speechbrain
def test_sherpa_onnx_export_of_a_speechbrain_model_is_refused(speechbrain_pair, tmp_path):
    pytest.importorskip("onnxscript")
    from lightsv.edge.export import ExportConfig, ExportError, export_checkpoint

    with pytest.raises(ExportError, match="sherpa-onnx computes Kaldi filterbanks"):
        export_checkpoint(speechbrain_pair[2], tmp_path / "s.onnx", config=ExportConfig(format="sherpa-onnx"))
    assert (
        main(
            [
                "export",
                "--model",
                str(speechbrain_pair[2]),
                "--format",
                "sherpa-onnx",
                "--out",
                str(tmp_path / "s.onnx"),
            ]
        )
        == 2
    )


@needs_speechbrain
def test_speechbrain_embedding_norm_is_encode_batch_normalize(speechbrain_pair):
    directory, encoder, _ = speechbrain_pair
    model, extra = import_model("speechbrain", directory, embedding_norm=True)
    from lightsv.features import Fbank, FbankConfig

    wav = _clips()[0]
    with torch.no_grad():
        theirs = encoder.encode_batch(wav[None], normalize=True)[0, 0]
        plain = encoder.encode_batch(wav[None])[0, 0]
        ours = model(*Fbank(FbankConfig(**extra["features"]))(wav[None], torch.tensor([len(wav)])))[0]
    assert (ours - theirs).abs().max() < 1e-4 and (plain - theirs).abs().max() > 1e-2


@needs_speechbrain
def test_speechbrain_hyperparams_are_read_not_run(tmp_path):
    directory, _ = speechbrain_release(tmp_path / "release")
    marker = tmp_path / "ran"
    text = (directory / "hyperparams.yaml").read_text()
    (directory / "hyperparams.yaml").write_text(text + f"side_effect: !apply:os.system ['touch {marker}']\n")
    import_model("speechbrain", directory)
    assert not marker.exists()


@needs_speechbrain
def test_speechbrain_mismatches_are_named(tmp_path):
    directory, _ = speechbrain_release(tmp_path / "release")
    hparams = (directory / "hyperparams.yaml").read_text()
    state = torch.load(directory / "embedding_model.ckpt", weights_only=True)

    def fails(match, text=hparams, weights=state):
        (directory / "hyperparams.yaml").write_text(text)
        torch.save(weights, directory / "embedding_model.ckpt")
        with pytest.raises(CheckpointError, match=match):
            import_model("speechbrain", directory)

    fails(
        "missing keys: blocks.0.conv.conv.bias",
        weights={k: v for k, v in state.items() if k != "blocks.0.conv.conv.bias"},
    )
    fails("unexpected keys: extra.weight", weights={**state, "extra.weight": torch.zeros(1)})
    fails("wrong shapes: layer1.conv.weight", text=hparams.replace("n_mels: 24", "n_mels: 32"))
    fails(
        "speechbrain.lobes.models.Xvector.Xvector; supported: speechbrain.lobes.models.ECAPA_TDNN.ECAPA_TDNN",
        text=hparams.replace("ECAPA_TDNN.ECAPA_TDNN\n", "Xvector.Xvector\n"),
    )
    fails("kernel_sizes is \\[5, 3, 3, 3, 3\\]", text=hparams.replace("[5, 3, 3, 3, 1]", "[5, 3, 3, 3, 3]"))
    fails("norm_type='global'", text=hparams.replace("norm_type: sentence", "norm_type: global"))
    fails(
        "deltas",
        text=hparams.replace("    n_mels: !ref <n_mels>\n", "    n_mels: !ref <n_mels>\n    deltas: True\n", 1),
    )
    fails("only plain references", text=hparams.replace("input_size: !ref <n_mels>", "input_size: !ref <n_mels> * 2"))
    (directory / "hyperparams.yaml").write_text(hparams)
    (directory / "embedding_model.ckpt").write_bytes(b"not a torch file")
    with pytest.raises(CheckpointError, match="cannot be read as a weights-only torch file"):
        import_model("speechbrain", directory)


# ----------------------------------------------------------------------------- WeSpeaker


@needs_wespeaker
def test_wespeaker_resnet_matches_in_torch_and_onnx(wespeaker_pair, tmp_path):
    _, net, out = wespeaker_pair
    wavs = _clips()
    theirs = [wespeaker_embed(net, w, 40)[0].numpy() for w in wavs]
    model, extra = lightsv.load_model(out, return_extra=True)
    assert extra["features"]["window"] == "hamming" and extra["imported_from"]["model"] == "ResNet34"
    verifier = lightsv.Verifier.load(out, vad=False)
    _assert_same(verifier.embed_many([w.numpy() for w in wavs], sample_rate=16000), theirs)
    from lightsv.edge.export import export_checkpoint

    _assert_same(_onnx_embed(export_checkpoint(out, tmp_path / "m.onnx"), wavs), theirs)


@needs_wespeaker
def test_wespeaker_mismatches_are_named(wespeaker_pair, tmp_path):
    directory, _, _ = wespeaker_pair
    release = tmp_path / "release"
    shutil.copytree(directory, release)
    config = (release / "config.yaml").read_text()
    (release / "config.yaml").write_text(config.replace("model: ResNet34", "model: ResNet18"))
    with pytest.raises(CheckpointError, match="unexpected keys: layer1.2.bn1.bias"):
        import_model("wespeaker", release)
    (release / "config.yaml").write_text(config.replace("model: ResNet34", "model: ECAPA_TDNN_GLOB_c512"))
    with pytest.raises(
        CheckpointError, match="model 'ECAPA_TDNN_GLOB_c512'; lightsv imports WeSpeaker's ResNet18, ResNet34"
    ):
        import_model("wespeaker", release)
    (release / "config.yaml").write_text(config.replace("two_emb_layer: false", "two_emb_layer: true"))
    with pytest.raises(CheckpointError, match="two_emb_layer"):
        import_model("wespeaker", release)
    (release / "config.yaml").write_text(config)
    state = torch.load(release / "avg_model.pt", weights_only=True)
    torch.save({k: v for k, v in state.items() if k != "seg_1.bias"}, release / "avg_model.pt")
    with pytest.raises(CheckpointError, match="missing keys: seg_1.bias"):
        import_model("wespeaker", release)


# ----------------------------------------------------------------------------- 3D-Speaker


@needs_3dspeaker
def test_threedspeaker_ecapa_matches_in_torch(tmp_path):
    # the released size (speakerlab's infer_sv.py table fixes it); ONNX parity is in
    # benchmarks/results/importers_parity.md, as exporting this 20M-parameter model takes minutes here
    path, net = threedspeaker_release(tmp_path / "release")
    wavs = _clips()
    theirs = [threedspeaker_embed(net, w)[0].numpy() for w in wavs]
    out = tmp_path / "m.pt"
    lightsv.import_model("3dspeaker", path.parent, out=out)  # the top-level name
    _, extra = lightsv.load_model(out, return_extra=True)
    assert extra["features"]["window"] == "povey" and extra["features"]["int16_scale"] is False
    _assert_same(lightsv.Verifier.load(out, vad=False).embed_many([w.numpy() for w in wavs], sample_rate=16000), theirs)
    renamed = tmp_path / "mine.pt"
    shutil.copy(path, renamed)
    with pytest.raises(CheckpointError, match="pass model= one of those names"):
        import_model("3dspeaker", renamed)
    import_model("3dspeaker", renamed, model="ecapa_tdnn.bin")
    campplus = tmp_path / "cam" / "campplus_voxceleb.bin"
    campplus.parent.mkdir()
    shutil.copy(path, campplus)
    with pytest.raises(CheckpointError, match="CAM\\+\\+ and ERes2Net are not imported yet"):
        import_model("3dspeaker", campplus.parent)
    with pytest.raises(CheckpointError, match="CAM\\+\\+ and ERes2Net are not imported yet"):
        import_model("3dspeaker", campplus)


# ----------------------------------------------------------------------------- both


def test_unknown_toolkit_and_missing_release(tmp_path):
    with pytest.raises(ConfigError, match="unknown toolkit 'kaldi'"):
        import_model("kaldi", tmp_path)
    with pytest.raises(CheckpointError, match="hyperparams.yaml: missing"):
        import_model("speechbrain", tmp_path)
    with pytest.raises(CheckpointError, match="config.yaml: missing"):
        import_model("wespeaker", tmp_path)
    (tmp_path / "config.yaml").write_text("model: [unclosed\n")
    with pytest.raises(CheckpointError, match="cannot be read as YAML"):
        import_model("wespeaker", tmp_path)


@needs_speechbrain
@needs_wespeaker
def test_another_toolkits_release_is_refused(speechbrain_pair, wespeaker_pair):
    with pytest.raises(CheckpointError, match="hyperparams.yaml: missing"):
        import_model("speechbrain", wespeaker_pair[0])
    with pytest.raises(CheckpointError, match="config.yaml: missing"):
        import_model("wespeaker", speechbrain_pair[0])


@needs_speechbrain
def test_cli_import(speechbrain_pair, tmp_path, capsys):
    directory, _, _ = speechbrain_pair
    assert main(["import", "speechbrain", str(directory), "--out", str(tmp_path / "m.pt")]) == 0
    assert "speechbrain ecapa_tdnn" in capsys.readouterr().out
    lightsv.load_model(tmp_path / "m.pt")
    assert main(["import", "wespeaker", str(directory), "--out", str(tmp_path / "x.pt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "config.yaml: missing" in err
    assert main(["import", "speechbrain", str(directory), "--out", str(tmp_path / "no" / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()


# ----------------------------------------------------------------------------- shrink and fine-tune


corpus = training_corpus  # the small real-speech corpus of the training tests, as a fixture here


@needs_speechbrain
def test_init_from_an_imported_model_with_the_transformation_module(speechbrain_pair, corpus, tmp_path):
    _, _, imported = speechbrain_pair
    base = {
        "init_from": str(imported),
        "data": {"root": str(corpus / "wav"), "splits": str(corpus / "splits.csv")},
        "transform": {"subsets": 2},
        "optim": {"lr": 0.005, "warmup_epochs": 0.5},
        "epochs": 1,
        "steps_per_epoch": 2,
        "batch_size": 4,
        "per_speaker": 2,
        "crop_seconds": 1.0,
        "eval": {"bootstrap": 20},
    }
    config = train_config.config_from_dict(base)
    assert config.model.name == "ecapa_tdnn" and config.model.options["padding_mode"] == "reflect"
    assert config.features.style == "speechbrain" and config.features.n_mels == 24
    source = lightsv.load_model(imported)
    model = train_config.build(config)
    # the transformation module wraps the target blocks; what it does not wrap keeps the imported weights
    assert any(isinstance(m, transform.Transformed) for m in model.modules())
    kept = [k for k in model.state_dict() if k in source.state_dict() and k.startswith(("layer1.", "pool_norm."))]
    assert kept and all(torch.equal(model.state_dict()[k], source.state_dict()[k]) for k in kept)
    trained = trainer.train(config, tmp_path / "run", progress=False)
    changed = [
        k
        for k in kept
        if k.endswith("weight") and not torch.equal(trained.model.state_dict()[k], source.state_dict()[k])
    ]
    assert changed  # training moved the imported weights
    _, extra = lightsv.load_model(tmp_path / "run" / "model.pt", return_extra=True)
    assert extra["training_config"]["features"]["style"] == "speechbrain"
    assert lightsv.Verifier.load(tmp_path / "run" / "model.pt").fbank.config.style == "speechbrain"

    with pytest.raises(ConfigError, match="features.n_mels differ"):
        train_config.config_from_dict({**base, "features": {"n_mels": 80}})
    with pytest.raises(ConfigError, match="drop the model section"):
        train_config.config_from_dict({**base, "model": {"name": "resnet34"}})
    with pytest.raises(ConfigError, match="init_from: .*no such checkpoint file"):
        train_config.config_from_dict({**base, "init_from": str(tmp_path / "absent.pt")})
    assert json.loads(json.dumps(config.model.options))  # plain data, as a recipe would write it


def test_new_model_options_enter_the_model_id_only_when_set():
    from lightsv.verifier import _id_config, model_id

    plain = lightsv.build_model("ecapa_tdnn_small")
    reflect = lightsv.build_model("ecapa_tdnn_small", padding_mode="reflect")
    reflect.load_state_dict(plain.state_dict())
    assert "padding_mode" not in _id_config(plain.config) and _id_config(reflect.config)["padding_mode"] == "reflect"
    assert model_id(plain) != model_id(reflect)  # same weights, different embeddings
    tstp = lightsv.build_model("resnet18", pooling="tstp")
    assert _id_config(tstp.config)["pooling"] == "tstp" and "pooling" not in _id_config(
        lightsv.build_model("resnet18").config
    )
