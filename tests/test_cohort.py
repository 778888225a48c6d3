"""AS-norm cohort files (lightsv.cohort): saved with their model and thresholds, refused by any other model."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_verifier import tiny_checkpoint

from lightsv import cohort
from lightsv.audio import load as lightsv_load
from lightsv.calibrate import calibration
from lightsv.errors import CheckpointError, ConfigError, ThresholdError
from lightsv.verifier import Verifier, example_clips


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cohort")
    cal = {"eer_threshold": 0.5, "far_thresholds": {"0.01": 0.9}, "score_norm": "none"}
    return tiny_checkpoint(folder / "a.pt", calibration=cal), tiny_checkpoint(folder / "b.pt", seed=1)


def members(dim: int, n: int = 30) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, dim)).astype(np.float32)


def asnorm_calibration(threshold: float) -> dict:
    scores = np.r_[np.linspace(threshold, 5, 20), np.linspace(-3, threshold, 200)]
    labels = np.r_[np.ones(20), np.zeros(200)]
    with pytest.warns(UserWarning):
        return calibration(scores, labels, fars=(0.01,), score_norm="asnorm")


def test_a_cohort_file_brings_its_thresholds_and_leaves_with_them(ckpts, tmp_path):
    clips = example_clips()
    path = tmp_path / "c.npz"
    with Verifier.load(ckpts[0]) as v:
        v.enroll("ann", clips["ls19"][:2])
        raw = v.verify("ann", clips["ls19"][2])
        cal = asnorm_calibration(1.25)
        cohort.save(path, members(v.dim), model_id=v.model_id, top_n=10, calibration=cal)
        v.set_cohort(path)
        assert (v.score_norm, v.cohort_size, v.top_n, v.threshold) == ("asnorm", 30, 10, cal["eer_threshold"])
        normed = v.verify("ann", clips["ls19"][2])
        # the same scores as an in-memory cohort of the same members, but no thresholds: the
        # checkpoint's are for raw scores
        v.set_cohort(cohort.read(path).embeddings, top_n=10)
        assert v.score(v.speaker_embedding("ann"), v.embed(clips["ls19"][2])) == pytest.approx(normed.score, abs=1e-5)
        assert v.threshold is None
        with pytest.raises(ThresholdError):
            v.verify("ann", clips["ls19"][2])
        v.set_cohort(None)
        assert v.verify("ann", clips["ls19"][2]).threshold == raw.threshold == 0.5
    assert normed.threshold == cal["eer_threshold"] and normed.score != pytest.approx(raw.score, abs=1e-3)
    with Verifier.load(ckpts[0], operating_point="far=0.01") as v:
        v.set_cohort(path)
        assert v.threshold == cal["far_thresholds"]["0.01"]
        v.set_cohort(path, top_n=5)  # thresholds measured with another top_n do not apply
        assert v.top_n == 5 and v.threshold is None


def test_a_cohort_from_another_model_or_not_a_cohort_is_refused(ckpts, tmp_path):
    with Verifier.load(ckpts[0]) as a, Verifier.load(ckpts[1]) as b:
        path = cohort.save(tmp_path / "a.npz", members(a.dim), model_id=a.model_id)
        with pytest.raises(CheckpointError, match="made with model .* not this model"):
            b.set_cohort(path)
        assert b.score_norm == "none"
        (tmp_path / "junk.npz").write_bytes(b"PK\x03\x04 not really")
        np.savez(tmp_path / "other.npz", embeddings=members(a.dim))
        (tmp_path / "wrong.npz").write_bytes(path.read_bytes()[:100])
        for bad in ("junk.npz", "other.npz", "wrong.npz"):
            with pytest.raises(CheckpointError, match="not a lightsv cohort file"):
                a.set_cohort(tmp_path / bad)
        with pytest.raises(CheckpointError, match="no such cohort file"):
            a.set_cohort(tmp_path / "missing.npz")
    with pytest.raises(ConfigError, match="AS-norm scores"):
        cohort.save(tmp_path / "x.npz", members(8), model_id="m", calibration={"score_norm": "none"})
    with pytest.raises(ConfigError, match=r"\[N >= 2, D\]"):
        cohort.save(tmp_path / "x.npz", members(8)[:1], model_id="m")


def test_cli_cohort_option(ckpts, tmp_path):
    clips = example_clips()
    db = tmp_path / "s.db"
    with Verifier.load(ckpts[0], db=db) as v:
        v.enroll("ann", clips["ls19"][:2])
        cal = asnorm_calibration(0.75)
        cohort.save(tmp_path / "c.npz", members(v.dim), model_id=v.model_id, top_n=10, calibration=cal)
    run = lambda *a: subprocess.run(  # noqa: E731
        [sys.executable, "-m", "lightsv", "verify", "--db", str(db), "--model", str(ckpts[0]), *a],
        capture_output=True, text=True,
    )  # fmt: skip
    ok = run("--cohort", str(tmp_path / "c.npz"), "--json", "ann", str(clips["ls19"][2]))
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["threshold"] == cal["eer_threshold"]
    bad = run("--cohort", str(clips["ls19"][0]), "ann", str(clips["ls19"][2]))
    assert bad.returncode == 2 and "cohort file (.npz) or 'default'" in bad.stderr and "Traceback" not in bad.stderr
    # a stream with a cohort needs the cohort's duration-aware calibration, and decides with it
    stream = run("--cohort", str(tmp_path / "c.npz"), "--stream", "ann", str(clips["ls19"][2]))
    assert stream.returncode == 2 and "no duration-aware calibration" in stream.stderr, stream.stderr
    assert "Traceback" not in stream.stderr
    cohort.write_duration(tmp_path / "c.npz", toy_duration())
    stream = run("--cohort", str(tmp_path / "c.npz"), "--stream", "--json", "ann", str(clips["ls19"][2]))
    assert stream.returncode == 0, stream.stderr
    assert json.loads(stream.stdout.splitlines()[-1])["decision"] in ("accept", "reject")
    ok = run("--cohort", str(tmp_path / "c.npz"), "--json", "ann", str(clips["ls19"][2]))
    assert json.loads(ok.stdout)["llr"] is not None


def toy_duration(slope: float = 2.0) -> dict:
    """A duration calibration for AS-norm scores: LLR = slope * score, whatever the durations."""
    from lightsv.duration import DurationCalibration

    weights = (0.0, slope, 0.0, 0.0, 0.0, 0.0)
    return DurationCalibration(weights, (0.25, 20.0), (0.25, 20.0), 2.0, {"0.01": 4.0}, {"trials": "toy"}).as_dict()


def test_write_duration_adds_to_a_cohort_file_and_keeps_the_rest(ckpts, tmp_path):
    path = tmp_path / "c.npz"
    rows = members(8)
    cal = asnorm_calibration(1.25)
    cohort.save(path, rows, model_id="m", top_n=10, calibration=cal, source="toy")
    cohort.write_duration(path, toy_duration())
    saved = cohort.read(path)
    assert saved.calibration == {**cal, "duration": toy_duration()}
    assert (saved.model_id, saved.top_n) == ("m", 10)
    plain = cohort.read(cohort.save(tmp_path / "d.npz", rows, model_id="m"))
    np.testing.assert_array_equal(saved.embeddings, plain.embeddings)
    with np.load(path) as data:
        assert json.loads(str(data["meta"]))["source"] == "toy"
    # a cohort without thresholds gets an AS-norm calibration holding only the duration part
    bare = cohort.save(tmp_path / "bare.npz", rows, model_id="m")
    cohort.write_duration(bare, toy_duration())
    assert cohort.read(bare).calibration == {"score_norm": "asnorm", "top_n": None, "duration": toy_duration()}
    (tmp_path / "junk.npz").write_bytes(b"not a cohort")
    with pytest.raises(CheckpointError, match="not a lightsv cohort file"):
        cohort.write_duration(tmp_path / "junk.npz", toy_duration())
    assert (tmp_path / "junk.npz").read_bytes() == b"not a cohort" and not list(tmp_path.glob("*.partial"))


def test_a_cohort_with_a_duration_calibration_decides_verify_and_streams_on_asnorm_llrs(ckpts, tmp_path):
    clips = example_clips()
    with Verifier.load(ckpts[0], vad=False) as v:
        path = cohort.save(tmp_path / "c.npz", members(v.dim), model_id=v.model_id, top_n=10)
        v.enroll("ann", clips["ls19"][:2])
        v.set_cohort(path)
        with pytest.raises(ThresholdError, match="cohort has no duration-aware calibration"):
            v.stream("ann")
        cohort.write_duration(path, toy_duration())
        v.set_cohort(path)
        enrolled = v.speaker_embedding("ann")
        r = v.verify("ann", clips["ls19"][2])
        normed = v.score(enrolled, v.embed(clips["ls19"][2]))
        assert r.score == pytest.approx(normed, abs=1e-5) and r.llr == pytest.approx(2.0 * r.score)
        assert r.accept == (r.llr >= 0) and r.threshold == pytest.approx(0.0)
        s = v.stream("ann", error=0.01)
        v.set_cohort(None)  # an open stream keeps the cohort it was opened with
        wav = lightsv_load(clips["ls19"][2])
        for start in range(0, len(wav), 4000):
            state = s.feed(wav[start : start + 4000])
            if state.decided:
                break
        state = s.close() if not s.state.decided else s.state
        v.set_cohort(path)
        assert state.score == pytest.approx(v.score(enrolled, s.embedding), abs=1e-5)
        assert state.score != pytest.approx(float(enrolled @ s.embedding), abs=1e-3)  # not the raw cosine
        assert state.llr == pytest.approx(2.0 * state.score)
        # another top_n than the calibration's: neither its thresholds nor its LLR apply
        v.set_cohort(path, top_n=5)
        assert v.duration is None
        with pytest.raises(ThresholdError):
            v.verify("ann", clips["ls19"][2])
        # far=0.01: the LLR threshold the file carries for it
    with Verifier.load(ckpts[0], vad=False, operating_point="far=0.01") as v:
        v.enroll("ann", clips["ls19"][:2])
        v.set_cohort(path)
        r = v.verify("ann", clips["ls19"][2])
        assert r.accept == (r.llr >= 4.0) and r.threshold == pytest.approx(2.0)
        v.set_cohort(None)
        assert v.duration is None and v.verify("ann", clips["ls19"][2]).llr is None  # the raw calibration again


def test_shipped_cohort_belongs_to_the_shipped_model():
    if not cohort.DEFAULT_COHORT.is_file():
        pytest.skip("no shipped cohort in this checkout")
    saved = cohort.read("default")
    with Verifier.load(backend="onnx") as v:
        assert saved.model_id == v.model_id
        raw = v.duration
        v.set_cohort("default")
        assert v.score_norm == "asnorm" and v.threshold == saved.calibration["eer_threshold"]
        # fitted on AS-norm scores with this cohort (benchmarks/streaming.py --cohort default --calibrate-into)
        assert v.duration is not None and v.duration != raw and "AS-norm" in v.duration.notes["trials"]
        clips = example_clips()
        v.enroll("ls19", clips["ls19"][:2])
        same, other = v.verify("ls19", clips["ls19"][2]), v.verify("ls19", clips["ls26"][0])
        assert same.accept and not other.accept and same.llr > 0 > other.llr
        for clip, decision in ((clips["ls19"][2], "accept"), (clips["ls26"][0], "reject")):
            s, wav = v.stream("ls19", error=0.05), lightsv_load(clip)
            for start in range(0, len(wav), 1600):
                if s.feed(wav[start : start + 1600]).decided:
                    break
            assert s.state.decision == decision and s.state.reason.endswith("bound")  # decided early


def test_asnorm_statistics_by_hand_and_row_by_row():
    scores = np.array([0.1, 0.5, 0.3, 0.9, -0.2])
    mean, std = cohort.top_stats(scores, 3)  # the three highest: 0.9, 0.5, 0.3
    assert mean == pytest.approx(np.mean([0.9, 0.5, 0.3])) and std == pytest.approx(np.std([0.9, 0.5, 0.3]))
    assert cohort.top_stats(scores, 50)[0] == pytest.approx(scores.mean())  # top_n beyond the cohort: all of it
    assert cohort.asnorm(0.7, (0.2, 0.5), (0.4, 0.1)) == pytest.approx(0.5 * (1.0 + 3.0))
    rows = np.random.default_rng(1).standard_normal((4, 9))
    means, stds = cohort.top_stats(rows, 4)
    for row, m, s in zip(rows, means, stds, strict=True):
        assert (m, s) == pytest.approx(cohort.top_stats(row, 4))
    assert cohort.top_stats(np.zeros(5), 3)[1] > 0  # a flat cohort does not divide by zero


def test_a_cohort_file_with_bad_fields_is_refused_when_read(ckpts, tmp_path):
    rows = members(8)
    cohort.save(tmp_path / "ok.npz", rows, model_id="m", top_n=10, calibration={"score_norm": "asnorm", "top_n": 10})
    with np.load(tmp_path / "ok.npz") as data:
        meta = json.loads(str(data["meta"]))

    def write(name, rows=rows, **changes):
        path = tmp_path / name
        with open(path, "wb") as f:
            np.savez(f, embeddings=rows.astype(np.float16), meta=np.array(json.dumps({**meta, **changes})))
        return path

    for name, changes, match in [
        ("str.npz", {"top_n": "abc"}, "bad top_n"),
        ("neg.npz", {"top_n": -3}, "bad top_n"),
        ("one.npz", {"top_n": 1}, "bad top_n"),
        ("frac.npz", {"top_n": 2.7}, "bad top_n"),
        # thresholds measured with another top_n than the file's would be applied to other scores
        ("mismatch.npz", {"top_n": 20}, "made with top_n 10"),
        ("cal.npz", {"calibration": "thresholds"}, "not a mapping"),
    ]:
        with pytest.raises(CheckpointError, match=match):
            cohort.read(write(name, **changes))
    zero = rows.copy()
    zero[3] = 0
    with pytest.raises(CheckpointError, match="zero embeddings"):
        cohort.read(write("zero.npz", rows=zero))
    with pytest.raises(ConfigError, match="finite and non-zero"):
        cohort.save(tmp_path / "z.npz", zero, model_id="m")
    with pytest.raises(ConfigError, match="top_n"):
        cohort.save(tmp_path / "z.npz", rows, model_id="m", top_n=1)
    same = np.repeat(rows[:1], 5, axis=0)
    with pytest.raises(CheckpointError, match="all the same"):
        cohort.read(write("same.npz", rows=same))
    with pytest.raises(ConfigError, match="all the same"):
        cohort.save(tmp_path / "z.npz", same, model_id="m")
    with Verifier.load(ckpts[0]) as v, pytest.raises(ConfigError, match="all the same"):
        v.set_cohort(np.repeat(members(v.dim)[:1], 5, axis=0))


def test_write_duration_refuses_a_bad_calibration_and_keeps_the_file(tmp_path):
    path = cohort.save(tmp_path / "c.npz", members(8), model_id="m", top_n=10)
    cohort.write_duration(path, toy_duration())
    before = path.read_bytes()
    backwards = {**toy_duration(), "test_range": [16.0, 0.25]}
    for bad in ({"weights": "oops"}, "oops", {**toy_duration(), "weights": [float("nan")] * 6}, backwards):
        with pytest.raises(ConfigError, match="bad duration calibration"):
            cohort.write_duration(path, bad)
    assert path.read_bytes() == before and cohort.read(path).calibration["duration"] == toy_duration()
