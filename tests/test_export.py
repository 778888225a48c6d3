import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import lightsv

ort = pytest.importorskip("onnxruntime")
spec = importlib.util.spec_from_file_location("export_onnx", Path(__file__).parents[1] / "export" / "export_onnx.py")
export_onnx = importlib.util.module_from_spec(spec)
spec.loader.exec_module(export_onnx)


@pytest.mark.parametrize("name,subsets", [("ecapa_tdnn_small", None), ("resnet18", 4), ("amcrn_small", 4)])
def test_onnx_graph_with_fbank_matches_torch(tmp_path, name, subsets):
    torch.manual_seed(0)
    model = lightsv.build_model(name)
    if subsets:
        lightsv.transform.apply(model, subsets=subsets)
    path = export_onnx.export(model.eval(), str(tmp_path / "m.onnx"))
    session = ort.InferenceSession(path)
    # a batch size and lengths other than the ones used while exporting
    wav = (np.random.default_rng(0).standard_normal((3, 27000)) * 0.1).astype(np.float32)
    lengths = np.array([27000, 20000, 9000])
    wav[1, 20000:] = 0
    wav[2, 9000:] = 0
    got = session.run(None, {"wav": wav, "lengths": lengths})[0]
    with torch.no_grad():
        want = export_onnx.EmbeddingGraph(model).eval()(torch.from_numpy(wav), torch.from_numpy(lengths)).numpy()
    assert got.shape == (3, model.embed_dim)
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-3 * np.abs(want).max())
