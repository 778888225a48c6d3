"""The shipped model through sherpa-onnx against lightsv's own ONNX path, clip by clip.

    python benchmarks/sherpa_parity.py   # writes benchmarks/results/sherpa_parity.md

Exports the shipped model with `--format sherpa-onnx`, embeds every bundled example clip (and the
dev clips of trials_dev.txt when the corpus is beside the repo) with sherpa-onnx's
SpeakerEmbeddingExtractor and with lightsv's runtime (default.onnx), and reports the cosine
between the two and whether their verification decisions agree on the dev trials at the model's
calibrated threshold.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import sherpa_onnx
from tqdm import tqdm

from lightsv.audio import load
from lightsv.edge.export import ExportConfig, export_checkpoint
from lightsv.trials import read_trials
from lightsv.verifier import Verifier, example_clips

SPEECH = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "speech"
OUT = Path(__file__).parent / "results" / "sherpa_parity.md"


def main() -> int:
    v = Verifier.load(backend="onnx", vad=False)  # sherpa-onnx embeds the whole clip too
    with tempfile.TemporaryDirectory() as tmp:
        path = export_checkpoint(None, Path(tmp) / "m.onnx", config=ExportConfig(format="sherpa-onnx"))
        extractor = sherpa_onnx.SpeakerEmbeddingExtractor(
            sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(path), num_threads=1)
        )

    def sherpa(clip) -> np.ndarray:
        stream = extractor.create_stream()
        stream.accept_waveform(16000, load(clip))
        stream.input_finished()
        e = np.array(extractor.compute(stream), dtype=np.float32)
        return e / np.linalg.norm(e)

    examples = [c for clips in example_clips().values() for c in clips]
    lines = [
        "Written by `python benchmarks/sherpa_parity.py`: cosine between sherpa-onnx's embedding "
        "(`lightsv export --format sherpa-onnx`, its own filterbank) and lightsv's (default.onnx).",
        "",
        "| clips | n | min cosine | median cosine | mean cosine |",
        "|---|---|---|---|---|",
    ]
    sets = {"bundled examples": examples}
    trials = read_trials(SPEECH / "trials_dev.txt") if (SPEECH / "trials_dev.txt").is_file() else []
    if trials:
        sets["trials_dev.txt files"] = sorted({SPEECH / "wav" / p for t in trials for p in (t.enroll, t.test)})
    emb = {}
    for name, clips in sets.items():
        cos = []
        for clip in tqdm(clips, desc=name, file=sys.stderr):
            a, b = v.embed(clip), sherpa(clip)
            emb[clip] = (a, b)
            cos.append(float(a @ b))
        c = np.array(cos)
        lines.append(f"| {name} | {len(c)} | {c.min():.4f} | {np.median(c):.4f} | {c.mean():.4f} |")
    if trials:
        agree = sum(
            (float(emb[SPEECH / "wav" / t.enroll][0] @ emb[SPEECH / "wav" / t.test][0]) >= v.threshold)
            == (float(emb[SPEECH / "wav" / t.enroll][1] @ emb[SPEECH / "wav" / t.test][1]) >= v.threshold)
            for t in trials
        )
        lines += [
            "",
            f"Decisions at the calibrated threshold {v.threshold:.4f} agree on {agree} of {len(trials)} dev trials.",
        ]
    OUT.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
