"""The shared-trunk countermeasure, shortcut transforms, the Countermeasure loader, spoof-aware
verification and `lightsv spoof-score`."""

import dataclasses
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import lightsv
from lightsv.cli import main
from lightsv.errors import CheckpointError, ConfigError
from lightsv.spoof.countermeasure import Countermeasure
from lightsv.spoof.shortcuts import (
    ShortcutAugment,
    central_crop,
    codec_round_trip,
    normalise_loudness,
    resample_round_trip,
)

pytestmark = pytest.mark.usefixtures("one_thread")


def tone(seconds=1.0, amp=0.1, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(16000 * seconds)) / 16000
    return (amp * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.standard_normal(t.size)).astype(np.float32)


def test_shortcut_transforms_keep_length_and_content():
    wav = tone()
    quiet = normalise_loudness(wav * 0.01, -26.0)
    loud = normalise_loudness(wav * 3.0, -26.0)
    np.testing.assert_allclose(quiet, loud, rtol=1e-4, atol=1e-6)  # the input level is gone
    assert abs(20 * np.log10(np.sqrt(np.mean(loud**2))) + 26.0) < 1.5
    for codec in ("flac", "opus", "mp3"):
        out = codec_round_trip(wav, codec)
        assert out.shape == wav.shape and out.dtype == np.float32
        # lossy codecs delay the signal; the content is still there
        assert np.max(np.abs(np.correlate(out, wav, "valid"))) > 0.5 * np.dot(wav, wav) or codec != "flac"
    np.testing.assert_allclose(codec_round_trip(wav, "flac"), wav, atol=1 / 32768 + 1e-6)
    assert resample_round_trip(wav, 8000).shape == wav.shape
    assert len(central_crop(wav, 0.5)) == 8000 and len(central_crop(wav[:100], 0.5)) == 100


def test_shortcut_augment_is_seeded_and_off_by_default():
    wav = tone()
    aug = ShortcutAugment(1.0, 1.0, 1.0)
    a = aug(wav, np.random.default_rng(3))
    b = aug(wav, np.random.default_rng(3))
    np.testing.assert_array_equal(a, b)
    assert a.shape == wav.shape and not np.allclose(a, wav)
    assert not ShortcutAugment(0, 0, 0).enabled


@pytest.fixture(scope="module")
def side_cm(tmp_path_factory):
    """A side-network CM on the shipped trunk (random side weights) saved with a calibration."""
    torch.manual_seed(0)
    model = lightsv.build_model("spoof_side", channels=8, dilations=[2], attention_channels=8)
    path = tmp_path_factory.mktemp("cm") / "cm.pt"
    # on the trunk's own filterbank, as the trainer makes a side CM learn (lightsv.train.config)
    features = dataclasses.asdict(lightsv.Verifier.load().fbank.config)
    lightsv.save_model(model, path, calibration={"eer_threshold": 0.0}, features=features)
    return path


def test_side_cm_trains_only_its_side_network_and_keeps_the_trunk_in_eval(side_cm):
    model = lightsv.load_model(side_cm).train()
    assert not model.trunk.training and model.side.training
    trainable = {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"side"}
    out = model(torch.randn(2, 120, 80))
    out.sum().backward()
    assert all(p.grad is None for p in model.trunk.parameters())
    # the checkpoint rebuilds its trunk from its own config: no speaker checkpoint needed
    config = model.config
    assert config.trunk_config is not None and config.trunk_id.startswith("sha256:")


