"""The model shipped inside the package: it loads offline, is small, uses the transformation module,
carries calibrated thresholds, and separates the bundled example speakers."""

import itertools

import numpy as np
import pytest

import lightsv
from lightsv.cli import main
from lightsv.transform import Transformed
from lightsv.verifier import DEFAULT_MODEL, example_clips


@pytest.fixture(scope="module")
def verifier():
    return lightsv.Verifier.load()


def test_shipped_model_is_small_calibrated_and_transformed(verifier):
    assert DEFAULT_MODEL.stat().st_size <= 1_000_000
    assert any(isinstance(m, Transformed) for m in verifier.model.modules())
    assert verifier.threshold is not None and -1 < verifier.threshold < 1
    assert set(verifier.calibration["far_thresholds"]) == {"0.01", "0.001"}


def test_bundled_speakers_are_told_apart(verifier):
    clips = example_clips()
    emb = {name: verifier.embed_many(paths) for name, paths in clips.items()}
    same = [float(a @ b) for e in emb.values() for a, b in itertools.combinations(e, 2)]
    different = [float(a @ b) for x, y in itertools.combinations(emb.values(), 2) for a in x for b in y]
    # a small model far from error-free: ordered on average and for most pairs, not for every one
    assert np.mean(same) > np.mean(different) + 0.2
    assert np.mean([s > d for s in same for d in different]) > 0.9


def test_demo_runs_on_the_shipped_model(capsys):
    assert main(["demo"]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") >= 10 and "decisions correct" in out
    correct, total = map(int, out.strip().splitlines()[-1].split()[0].split("/"))
    assert total == 9 and correct >= 8
