"""The README's python code blocks run as written, on the bundled clips, so they cannot rot."""

import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from lightsv.verifier import example_clips

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("block", BLOCKS, ids=[b.splitlines()[1][:40] for b in BLOCKS])
def test_readme_block_runs(block, tmp_path, monkeypatch):
    clips = [c for paths in example_clips().values() for c in paths]
    names = ["a1.flac", "a2.flac", "test.flac", "a.wav", "b.wav", "x.wav", "clip.flac"]
    for name, clip in zip(names, clips, strict=False):
        shutil.copy(clip, tmp_path / name)  # a .wav name holding FLAC data: the loader goes by content
    rng = np.random.default_rng(0)
    scores, labels = np.r_[rng.normal(0.6, 0.1, 50), rng.normal(0.1, 0.1, 150)], np.r_[np.ones(50), np.zeros(150)]
    variables = {
        "cohort_clips": clips[-4:],
        "scores": scores,
        "labels": labels,
        "cm_bonafide": rng.normal(2, 1, 100),
        "cm_spoof": rng.normal(-2, 1, 100),
        "asv_target": rng.normal(0.6, 0.1, 100),
        "asv_nontarget": rng.normal(0.1, 0.1, 100),
        "asv_spoof": rng.normal(0.4, 0.1, 100),
    }
    monkeypatch.chdir(tmp_path)
    exec(compile(block, "README.md", "exec"), variables)
