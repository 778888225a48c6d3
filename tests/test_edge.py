"""ONNX export (waveform in, embedding out), the torch-free runtime and the shipped ONNX files."""

import numpy as np
import pytest
import torch

import lightsv
from lightsv.audio import load
from lightsv.edge.export import ExportConfig, WaveformEmbedder, export, export_checkpoint
from lightsv.runtime import DEFAULT_ONNX
from lightsv.verifier import EXAMPLES

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
pytest.importorskip("onnxscript")

# Small enough that the exports stay quick, wide enough that K=4 subsets have channels to split.
TINY = {
    "ecapa_tdnn": dict(channels=32, mfa_channels=96, se_channels=16, attention_channels=16, embed_dim=24, scale=2),
    "resnet": dict(base_width=8, layers=(1, 1, 1, 1), embed_dim=24),
    "amcrn": dict(channels=32, num_blocks=1, se_channels=16, attention_channels=16, embed_dim=24),
}


def tiny(name: str) -> dict:
    return next(options for prefix, options in TINY.items() if name.startswith(prefix))


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def speech():
    """A real clip repeated up to 20 s, so every test length is speech."""
    return np.resize(load(EXAMPLES / "ls19" / "19-198-0001.flac"), 20 * 16000)


def batch(speech, seconds):
    lengths = np.array([int(s * 16000) for s in seconds])
    wav = np.zeros((len(lengths), lengths.max()), np.float32)
    for row, n in zip(wav, lengths, strict=True):
        row[:n] = speech[:n]
    return wav, lengths


@pytest.mark.parametrize("subsets,share", [(None, False), (2, False), (2, True)], ids=["plain", "K2", "K2shared"])
# One name per backbone class: the other names of a class differ only in the sizes TINY overrides.
@pytest.mark.parametrize("name", ["ecapa_tdnn", "resnet18", "amcrn_small"])
def test_every_backbone_exports_with_parity(tmp_path, speech, name, subsets, share):
    torch.manual_seed(0)
    model = lightsv.build_model(name, **tiny(name))
    if subsets:
        lightsv.transform.apply(model, subsets=subsets, share=share)
    model.eval()
    path = export(model, tmp_path / "m.onnx")
    onnx.checker.check_model(onnx.load(path), full_check=True)
    proto = onnx.load(path)
    assert proto.opset_import[0].version >= 17 and not any(
        t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer
    )
    session = ort.InferenceSession(str(path))
    reference = WaveformEmbedder(model).eval()
    for seconds in ([0.5], [20.0], [0.5, 7.3, 20.0]):
        wav, lengths = batch(speech, seconds)
        got = session.run(None, {"wav": wav, "lengths": lengths})[0]
        with torch.no_grad():
            want = reference(torch.from_numpy(wav), torch.from_numpy(lengths)).numpy()
        assert got.shape == want.shape == (len(seconds), model.embed_dim)
        assert np.abs(got - want).max() <= 1e-4, (seconds, np.abs(got - want).max())
        cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 0.9999, (seconds, cos)


@pytest.fixture(scope="module")
def sherpa_model(tmp_path_factory):
    return export_checkpoint(
        None, tmp_path_factory.mktemp("sherpa") / "m.onnx", config=ExportConfig(format="sherpa-onnx")
    )


def test_sherpa_onnx_runs_our_model_and_decides_like_verifier(sherpa_model):
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    meta = {p.key: p.value for p in onnx.load(sherpa_model).metadata_props}
    assert meta["framework"] == "wespeaker" and meta["normalize_samples"] == "0" and meta["sample_rate"] == "16000"
    extractor = sherpa_onnx.SpeakerEmbeddingExtractor(
        sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(sherpa_model), num_threads=1)
    )
    assert extractor.dim == int(meta["output_dim"])

    def embed(clip):
        stream = extractor.create_stream()
        stream.accept_waveform(16000, load(clip))
        stream.input_finished()
        e = np.array(extractor.compute(stream), dtype=np.float32)
        return e / np.linalg.norm(e)

    v = lightsv.Verifier.load(DEFAULT_ONNX, vad=False)  # sherpa-onnx embeds the whole clip too
    speakers = lightsv.verifier.example_clips()
    ours = {c: v.embed(c) for clips in speakers.values() for c in clips}
    theirs = {c: embed(c) for c in ours}
    cosines = [float(ours[c] @ theirs[c]) for c in ours]
    # Measured 0.97-0.997: sherpa-onnx's filterbank stops at 7.6 kHz and the in-graph map cannot
    # recover what it does not see (README, "sherpa-onnx").
    assert min(cosines) >= 0.95, cosines
    manager = sherpa_onnx.SpeakerEmbeddingManager(extractor.dim)
    for name, clips in speakers.items():
        v.enroll(name, clips[:2])
        mean = np.mean([theirs[c] for c in clips[:2]], axis=0)
        assert manager.add(name, mean / np.linalg.norm(mean))
    for clips in speakers.values():
        for clip in clips[2:]:
            for name in speakers:
                assert manager.verify(name, theirs[clip], v.threshold) == v.verify(name, clip).accept
