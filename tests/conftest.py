"""Shared fixtures: the real speech corpus (tests skip cleanly where it is absent) and a clip from it."""

import csv
import os
from pathlib import Path

import pytest

# The corpus sits beside the repository (../shared); the package itself never reads it.
SPEECH_ROOT = Path(
    os.environ.get("LIGHTSV_SPEECH_DIR", Path(__file__).resolve().parents[2] / "shared" / "data" / "speech")
)


@pytest.fixture(scope="module")
def one_thread():
    """torch on one thread for a module (`pytestmark = pytest.mark.usefixtures("one_thread")`): on a
    small, shared test box OpenMP hand-offs cost far more than tiny matmuls gain."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def speech_root() -> Path:
    if not (SPEECH_ROOT / "manifest.csv").is_file():
        pytest.skip(f"speech corpus not found at {SPEECH_ROOT}")
    return SPEECH_ROOT


@pytest.fixture(scope="session")
def speech_clip(speech_root) -> tuple[Path, float]:
    """(path, duration in seconds) of the first 3-6 s LibriSpeech utterance in manifest order."""
    with open(speech_root / "manifest.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["source"].startswith("librispeech") and 3.0 <= float(row["duration_s"]) <= 6.0:
                return speech_root / row["path"], float(row["duration_s"])
    pytest.skip("no 3-6 s LibriSpeech clip in the speech corpus manifest")
