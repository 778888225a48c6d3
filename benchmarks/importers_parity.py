"""Imported models against the source toolkits' own pipelines, at the released architectures' sizes.

    python benchmarks/importers_parity.py   # writes benchmarks/results/importers_parity.md

No pretrained weights can be downloaded here, so each release is built with random weights (and
random batch-norm statistics) in the toolkit's own layout by the toolkit's own code, exactly as the
parity tests do (tests/importers_fixtures.py): SpeechBrain's spkrec-ecapa-voxceleb architecture
(ECAPA-TDNN, 1024 channels, 80 mels) and WeSpeaker's voxceleb ResNet34 (80 mels, 256-dim, model from
pyannote.audio's port of WeSpeaker's code with WeSpeaker's TSTP) and 3D-Speaker's ECAPA-TDNN release
(``ecapa_tdnn.bin``, speakerlab's class and FBank). Every clip is embedded by the
toolkit's pipeline one at a time, and by lightsv from the waveform in padded batches: the imported
checkpoint in torch (Verifier), and its ONNX export with each in-graph front-end (matrix, fft).
Reported: the largest absolute difference between unit-length embeddings and the smallest cosine.
Needs `python -m lightsv.extras speechbrain wespeaker 3dspeaker`.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from importers_fixtures import (  # noqa: E402
    speechbrain_release,
    threedspeaker_embed,
    threedspeaker_release,
    wespeaker_embed,
    wespeaker_release,
)

from lightsv import Verifier  # noqa: E402
from lightsv.audio import load  # noqa: E402
from lightsv.edge.export import ExportConfig, export_checkpoint  # noqa: E402
from lightsv.importers import import_model  # noqa: E402
from lightsv.trials import read_trials  # noqa: E402
from lightsv.verifier import example_clips  # noqa: E402

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"
OUT = Path(__file__).parent / "results" / "importers_parity.md"
DEV_CLIPS = 30


def clips() -> list[np.ndarray]:
    """The bundled examples, plus DEV_CLIPS files of trials_dev.txt of 1 s or more, spread over the list."""
    wavs = [load(c) for cs in example_clips().values() for c in cs]
    if (SPEECH / "trials_dev.txt").is_file():
        files = sorted({p for t in read_trials(SPEECH / "trials_dev.txt") for p in (t.enroll, t.test)})
        dev = [
            w
            for w in (load(SPEECH / "wav" / f) for f in files[:: max(1, len(files) // (2 * DEV_CLIPS))])
            if len(w) >= 16000
        ]
        wavs += dev[:DEV_CLIPS]
    return wavs


def compare(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, float]:
    a = ours / np.linalg.norm(ours, axis=1, keepdims=True)
    b = theirs / np.linalg.norm(theirs, axis=1, keepdims=True)
    return float(np.abs(a - b).max()), float((a * b).sum(1).min())


def main() -> int:
    torch.set_num_threads(1)
    wavs = clips()
    seconds = [len(w) / 16000 for w in wavs]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_dir = Path(tmp)
        sb_dir, encoder = speechbrain_release(
            tmp_dir / "sb", n_mels=80, channels=(1024, 1024, 1024, 1024, 3072), attention=128, se=128, lin=192
        )
        we_dir, net = wespeaker_release(tmp_dir / "we", model="ResNet34", n_mels=80, embed=256)
        td_file, td_net = threedspeaker_release(tmp_dir / "3d")
        systems = {
            "SpeechBrain ECAPA-TDNN (spkrec-ecapa-voxceleb size)": (
                "speechbrain",
                sb_dir,
                lambda w: encoder.encode_batch(torch.from_numpy(w)[None])[0, 0].numpy(),
            ),
            "WeSpeaker ResNet34 (voxceleb_resnet34 size)": (
                "wespeaker",
                we_dir,
                lambda w: wespeaker_embed(net, torch.from_numpy(w), 80)[0].numpy(),
            ),
            "3D-Speaker ECAPA-TDNN (speech_ecapa-tdnn_sv_en_voxceleb_16k size)": (
                "3dspeaker",
                td_file,
                lambda w: threedspeaker_embed(td_net, torch.from_numpy(w))[0].numpy(),
            ),
        }
        for name, (toolkit, directory, reference) in systems.items():
            ckpt = tmp_dir / f"{toolkit}.pt"
            model, _ = import_model(toolkit, directory, out=ckpt)
            params = sum(p.numel() for p in model.parameters())
            with torch.no_grad():
                theirs = np.stack([reference(w) for w in wavs])
            torch_emb = Verifier.load(ckpt, vad=False).embed_many(wavs, sample_rate=16000)
            rows.append((name, params, "lightsv torch (Verifier, padded batches)", *compare(torch_emb, theirs)))
            for frontend in ("matrix", "fft"):
                start = time.time()
                onnx = export_checkpoint(
                    ckpt, tmp_dir / f"{toolkit}.{frontend}.onnx", config=ExportConfig(frontend=frontend)
                )
                print(f"{name}: exported ({frontend}) in {time.time() - start:.0f} s", file=sys.stderr)
                emb = Verifier.load(onnx, vad=False).embed_many(wavs, sample_rate=16000)
                rows.append((name, params, f"lightsv ONNX, {frontend} front-end (onnxruntime)", *compare(emb, theirs)))
    lines = [
        "Written by `python benchmarks/importers_parity.py` "
        f"(load average {os.getloadavg()[0]:.1f} at the end; results do not depend on it).",
        "",
        f"{len(wavs)} clips ({min(seconds):.1f}-{max(seconds):.1f} s: the bundled examples and dev clips of "
        "trials_dev.txt), random weights in each toolkit's release layout, each clip embedded by the toolkit's "
        "own pipeline one at a time and by lightsv from the waveform. Differences are between unit-length embeddings.",
        "",
        "| source | parameters | lightsv path | max abs difference | min cosine |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {n} | {p:,} | {path} | {d:.2e} | {c:.7f} |" for n, p, path, d, c in rows]
    OUT.write_text("\n".join(lines) + "\n")
    print(OUT.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
