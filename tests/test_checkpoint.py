import pickle

import pytest
import torch

import lightsv
import lightsv.checkpoint
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


def test_half_storage_halves_the_file_and_loads_as_float32(tmp_path):
    torch.manual_seed(0)
    model = transform.apply(lightsv.build_model("amcrn_small"), subsets=4)
    full = lightsv.save_model(model, tmp_path / "full.pt")
    half = lightsv.save_model(model, tmp_path / "half.pt", half=True)
    assert half.stat().st_size < 0.6 * full.stat().st_size
    again = lightsv.load_model(half)
    assert all(p.dtype == torch.float32 for p in again.parameters())
    feats = torch.randn(2, 50, 80)
    with torch.no_grad():
        want = model.eval()(feats)
        torch.testing.assert_close(again(feats), want, rtol=1e-2, atol=1e-2 * want.abs().max().item())


def test_update_extra_keeps_weights_and_other_metadata(tmp_path):
    path = lightsv.save_model(lightsv.build_model("resnet18"), tmp_path / "m.pt", half=True, note="kept")
    before = read_checkpoint(path)["state_dict"]
    lightsv.checkpoint.update_extra(path, threshold=0.3)
    after = read_checkpoint(path)
    assert after["extra"] == {"note": "kept", "threshold": 0.3}
    assert all(torch.equal(before[k], after["state_dict"][k]) for k in before)
    text = tmp_path / "not.pt"
    text.write_text("x")
    with pytest.raises(lightsv.CheckpointError):
        lightsv.checkpoint.update_extra(text, threshold=1.0)
    assert text.read_text() == "x"


def test_average_models_is_the_mean_of_runs_of_one_model(tmp_path):
    from lightsv import train as trainer

    fbank = {"training_config": {"features": {"n_mels": 80}}, "eer": 12.0}
    paths = []
    for seed in range(3):
        torch.manual_seed(seed)
        model = transform.apply(lightsv.build_model("amcrn_small"), subsets=2)
        model.train()(torch.randn(4, 30, 80))  # moves the batch-norm statistics and step counts apart
        paths.append(lightsv.save_model(model, tmp_path / f"run{seed}.pt", **fbank))
    assert trainer.main(["average", str(tmp_path / "soup.pt"), *map(str, paths)]) == 0
    soup, extra = lightsv.load_model(tmp_path / "soup.pt", return_extra=True)
    states = [read_checkpoint(p)["state_dict"] for p in paths]
    for name, value in soup.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sum(s[name] for s in states) / 3)
        else:
            assert torch.equal(value, states[0][name])
    assert extra == {"training_config": fbank["training_config"], "averaged_from": [str(p) for p in paths]}

    # another architecture, another module, another filterbank or too few runs: a clear error, no file
    other = {
        "wider": lightsv.save_model(
            transform.apply(lightsv.build_model("amcrn_small", embed_dim=64), subsets=2), tmp_path / "w.pt", **fbank
        ),
        "tuners": lightsv.save_model(lightsv.build_model("amcrn_small"), tmp_path / "t.pt", **fbank),
        "filterbank": lightsv.checkpoint.update_extra(
            paths[1], tmp_path / "f.pt", training_config={"features": {"n_mels": 64}}
        ),
    }
    for what, path in other.items():
        with pytest.raises(lightsv.CheckpointError, match=str(path.name)):
            lightsv.checkpoint.average_models([paths[0], path], tmp_path / f"bad_{what}.pt")
        assert not (tmp_path / f"bad_{what}.pt").exists()
    with pytest.raises(lightsv.CheckpointError, match="at least two"):
        lightsv.checkpoint.average_models(paths[:1], tmp_path / "one.pt")
    assert trainer.main(["average", str(tmp_path / "x.pt"), str(paths[0]), str(tmp_path / "absent.pt")]) == 2
