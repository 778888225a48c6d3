"""Countermeasures: protocols, the binary objective through the one trainer, EER / t-DCF evaluation."""

import json

import numpy as np
import pytest
import soundfile as sf
import torch

pytest.importorskip("transformers")
pytest.importorskip("peft")

import lightsv  # noqa: E402
import lightsv.metrics  # noqa: E402
from lightsv.errors import ConfigError  # noqa: E402
from lightsv.spoof import BONAFIDE, SPOOF, evaluate_cm, read_protocol  # noqa: E402
from lightsv.train import export, main, train  # noqa: E402
from lightsv.train.config import config_from_dict  # noqa: E402


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """16 one-second clips: bona fide are clean tones, spoofs (two systems) tones with loud noise."""
    root = tmp_path_factory.mktemp("spoof")
    rng = np.random.default_rng(0)
    rows, lines = ["path,speaker,system,label,split"], []
    for i in range(16):
        bona = i % 2 == 0
        t = np.arange(16000) / 16000
        wav = 0.1 * np.sin(2 * np.pi * (200 + 40 * i) * t) + (0.01 if bona else 0.08) * rng.standard_normal(16000)
        sf.write(root / f"c{i}.wav", wav.astype(np.float32), 16000)
        system = "-" if bona else ("A01" if i % 4 == 1 else "A02")
        split = "dev" if i >= 10 else "train"
        rows.append(f"c{i}.wav,s{i % 4},{system},{'bonafide' if bona else 'spoof'},{split}")
        lines.append(f"s{i % 4} c{i} - {system} {'bonafide' if bona else 'spoof'}")
    (root / "protocol.csv").write_text("\n".join(rows) + "\n")
    (root / "protocol.txt").write_text("\n".join(lines) + "\n")
    return root


def test_both_protocol_forms_read_the_same(corpus):
    csv_entries = read_protocol(corpus / "protocol.csv", corpus)
    txt_entries = read_protocol(corpus / "protocol.txt", corpus)  # FILE without extension, as ASVspoof
    assert [(e.path, e.speaker, e.system, e.label) for e in csv_entries] == [
        (e.path, e.speaker, e.system, e.label) for e in txt_entries
    ]
    assert {e.system for e in csv_entries} == {"bonafide", "A01", "A02"}
    assert len(read_protocol(corpus / "protocol.csv", corpus, "dev")) == 6


def test_balance_systems_draws_each_spoofing_system_equally():
    from collections import Counter

    from lightsv.spoof.data import Entry, balance_systems

    protocol = [Entry(f"b{i}", "s", "bonafide", BONAFIDE) for i in range(3)]
    protocol += [Entry(f"big{i}", "s", "A01", SPOOF) for i in range(7)]
    protocol += [Entry(f"small{i}", "s", "A02", SPOOF) for i in range(3)]
    out = balance_systems(protocol)
    assert Counter(e.system for e in out) == {"bonafide": 3, "A01": 7, "A02": 7}
    assert Counter(e.path for e in out if e.system == "A02") == {"small0": 3, "small1": 2, "small2": 2}
    assert [e for e in out if e.system == "A01"] == protocol[3:10]
    bona_only = [e for e in protocol if e.label == BONAFIDE]
    assert balance_systems(bona_only) == bona_only


def test_bad_protocols_are_clear_errors(corpus, tmp_path):
    bad = tmp_path / "p.txt"
    bad.write_text("s0 c0 - A01\n")
    with pytest.raises(ConfigError, match="line 1: expected 'SPEAKER FILE - SYSTEM KEY'"):
        read_protocol(bad, corpus)
    bad.write_text("s0 c0 - A01 fake\n")
    with pytest.raises(ConfigError, match="neither bonafide nor spoof"):
        read_protocol(bad, corpus)
    bad.write_text("s0 missing - A01 spoof\ns0 c0 - - bonafide\n")
    with pytest.raises(ConfigError, match="no audio file 'missing'"):
        read_protocol(bad, corpus)
    with pytest.raises(ConfigError, match="no split column"):
        read_protocol(corpus / "protocol.txt", corpus, "dev")
    with pytest.raises(ConfigError, match="no such file"):
        read_protocol(tmp_path / "absent.csv", corpus)


