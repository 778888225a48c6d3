"""AS-norm cohort files (lightsv.cohort): saved with their model and thresholds, refused by any other model."""

import json
import subprocess
import sys

import numpy as np
import pytest
from test_verifier import tiny_checkpoint

from lightsv import cohort
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
    stream = run("--cohort", "default", "--stream", "ann", str(clips["ls19"][2]))
    assert stream.returncode == 2 and "does not apply to --stream" in stream.stderr


def test_shipped_cohort_belongs_to_the_shipped_model():
    if not cohort.DEFAULT_COHORT.is_file():
        pytest.skip("no shipped cohort in this checkout")
    saved = cohort.read("default")
    with Verifier.load(backend="onnx") as v:
        assert saved.model_id == v.model_id
        v.set_cohort("default")
        assert v.score_norm == "asnorm" and v.threshold == saved.calibration["eer_threshold"]
