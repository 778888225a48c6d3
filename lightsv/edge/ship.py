"""Regenerate the package's ONNX files from its checkpoint: ``lightsv export --ship``.

Run it whenever ``lightsv/assets/default.pt`` changes: tests/test_edge.py fails while the shipped
files carry another model id than the checkpoint.
"""

from __future__ import annotations

from pathlib import Path

from lightsv.edge.cli import calibration_wavs
from lightsv.edge.export import ExportConfig, export_checkpoint
from lightsv.runtime import DEFAULT_ONNX, DEFAULT_ONNX_INT8


def ship(calibration: list[Path]) -> list[Path]:
    """Write default.onnx (float) and default.int8.onnx (calibrated on ``calibration`` clips)."""
    fp32 = export_checkpoint(None, DEFAULT_ONNX, config=ExportConfig())
    int8 = export_checkpoint(
        None, DEFAULT_ONNX_INT8, config=ExportConfig(int8=True), calibration_wavs=calibration_wavs(calibration)
    )
    return [fp32, int8]
