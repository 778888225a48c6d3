"""`lightsv demo/enroll/verify/list/delete/score` on the bundled clips, with a tiny random model."""

import itertools
import json

import numpy as np
import pytest
import torch

import lightsv
import lightsv.verifier
from lightsv import metrics
from lightsv.calibrate import write_calibration
from lightsv.cli import main
from lightsv.verifier import EXAMPLES, example_clips

TINY = dict(channels=32, embed_dim=32, se_channels=16, attention_channels=16, mfa_channels=96)


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("model") / "tiny.pt"
    return str(lightsv.save_model(lightsv.build_model("ecapa_tdnn_small", **TINY), path))


@pytest.fixture(scope="module")
def trials(tmp_path_factory):
    """Every pair of the 9 bundled clips: 9 target and 27 non-target trials, paths relative to EXAMPLES."""
    clips = [c.relative_to(EXAMPLES) for paths in example_clips().values() for c in paths]
    path = tmp_path_factory.mktemp("trials") / "trials.txt"
    path.write_text("".join(f"{int(a.parent == b.parent)} {a} {b}\n" for a, b in itertools.combinations(clips, 2)))
    return path


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def one_line_error(code, err, *fragments):
    assert code == 2 and err.count("\n") == 1 and err.startswith("lightsv: error: ")
    assert "Traceback" not in err and all(f in err for f in fragments), err


def test_demo_prints_a_table_of_every_held_out_clip_against_every_speaker(capsys, model):
    code, out, _ = run(capsys, "demo", "--model", model)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["speaker", "clip", "score", "threshold", "accept", "same", "speaker"]
    rows = [line.split() for line in lines[2:-1]]
    assert len(rows) == 9 and sum(r[-1] == "yes" for r in rows) == 3
    assert {r[1] for r in rows} == {"ls19/19-227-0003.flac", "ls26/26-496-0006.flac", "ls27/27-124992-0000.flac"}
    assert "no threshold" in lines[-1] and "/3 clips" in lines[-1]


def test_demo_with_a_calibrated_model_counts_correct_decisions(capsys, model, tmp_path):
    calibrated = tmp_path / "cal.pt"
    write_calibration(model, {"eer_threshold": 0.5, "far_thresholds": {}}, out=calibrated)
    code, out, _ = run(capsys, "demo", "--model", calibrated)
    assert code == 0 and "0.5000" in out and "/9 decisions correct at threshold 0.5000" in out.splitlines()[-1]


