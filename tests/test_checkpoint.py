import pickle

import pytest
import torch

import lightsv
from lightsv import transform
from lightsv.checkpoint import read_checkpoint


@pytest.mark.parametrize("name", ["ecapa_tdnn_small", "resnet18", "amcrn_small"])
@pytest.mark.parametrize("wrapped", [False, True])
def test_round_trip_rebuilds_from_one_file(tmp_path, name, wrapped):
    torch.manual_seed(0)
    model = lightsv.build_model(name, embed_dim=96)
    if wrapped:
        transform.apply(model, subsets=4, fusion="concat")
    path = lightsv.save_model(model, tmp_path / "model.pt", threshold=0.5)
    again, extra = lightsv.load_model(path, return_extra=True)
    assert extra == {"threshold": 0.5}
    assert not again.training
    feats = torch.randn(2, 50, 80)
    with torch.no_grad():
        torch.testing.assert_close(again(feats), model.eval()(feats))


def test_missing_and_non_checkpoint_files(tmp_path):
    with pytest.raises(lightsv.CheckpointError, match="no such checkpoint"):
        lightsv.load_model(tmp_path / "absent.pt")
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    with pytest.raises(lightsv.CheckpointError, match="not a lightsv checkpoint"):
        lightsv.load_model(text)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(lightsv.CheckpointError, match="no 'lightsv-checkpoint' marker"):
        lightsv.load_model(tensor)


class Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused(tmp_path, capsys):
    path = tmp_path / "evil.pt"
    torch.save({"format": "lightsv-checkpoint", "x": Payload()}, path, pickle_module=pickle)
    with pytest.raises(lightsv.CheckpointError, match="not a lightsv checkpoint"):
        lightsv.load_model(path)
    assert "must never run" not in capsys.readouterr().out


def _tampered(tmp_path, change):
    path = lightsv.save_model(lightsv.build_model("amcrn_small"), tmp_path / "m.pt")
    checkpoint = read_checkpoint(path)
    change(checkpoint)
    torch.save(checkpoint, path)
    return path


def test_config_and_weights_that_disagree(tmp_path):
    path = _tampered(tmp_path, lambda c: c["config"].update(channels=64))
    with pytest.raises(lightsv.CheckpointError, match="weights do not match its config.*wrong shape"):
        lightsv.load_model(path)
    path = _tampered(tmp_path, lambda c: c["state_dict"].pop("embed.weight"))
    with pytest.raises(lightsv.CheckpointError, match="missing: embed.weight"):
        lightsv.load_model(path)
    path = _tampered(tmp_path, lambda c: c.update(tuners=[{"kind": "transform", "options": {"subsets": 2}}]))
    with pytest.raises(lightsv.CheckpointError, match="unexpected"):
        lightsv.load_model(path)


def test_config_that_does_not_build(tmp_path):
    with pytest.raises(lightsv.CheckpointError, match="config does not build.*unknown model"):
        lightsv.load_model(_tampered(tmp_path, lambda c: c.update(model="wavlm")))
    with pytest.raises(lightsv.CheckpointError, match="config does not build.*bad options"):
        lightsv.load_model(_tampered(tmp_path, lambda c: c["config"].update(colour="red")))
    with pytest.raises(lightsv.CheckpointError, match="unknown tuner kind 'lora9'"):
        lightsv.load_model(_tampered(tmp_path, lambda c: c.update(tuners=[{"kind": "lora9"}])))


def test_failed_save_keeps_the_old_file(tmp_path, monkeypatch):
    path = lightsv.save_model(lightsv.build_model("amcrn_small"), tmp_path / "m.pt", version="old")

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        lightsv.save_model(lightsv.build_model("resnet18"), path, version="new")
    assert lightsv.load_model(path, return_extra=True)[1] == {"version": "old"}
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def test_only_registered_models_are_saved(tmp_path):
    with pytest.raises(lightsv.CheckpointError, match="only models made by lightsv.build_model"):
        lightsv.save_model(torch.nn.Linear(2, 2), tmp_path / "m.pt")
