"""`lightsv export`: arguments and work (kept here so `lightsv --help` imports neither torch nor onnx).

lightsv export --out model.onnx                       # the shipped model, waveform in
lightsv export --model m.pt --out m.int8.onnx --int8 --calibration DIR
lightsv export --format sherpa-onnx --out m.sherpa.onnx
lightsv export --ship                                 # regenerate lightsv/assets/default{,.int8}.onnx
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from lightsv.errors import ConfigError

AUDIO_SUFFIXES = (".flac", ".wav", ".ogg", ".opus", ".mp3")
#: Dev clips of the development corpus beside the repository: the default calibration set of --ship.
DEV_TRIALS = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "speech" / "trials_dev.txt"
CALIBRATION_CLIPS = 200


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", metavar="CKPT", help="checkpoint (default: the shipped model)")
    parser.add_argument("--out", metavar="ONNX", help="the ONNX file to write")
    parser.add_argument("--format", choices=["lightsv", "sherpa-onnx"], default="lightsv", help="(default: lightsv)")
    parser.add_argument("--int8", action="store_true", help="static int8 quantisation (QDQ, per-channel)")
    parser.add_argument(
        "--frontend",
        choices=["matrix", "fft"],
        default="matrix",
        help="in-graph filterbank: folded DFT matrix (fastest in onnxruntime) or ONNX DFT (smallest file)",
    )
    parser.add_argument(
        "--calibration",
        metavar="PATH",
        help="int8 calibration clips: a folder of audio, or a trial list whose paths are under --wav-root "
        "(default: the dev trials of the corpus beside the repo, else the bundled examples)",
    )
    parser.add_argument("--wav-root", metavar="DIR", help="folder the trial list's paths are relative to")
    parser.add_argument(
        "--calibration-clips", type=int, default=CALIBRATION_CLIPS, metavar="N", help="(default: %(default)s)"
    )
    parser.add_argument(
        "--ship",
        action="store_true",
        help="write the package's default.onnx and default.int8.onnx from its default.pt",
    )


def calibration_paths(path: str | Path | None, wav_root: str | Path | None, count: int) -> list[Path]:
    """``count`` clips spread evenly over a folder, a trial list, or (None) the dev trials / bundled examples."""
    from lightsv.verifier import EXAMPLES

    if count < 1:
        raise ConfigError(f"--calibration-clips must be positive, got {count}")
    if path is None:
        path = DEV_TRIALS if DEV_TRIALS.is_file() else EXAMPLES
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES)
    elif path.is_file():
        from lightsv.trials import read_trials

        root = Path(wav_root) if wav_root else path.parent / "wav"
        files = sorted({root / p for t in read_trials(path) for p in (t.enroll, t.test)})
    else:
        raise ConfigError(f"{path}: no such calibration folder or trial list")
    if not files:
        raise ConfigError(f"{path}: no audio files for calibration")
    pick = np.unique(np.linspace(0, len(files) - 1, min(count, len(files))).round().astype(int))
    return [files[i] for i in pick]


def calibration_wavs(paths: list[Path]) -> list[np.ndarray]:
    from lightsv.audio import load

    return [load(p) for p in paths]


def run(args: argparse.Namespace) -> int:
    from lightsv.edge.export import ExportConfig, export_checkpoint

    if args.ship:
        from lightsv.edge.ship import ship

        for path in ship(calibration_paths(args.calibration, args.wav_root, args.calibration_clips)):
            print(path)
        return 0
    if not args.out:
        raise ConfigError("lightsv export needs --out FILE (or --ship)")
    config = ExportConfig(format=args.format, int8=args.int8, frontend=args.frontend)
    wavs = None
    if args.int8:
        paths = calibration_paths(args.calibration, args.wav_root, args.calibration_clips)
        print(f"calibrating int8 ranges on {len(paths)} clips", file=sys.stderr)
        wavs = calibration_wavs(paths)
    print(export_checkpoint(args.model, args.out, config=config, calibration_wavs=wavs))
    return 0