def test_ensemble_averages_the_members_logits_on_one_trunk_pass(side_cm, tmp_path):
    from lightsv.checkpoint import read_checkpoint
    from lightsv.spoof.models import ensemble

    torch.manual_seed(1)
    other = lightsv.build_model("spoof_side", channels=8, dilations=[2], attention_channels=8)
    features = read_checkpoint(side_cm)["extra"]["features"]
    lightsv.save_model(other, tmp_path / "b.pt", features=features)
    joined = lightsv.load_model(ensemble([side_cm, tmp_path / "b.pt"], tmp_path / "joint.pt"))
    a, b = lightsv.load_model(side_cm), lightsv.load_model(tmp_path / "b.pt")
    feats = torch.randn(2, 150, 80)
    with torch.no_grad():
        torch.testing.assert_close(joined(feats), (a(feats) + b(feats)) / 2)
        torch.testing.assert_close(joined.joint(feats)[0], a.joint(feats)[0])  # the same speaker embedding
    assert joined.config.members == 2 and joined.config.trunk_id == a.config.trunk_id
    with pytest.raises(CheckpointError, match="at least two"):
        ensemble([side_cm], tmp_path / "x.pt")
    with pytest.raises(CheckpointError, match="joint.pt: not a single side-network"):
        ensemble([side_cm, tmp_path / "joint.pt"], tmp_path / "x.pt")
    lightsv.save_model(other, tmp_path / "c.pt", features={**features, "n_mels": 64})
    with pytest.raises(CheckpointError, match="c.pt: its filterbank differs"):
        ensemble([side_cm, tmp_path / "c.pt"], tmp_path / "x.pt")
    other.config.trunk_id = "sha256:0000000000000000"
    lightsv.save_model(other, tmp_path / "d.pt", features=features)
    with pytest.raises(CheckpointError, match="d.pt: its trunk differs"):
        ensemble([side_cm, tmp_path / "d.pt"], tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def test_countermeasure_needs_a_threshold(side_cm, tmp_path):
    bare = tmp_path / "bare.pt"
    lightsv.save_model(lightsv.load_model(side_cm), bare)
    with pytest.raises(ConfigError, match="no calibrated threshold"):
        Countermeasure.load(bare)
    assert Countermeasure.load(bare, threshold=1.5).threshold == 1.5


def test_a_waveform_countermeasure_scores_samples_and_shares_nothing(speech_clip, tmp_path):
    clip, _ = speech_clip
    torch.manual_seed(0)
    model = lightsv.build_model("rawnet", channels=[8, 8], sinc_filters=6).eval()
    lightsv.save_model(model, tmp_path / "raw.pt", calibration={"eer_threshold": 0.0})
    cm = Countermeasure.load(tmp_path / "raw.pt", backend="torch")
    wav = lightsv.audio.load(clip)[: 3 * 16000]
    with torch.no_grad():
        expected = float(model(torch.from_numpy(wav)[None, :, None])[0, 0])
    assert cm.score(wav) == pytest.approx(expected, abs=1e-5)
    assert cm.features is None  # no filterbank, so a verifier never tries to share a trunk pass with it
    v = lightsv.Verifier.load(vad=False)
    v.enroll("alice", [clip])
    r = v.verify("alice", clip, spoof_check=True, countermeasure=cm)
    assert not r.shared_pass and r.spoof_score == pytest.approx(cm.score(lightsv.audio.load(clip)), abs=1e-4)


def test_spoof_check_shares_one_trunk_pass_and_rejects_spoofs(side_cm, speech_clip):
    clip, _ = speech_clip
    v = lightsv.Verifier.load(vad=False)  # whole clips, so the CM alone sees the same input
    v.enroll("alice", [clip])
    plain = v.verify("alice", clip)
    cm = Countermeasure.load(side_cm)
    r = v.verify("alice", clip, spoof_check=True, countermeasure=cm)
    assert r.shared_pass and r.score == pytest.approx(plain.score, abs=1e-5)
    assert r.spoof_score == pytest.approx(cm.score(clip), abs=1e-4)
    # a CM threshold above the clip's spoof score: rejected although the speaker matches
    strict = Countermeasure.load(side_cm, threshold=r.spoof_score + 1.0)
    s = v.verify("alice", clip, spoof_check=True, countermeasure=strict)
    assert plain.accept and not s.bonafide and not s.accept
    lenient = Countermeasure.load(side_cm, threshold=r.spoof_score - 1.0)
    assert v.verify("alice", clip, spoof_check=True, countermeasure=lenient).accept
    assert set(s.as_dict()) >= {"score", "threshold", "spoof_score", "spoof_threshold", "bonafide", "accept"}


def test_a_side_cm_learns_on_its_trunks_filterbank_and_shares_the_pass_only_then(side_cm, speech_clip, tmp_path):
    from lightsv.train import config as train_config

    trunk = lightsv.Verifier.load().fbank.config
    (tmp_path / "wav").mkdir()
    base = {"data": {"root": str(tmp_path / "wav")}, "model": {"name": "spoof_side", "options": {}}}
    assert train_config.config_from_dict(base).features == trunk  # taken from the trunk
    other = {"high_freq": -400.0 if trunk.high_freq != -400.0 else 0.0}
    with pytest.raises(ConfigError, match="features.high_freq differ from the filterbank of the trunk"):
        train_config.config_from_dict({**base, "features": other})

    # a CM that learnt on another filterbank is scored on its own: two passes, the same scores
    model, extra = lightsv.load_model(side_cm, return_extra=True)
    moved = lightsv.save_model(
        model, tmp_path / "moved.pt", calibration=extra["calibration"], features={**extra["features"], **other}
    )
    clip, _ = speech_clip
    v = lightsv.Verifier.load(vad=False)
    v.enroll("alice", [clip])
    cm = Countermeasure.load(moved)
    r = v.verify("alice", clip, spoof_check=True, countermeasure=cm)
    assert not r.shared_pass and r.spoof_score == pytest.approx(cm.score(clip), abs=1e-4)


@pytest.fixture(scope="module")
def protocol(tmp_path_factory):
    root = tmp_path_factory.mktemp("protocol")
    rows = ["path,speaker,system,label"]
    for i in range(8):
        bona = i % 2 == 0
        sf.write(root / f"c{i}.wav", tone(1.0, 0.1 if bona else 0.3, seed=i), 16000)
        rows.append(f"c{i}.wav,s{i % 2},{'-' if bona else 'A0' + str(i % 4)},{'bonafide' if bona else 'spoof'}")
    (root / "p.csv").write_text("\n".join(rows) + "\n")
    return root


def test_spoof_score_cli_reports_eer_and_counts(side_cm, protocol, tmp_path, capsys):
    plot = tmp_path / "det.png"
    code = main(["spoof-score", str(protocol / "p.csv"), "--root", str(protocol), "--model", str(side_cm),
                 "--asv", "none", "--json", "--plot", str(plot)])  # fmt: skip
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert 0.0 <= out["eer"] <= 100.0 and out["counts"] == {"bonafide": 4, "spoof": 4}
    assert set(out["systems"]) == {"A01", "A03"} and out["systems"]["A01"]["spoof"] == 2
    assert plot.is_file()


def test_spoof_score_cli_bad_input_is_one_line(protocol, tmp_path, capsys):
    assert main(["spoof-score", str(tmp_path / "none.csv"), "--root", str(protocol)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "no such file" in err


def test_the_shipped_countermeasure_shares_the_shipped_trunk_and_its_onnx_export_agrees(speech_clip):
    from lightsv.spoof.countermeasure import DEFAULT_CM, DEFAULT_CM_ONNX

    clip, _ = speech_clip
    torch_cm, onnx_cm = Countermeasure.load(backend="torch"), Countermeasure.load(backend="onnx")
    assert torch_cm.source == str(DEFAULT_CM) and onnx_cm.source == str(DEFAULT_CM_ONNX)
    assert torch_cm.threshold == pytest.approx(onnx_cm.threshold)
    v = lightsv.Verifier.load(vad=False)
    assert torch_cm.trunk_id == onnx_cm.trunk_id == v.model_id  # re-ship both when default.pt changes
    assert onnx_cm.score(clip) == pytest.approx(torch_cm.score(clip), abs=1e-3)
    # both backends run the shared trunk once, with the same decision
    v.enroll("alice", [clip])
    w = lightsv.Verifier.load(backend="onnx", vad=False)
    w.enroll("alice", [clip])
    a, b = v.verify("alice", clip, spoof_check=True), w.verify("alice", clip, spoof_check=True)
    assert a.shared_pass and b.shared_pass
    assert b.score == pytest.approx(w.verify("alice", clip).score, abs=1e-4)
    assert a.spoof_score == pytest.approx(b.spoof_score, abs=1e-3) and a.accept == b.accept


def test_shipping_calibrates_the_threshold_on_the_float16_weights_it_ships(side_cm, speech_clip, tmp_path):
    """The EER threshold is one clip's own score: taken from the float32 model, the float16 file would
    score that clip a little differently, on either side of it."""
    pytest.importorskip("onnxscript")
    from lightsv.spoof.ship import ship

    clip = lightsv.audio.load(speech_clip[0])
    wavs = [clip, tone(seed=1), clip[: len(clip) // 2], tone(2.0, seed=2), clip[len(clip) // 2 :], tone(0.3, 0.5, 3)]
    labels = [1, 0, 1, 0, 1, 0]
    summary = ship(side_cm, wavs, labels, tmp_path / "cm", trials="six clips", fars=())
    shipped = Countermeasure.load(tmp_path / "cm.pt", backend="torch")
    assert shipped.threshold == summary["threshold"]
    assert shipped.threshold in [shipped.score_wav(w) for w in wavs]
    assert Countermeasure.load(tmp_path / "cm.onnx").threshold == pytest.approx(shipped.threshold)
    assert summary["onnx_vs_torch_max_abs_diff"] < 1e-3


def test_a_side_cm_exports_one_graph_that_verifies_and_scores_in_one_pass(side_cm, speech_clip, tmp_path):
    """The onnx backend runs a side CM's trunk once for both answers, as torch does: its export has a
    second output, the trunk's speaker embedding, which equals the speaker model's own export's."""
    pytest.importorskip("onnxscript")
    from lightsv.edge.export import export

    model, extra = lightsv.load_model(side_cm, return_extra=True)
    path = export(model, tmp_path / "cm.onnx", extra=extra)
    cm = Countermeasure.load(path, backend="onnx")
    torch_cm = Countermeasure.load(side_cm, backend="torch")
    clip, _ = speech_clip
    v = lightsv.Verifier.load(backend="onnx", vad=False)  # the shipped default.onnx: the CM's trunk
    v.enroll("alice", [clip])
    plain = v.verify("alice", clip)
    r = v.verify("alice", clip, spoof_check=True, countermeasure=cm)
    assert r.shared_pass and r.score == pytest.approx(plain.score, abs=1e-4)
    assert r.spoof_score == pytest.approx(torch_cm.score(clip), abs=1e-3)
    # another speaker model (here: the int8 export, its own id) cannot share the pass: two runs, same CM score
    from lightsv.runtime import DEFAULT_ONNX_INT8

    w = lightsv.Verifier.load(DEFAULT_ONNX_INT8, vad=False)
    w.enroll("alice", [clip])
    q = w.verify("alice", clip, spoof_check=True, countermeasure=cm)
    assert not q.shared_pass and q.spoof_score == pytest.approx(r.spoof_score, abs=1e-4)


def test_verify_spoof_check_on_the_command_line(speech_clip, tmp_path, capsys):
    clip, _ = speech_clip
    db = str(tmp_path / "s.db")
    assert main(["enroll", "--db", db, "alice", str(clip)]) == 0
    capsys.readouterr()
    assert main(["verify", "--db", db, "alice", str(clip), "--spoof-check", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert {"score", "spoof_score", "bonafide", "accept"} <= set(out)
    assert out["accept"] == (out["bonafide"] and out["score"] >= out["threshold"])
