"""Edge deployment: one ONNX file from waveform to embedding (``export``), int8 (``quantize``), sherpa-onnx."""