def config(corpus, finetune: str, tuners: list, **extra):
    return config_from_dict(
        {
            "data": {"root": str(corpus)},
            "spoof": {"protocol": str(corpus / "protocol.csv"), "asv": None},
            "model": {"name": "ssl", "options": {"size": "wav2vec2_tiny", "head_dim": 8, "finetune": finetune}},
            "tuners": tuners,
            "epochs": 2,
            "steps_per_epoch": 3,
            "batch_size": 4,
            "per_speaker": 2,
            "crop_seconds": 0.5,
            "short_clips": "repeat",
            "eval": {"bootstrap": 10},
            "optim": {"lr": 0.003, "warmup_epochs": 0},
            "log_every": 1,
            **extra,
        }
    )


LORA = [{"kind": "lora", "options": {"r": 2, "targets": ["q", "v"]}}]


@pytest.mark.parametrize("finetune, tuners", [("tuners", LORA), ("full", [])])
def test_lora_and_full_countermeasures_train_through_the_trainer(corpus, tmp_path, finetune, tuners):
    trained = train(config(corpus, finetune, tuners), tmp_path, resume=False, progress=False)
    dev = trained.results["dev"]
    assert set(dev["systems"]) == {"A01", "A02"} and dev["overall"]["targets"] == 3
    assert 0.0 <= dev["overall"]["eer"] <= 100.0
    log = (tmp_path / "train.log").read_text()
    assert "loss" in log and (tmp_path / "det.png").is_file()
    model = lightsv.load_model(tmp_path / "model.pt")
    lora = {"kind": "lora", "options": {"r": 2, "alpha": 8.0, "dropout": 0.0, "targets": ["q", "v"]}}
    assert getattr(model, "tuners", []) == ([lora] if tuners else [])
    # what trained moved, what was frozen did not (torch.manual_seed(seed) builds the same init)
    torch.manual_seed(42)
    init = lightsv.build_model("ssl", size="wav2vec2_tiny", head_dim=8, finetune=finetune).state_dict()
    state = model.state_dict()
    encoder_weight = "ssl.encoder.layers.0.feed_forward.output_dense.weight"
    assert not torch.equal(state["head.out.weight"], init["head.out.weight"])
    assert torch.equal(state[encoder_weight], init[encoder_weight]) == (finetune == "tuners")


def test_export_merges_lora(corpus, tmp_path):
    train(config(corpus, "tuners", LORA, epochs=1), tmp_path, resume=False, progress=False)
    dest = export(tmp_path, tmp_path / "final.pt")
    model, merged = lightsv.load_model(tmp_path / "model.pt"), lightsv.load_model(dest)
    assert getattr(merged, "tuners", []) == [] and not any("lora_" in n for n in merged.state_dict())
    x = torch.randn(1, 8000, 1)
    with torch.no_grad():
        torch.testing.assert_close(merged(x), model(x), rtol=1e-5, atol=1e-5)


def test_a_countermeasure_learns_from_a_teacher_countermeasure(corpus, tmp_path):
    """spoof.teacher: the loss mixes the labels' cross-entropy with one towards the teacher's
    probabilities (logged as distill); at teacher_weight 1 it is the teacher's term alone."""
    from lightsv.spoof.countermeasure import DEFAULT_CM

    teacher = train(config(corpus, "full", [], epochs=1), tmp_path / "teacher", resume=False, progress=False)
    assert all(h["distill"] == 0.0 for h in teacher.results["history"])

    def taught(path, weight=1.0, out="student"):
        spoof = {"protocol": str(corpus / "protocol.csv"), "asv": None, "teacher": str(path), "teacher_weight": weight}
        return train(config(corpus, "full", [], spoof=spoof), tmp_path / out, resume=False, progress=False)

    history = taught(tmp_path / "teacher" / "model.pt").results["history"]
    assert all(h["distill"] > 0.0 and h["loss"] == pytest.approx(h["distill"], rel=1e-5) for h in history)
    mixed = taught(tmp_path / "teacher" / "model.pt", 0.5, "mixed").results["history"]
    assert all(h["loss"] == pytest.approx((h["aam"] + h["distill"]) / 2, rel=1e-5) for h in mixed)
    with pytest.raises(ConfigError, match="spoof.teacher .*no such file"):
        taught(tmp_path / "absent.pt", out="absent")
    with pytest.raises(ConfigError, match="not a countermeasure"):
        taught(lightsv.verifier.DEFAULT_MODEL, out="speaker")
    with pytest.raises(ConfigError, match="reads other input"):
        taught(DEFAULT_CM, out="fbank")  # a filterbank CM cannot teach a waveform model
    with pytest.raises(ConfigError, match="teacher_weight"):
        taught(tmp_path / "teacher" / "model.pt", 1.5, out="weight")