def test_demo_without_the_shipped_model_is_one_line(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(lightsv.verifier, "DEFAULT_MODEL", tmp_path / "default.pt")
    one_line_error(*run(capsys, "demo")[::2], "default model", "missing")


def test_enroll_verify_list_delete_round_trip(capsys, model, tmp_path):
    db, clips = tmp_path / "speakers.db", example_clips()["ls26"]
    code, out, _ = run(capsys, "enroll", "--db", db, "--model", model, "--json", "dan", *clips[:2])
    assert code == 0 and json.loads(out) == {"speaker": "dan", "added": 2, "skipped": [], "total": 2}
    code, out, _ = run(capsys, "enroll", "--db", db, "--model", model, "dan", clips[0])
    assert code == 0 and f"0 clip(s) added, 2 in total; skipped 1 already enrolled: {clips[0]}" in out
    one_line_error(
        *run(capsys, "verify", "--db", db, "--model", model, "dan", clips[2])[::2], "no threshold", "--threshold"
    )
    code, out, _ = run(capsys, "verify", "--db", db, "--model", model, "--threshold", "-1", "--json", "dan", clips[2])
    result = json.loads(out)
    assert code == 0 and result["speaker"] == "dan" and -1 <= result["score"] <= 1
    assert result["threshold"] == -1 and result["accept"] is True and result["clip"] == str(clips[2])
    for threshold, exit_code in (("-1", 0), ("1.01", 1)):
        code, out, _ = run(
            capsys, "verify", "--db", db, "--model", model, "--threshold", threshold, "--exit-code", "dan", clips[2]
        )
        assert code == exit_code and ("accept" if exit_code == 0 else "reject") in out
    code, out, _ = run(capsys, "verify", "--db", db, "--model", model, "--threshold", "1.01", "dan", clips[2])
    assert code == 0 and "reject" in out  # without --exit-code a reject is still a successful run
    code, out, _ = run(capsys, "list", "--db", db, "--json")
    assert code == 0 and [(s["name"], s["count"]) for s in json.loads(out)] == [("dan", 2)]
    code, out, _ = run(capsys, "list", "--db", db, "--model", model, "--sources")
    assert code == 0 and "dan" in out and f"dan: {clips[0]}, {clips[1]}" in out and "1 speaker(s), 2 clip(s)" in out
    code, out, _ = run(capsys, "delete", "--db", db, "--json", "dan")
    assert code == 0 and json.loads(out) == {"speaker": "dan", "removed": 2}
    assert json.loads(run(capsys, "list", "--db", db, "--json")[1]) == []
    one_line_error(
        *run(capsys, "verify", "--db", db, "--model", model, "--threshold", "0", "dan", clips[2])[::2],
        "'dan' is not enrolled",
    )
    one_line_error(*run(capsys, "delete", "--db", db, "dan")[::2], "'dan' is not enrolled")


def test_identify_ranks_speakers_and_answers_nobody_enrolled(capsys, model, tmp_path):
    db, speakers = tmp_path / "speakers.db", example_clips()
    assert run(capsys, "enroll", "--db", db, "--model", model, "ls19", speakers["ls19"][0])[0] == 0
    run(capsys, "delete", "--db", db, "ls19")
    code, out, _ = run(capsys, "identify", "--db", db, "--model", model, "--threshold", "0.5", speakers["ls26"][2])
    assert code == 0 and "nobody is enrolled" in out
    for name, clips in speakers.items():
        assert run(capsys, "enroll", "--db", db, "--model", model, name, *clips[:2])[0] == 0
    argv = ["identify", "--db", db, "--model", model, "--threshold", "-1", "--top-k", "2", "--json"]
    code, out, _ = run(capsys, *argv, speakers["ls26"][2])
    result = json.loads(out)
    assert code == 0 and len(result["candidates"]) == 2 and result["accept"] is True
    assert result["speaker"] == result["candidates"][0]["speaker"] in speakers
    assert result["candidates"][0]["score"] >= result["candidates"][1]["score"]
    code, out, _ = run(
        capsys, "identify", "--db", db, "--model", model, "--threshold", "1.01", "--exit-code", speakers["ls26"][2]
    )
    assert code == 1 and "reject" in out and out.splitlines()[0].split() == ["rank", "speaker", "score"]


def test_version_and_a_closed_pipe(capsys):
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.startswith("lightsv ")


def test_missing_database_and_model_mismatch_are_one_line(capsys, model, tmp_path):
    clip = example_clips()["ls19"][0]
    one_line_error(
        *run(capsys, "verify", "--db", tmp_path / "none.db", "--model", model, "x", clip)[::2], "no enrollment database"
    )
    assert not (tmp_path / "none.db").exists()
    torch.manual_seed(1)
    other = lightsv.save_model(lightsv.build_model("ecapa_tdnn_small", **TINY), tmp_path / "other.pt")
    assert run(capsys, "enroll", "--db", tmp_path / "s.db", "--model", model, "x", clip)[0] == 0
    one_line_error(
        *run(capsys, "enroll", "--db", tmp_path / "s.db", "--model", other, "x", clip)[::2], "cannot be mixed"
    )
    # a stream decides at its --error rates: a threshold given with it would be silently ignored
    for option in (["--threshold", "0.5"], ["--operating-point", "far=0.01"]):
        one_line_error(
            *run(capsys, "verify", "--db", tmp_path / "s.db", "--model", model, "--stream", *option, "x", clip)[::2],
            "do not apply to --stream",
        )


def test_score_writes_scores_json_and_det_plot(capsys, model, trials, tmp_path):
    scores, plot = tmp_path / "scores.txt", tmp_path / "det.png"
    code, out, _ = run(
        capsys,
        "score",
        trials,
        "--wav-root",
        EXAMPLES,
        "--model",
        model,
        "--json",
        "--out",
        scores,
        "--plot",
        plot,
        "--batch-size",
        "4",
    )
    assert code == 0
    result = json.loads(out)
    assert {"eer", "min_dcf", "min_dcf_005", "eer_threshold", "n_target", "n_nontarget"} <= set(result)
    assert (result["n_target"], result["n_nontarget"]) == (9, 27) and 0 <= result["eer"] <= 100
    lines = [line.split() for line in scores.read_text().splitlines()]
    assert len(lines) == 36 and all(len(f) == 4 and f[3] in ("target", "nontarget") for f in lines)
    assert sum(f[3] == "target" for f in lines) == 9 and all(-1 <= float(f[2]) <= 1 for f in lines)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and plot.stat().st_size > 5000
    # the summary is the metrics of the very scores the command wrote (6 decimals there)
    written = np.array([float(f[2]) for f in lines])
    labels = np.array([f[3] == "target" for f in lines], dtype=int)
    assert result["eer"] == pytest.approx(metrics.eer(written, labels), abs=1e-3)
    assert result["min_dcf"] == pytest.approx(metrics.min_dcf(written, labels, p_target=0.01), abs=1e-4)
    assert result["min_dcf_005"] == pytest.approx(metrics.min_dcf(written, labels, p_target=0.05), abs=1e-4)
    assert result["eer_threshold"] == pytest.approx(metrics.eer_threshold(written, labels), abs=1e-5)
    code, out, _ = run(capsys, "score", trials, "--wav-root", EXAMPLES, "--model", model)
    assert code == 0 and "EER" in out and "minDCF" in out and "36 trials" in out


def test_score_errors_name_the_line_or_the_missing_files(capsys, model, trials, tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text(trials.read_text().splitlines()[0] + "\n1 only-two-fields.flac\n")
    one_line_error(*run(capsys, "score", bad, "--wav-root", EXAMPLES, "--model", model)[::2], "line 2")
    missing = tmp_path / "missing.txt"
    missing.write_text("1 ls19/19-198-0001.flac ls19/nope.flac\n0 ls19/19-198-0001.flac gone/also.wav\n")
    one_line_error(
        *run(capsys, "score", missing, "--wav-root", EXAMPLES, "--model", model)[::2],
        "2 of 3 files",
        "gone/also.wav",
        "ls19/nope.flac",
    )
    one_line_error(
        *run(capsys, "score", tmp_path / "absent.txt", "--wav-root", EXAMPLES, "--model", model)[::2], "absent.txt"
    )


def test_score_names_every_bad_clip_or_skips_them(capsys, model, trials, tmp_path):
    root = tmp_path / "root"
    for clip in EXAMPLES.glob("*/*.flac"):
        (root / clip.parent.name).mkdir(parents=True, exist_ok=True)
        (root / clip.parent.name / clip.name).write_bytes(clip.read_bytes())
    bad = sorted(root.glob("*/*.flac"))[:2]
    bad[0].write_text("not audio")
    bad[1].write_bytes(b"")
    one_line_error(
        *run(capsys, "score", trials, "--wav-root", root, "--model", model)[::2],
        "2 of 9 clips",
        "--skip-bad",
        bad[0].name,
        bad[1].name,
    )
    code, out, err = run(capsys, "score", trials, "--wav-root", root, "--model", model, "--skip-bad", "--json")
    result = json.loads(out)
    assert code == 0 and result["n_files"] == 7 and len(result["skipped_clips"]) == 2
    assert result["n_target"] + result["n_nontarget"] + result["skipped_trials"] == 36
    assert "skipped 2 bad clip(s)" in err and bad[0].name in err


def test_output_paths_are_checked_before_any_work(capsys, model, trials, tmp_path, monkeypatch):
    monkeypatch.setattr(lightsv.verifier.Verifier, "load", lambda *a, **k: pytest.fail("loaded a model"))
    for option in ("--plot", "--out", "--calibrate"):
        one_line_error(
            *run(capsys, "score", trials, "--wav-root", EXAMPLES, option, tmp_path / "no" / "x.png")[::2],
            "does not exist",
        )
    one_line_error(*run(capsys, "score", trials, "--wav-root", EXAMPLES, "--plot", tmp_path)[::2], "is a directory")


def test_score_calibrate_writes_thresholds_the_verifier_uses(capsys, model, trials, tmp_path):
    out = tmp_path / "calibrated.pt"
    code, printed, err = run(
        capsys, "score", trials, "--wav-root", EXAMPLES, "--model", model, "--json", "--calibrate", out
    )
    assert code == 0
    result = json.loads(printed)
    v = lightsv.Verifier.load(out)
    assert v.threshold == pytest.approx(result["eer_threshold"])
    # 27 non-target trials resolve neither 1 % nor 0.1 %: no made-up thresholds, a warning for each.
    assert v.calibration["trials"] == trials.name and v.calibration["far_thresholds"] == {}
    assert "no threshold at far=0.01" in err and "no threshold at far=0.001" in err
    assert lightsv.Verifier.load(model).threshold is None  # the source model is left as it was