def test_cm_evaluation_reports_eer_and_t_dcf_per_system(corpus):
    entries = read_protocol(corpus / "protocol.csv", corpus, "dev")

    class Oracle(torch.nn.Module):
        """Scores a clip by its noise level: the synthetic corpus's bona fide clips are the clean ones."""

        input_kind = "wav"

        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))

        def forward(self, feats, lengths=None):
            x = feats[..., 0]
            return -(x[:, 1:] - x[:, :-1]).abs().mean(dim=1, keepdim=True)

    rng = np.random.default_rng(1)
    asv = {
        "target": list(rng.normal(2, 1, 50)),
        "nontarget": list(rng.normal(-2, 1, 200)),
        "spoof": list(rng.normal(1, 1, 60)),
        "spoof_systems": ["A01"] * 30 + ["A02"] * 30,
    }
    result = evaluate_cm(Oracle(), entries, asv=asv, bootstrap=10)
    assert result["overall"]["eer"] == 0.0 and result["overall"]["t_dcf_2019"] == pytest.approx(0.0)
    assert set(result["systems"]) == {"A01", "A02"}
    # 2021's t-DCF keeps the ASV system's own errors: a perfect CM scores what the ASV alone costs
    a01 = [s for s, n in zip(asv["spoof"], asv["spoof_systems"], strict=True) if n == "A01"]
    perfect = lightsv.metrics.t_dcf([1.0], [0.0], asv["target"], asv["nontarget"], a01, version="2021")
    assert 0 < perfect < 1 and result["systems"]["A01"]["t_dcf_2021"] == pytest.approx(perfect)
    reverse = evaluate_cm(
        type("Reversed", (Oracle,), {"forward": lambda self, f, lengths=None: -Oracle.forward(self, f)})(),
        entries,
        asv=asv,
        bootstrap=10,
    )
    assert reverse["overall"]["eer"] == 100.0 and reverse["overall"]["t_dcf_2019"] > 0.9
    assert BONAFIDE == 1 and SPOOF == 0


def test_cli_evaluate_writes_the_per_system_table(corpus, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        json.dumps(
            {
                "data": {"root": str(corpus)},
                "spoof": {"protocol": str(corpus / "protocol.csv"), "asv": None},
                "model": {"name": "ssl", "options": {"size": "wav2vec2_tiny", "head_dim": 8}},
                "eval": {"bootstrap": 10},
            }
        )
    )
    lightsv.save_model(lightsv.build_model("ssl", size="wav2vec2_tiny", head_dim=8), tmp_path / "m.pt")
    assert main(["evaluate", str(cfg), str(tmp_path / "m.pt"), "--out", str(tmp_path / "eval")]) == 0
    table = (tmp_path / "eval" / "results.md").read_text()
    assert "| A01 |" in table and "| A02 |" in table and (tmp_path / "eval" / "det.png").is_file()


def test_config_errors_for_tuners(corpus):
    with pytest.raises(ConfigError, match=r"tuners\[0\]: expected \{kind: one of"):
        config(corpus, "tuners", [{"kind": "dora", "options": {}}])
    with pytest.raises(ConfigError, match="spoof.protocol"):
        config_from_dict({"data": {"root": str(corpus)}, "spoof": {"protocol": str(corpus / "absent.csv")}})
    with pytest.raises(ConfigError, match="no module of SSLModel matches"):
        from lightsv.train.config import build

        build(config(corpus, "tuners", [{"kind": "lora", "options": {"targets": ["query"]}}]))


def test_asv_scores_come_from_the_protocols_own_speakers(corpus):
    import dataclasses

    from lightsv.spoof import asv_scores

    entries = read_protocol(corpus / "protocol.csv", corpus)
    # the synthetic spoofs belong to speakers without bona fide audio; give half of them one that has
    entries = [dataclasses.replace(e, speaker="s0") if e.label == SPOOF and e.system == "A01" else e for e in entries]
    asv = asv_scores(entries)  # the shipped speaker model
    assert len(asv["target"]) == 12 and len(asv["nontarget"]) == 16  # 2 speakers x C(4, 2); 4 x 4 across
    assert len(asv["spoof"]) == 4 * 4 and set(asv["spoof_systems"]) == {"A01"}  # 4 A01 clips x 4 bona fide of s0
    result = evaluate_cm(lightsv.build_model("ssl", size="wav2vec2_tiny", head_dim=8), entries, asv=asv, bootstrap=0)
    assert result["systems"]["A02"]["t_dcf_2019"] is None and "t_dcf_2019_why" in result["systems"]["A02"]
    assert result["asv"]["target_trials"] == 12
