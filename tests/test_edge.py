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
    # The shipped model reads sherpa-onnx's filterbank (mels up to 7.6 kHz); frames centred on the hop
    # and the edge frames are what still differs (README, "sherpa-onnx").
    assert min(cosines) >= 0.99, cosines
    manager = sherpa_onnx.SpeakerEmbeddingManager(extractor.dim)
    for name, clips in speakers.items():
        v.enroll(name, clips[:2])
        mean = np.mean([theirs[c] for c in clips[:2]], axis=0)
        assert manager.add(name, mean / np.linalg.norm(mean))
    for clips in speakers.values():
        for clip in clips[2:]:
            for name in speakers:
                assert manager.verify(name, theirs[clip], v.threshold) == v.verify(name, clip).accept


def test_a_model_trained_on_sherpas_filterbank_needs_no_feature_map(tmp_path):
    """A model whose mel bank stops where sherpa-onnx's does (7.6 kHz) exports without the in-graph map,
    and sherpa-onnx's embeddings then match lightsv's up to framing (centred frames, edge frames)."""
    sherpa_onnx = pytest.importorskip("sherpa_onnx")
    from lightsv.edge.sherpa import SHERPA_HIGH_FREQ

    torch.manual_seed(0)
    model = lightsv.build_model("ecapa_tdnn", **tiny("ecapa_tdnn")).eval()
    checkpoint = lightsv.save_model(model, tmp_path / "m.pt", features={"high_freq": SHERPA_HIGH_FREQ})
    ours = export_checkpoint(checkpoint, tmp_path / "ours.onnx")
    path = export_checkpoint(checkpoint, tmp_path / "s.onnx", config=ExportConfig(format="sherpa-onnx"))
    assert "Exp" not in {n.op_type for n in onnx.load(path).graph.node}
    full_band = lightsv.save_model(model, tmp_path / "full.pt")  # lightsv's default bank: up to 8 kHz
    mapped = export_checkpoint(full_band, tmp_path / "mapped.onnx", config=ExportConfig(format="sherpa-onnx"))
    assert "Exp" in {n.op_type for n in onnx.load(mapped).graph.node}

    extractor = sherpa_onnx.SpeakerEmbeddingExtractor(
        sherpa_onnx.SpeakerEmbeddingExtractorConfig(model=str(path), num_threads=1)
    )
    v = lightsv.Verifier.load(ours, vad=False)
    for clip in sorted(EXAMPLES.rglob("*.flac"))[:4]:
        stream = extractor.create_stream()
        stream.accept_waveform(16000, load(clip))
        stream.input_finished()
        theirs = np.array(extractor.compute(stream), dtype=np.float32)
        assert float(v.embed(clip) @ theirs) / np.linalg.norm(theirs) >= 0.99, clip


def test_split_blocks_export_fused_into_grouped_convolutions(tmp_path, speech, monkeypatch):
    """The K narrow copies of every split block run as one wide block in the export (lightsv.edge.fuse):
    convolutions with K times the groups, a fraction of the nodes, the loop's embeddings."""
    from lightsv.edge.fuse import FusedTransformed, fuse

    torch.manual_seed(0)
    model = lightsv.build_model("ecapa_tdnn", **tiny("ecapa_tdnn"))
    lightsv.transform.apply(model, subsets=4)
    model.eval()
    graph = WaveformEmbedder(model).eval()
    wav, lengths = torch.randn(2, 32000) * 0.1, torch.tensor([32000, 24000])
    fused = fuse(graph, wav, lengths)
    assert sum(isinstance(m, FusedTransformed) for m in fused.modules()) == 7  # layer1-4, mfa, pool, embed
    assert not any(isinstance(m, FusedTransformed) for m in graph.modules())  # the model itself is untouched
    with torch.no_grad():
        assert torch.allclose(fused(wav, lengths), graph(wav, lengths), atol=1e-5, rtol=1e-5)

    def ops(proto):
        return [n for n in proto.graph.node if n.op_type != "Cast"]  # compact()'s float16 weight casts

    path = export(model, tmp_path / "fused.onnx")
    proto = onnx.load(path)
    groups = [next((a.i for a in n.attribute if a.name == "group"), 1) for n in ops(proto) if n.op_type == "Conv"]
    # per block: the fusion's projection (dense, or grouped by width / 32) and K copies of each conv as one
    assert sum(g % 4 == 0 for g in groups) >= 15 and len(groups) <= 30, groups
    monkeypatch.setattr("lightsv.edge.fuse.fuse", lambda graph, *probe: graph)  # the K-copy loop
    baseline = onnx.load(export(model, tmp_path / "loop.onnx"))
    assert len(ops(proto)) < 0.5 * len(ops(baseline)), (len(ops(proto)), len(ops(baseline)))
    session = ort.InferenceSession(str(path))
    for seconds in ([0.5], [0.5, 7.3, 20.0]):
        w, n = batch(speech, seconds)
        got = session.run(None, {"wav": w, "lengths": n})[0]
        with torch.no_grad():
            want = graph(torch.from_numpy(w), torch.from_numpy(n)).numpy()
        assert np.abs(got - want).max() <= 1e-4


class _Halves(torch.nn.Module):
    """A block that slices its channels by indexing, which the fused form does not redirect."""

    def __init__(self, channels):
        super().__init__()
        self.conv = torch.nn.Conv1d(channels // 2, channels // 2, 3, padding=1)

    def forward(self, x):
        half = x.shape[1] // 2
        return torch.cat([self.conv(x[:, :half]), x[:, half:]], dim=1)


class _ChannelNorm(torch.nn.Module):
    """Layer norm over the channels of [B, C, T]: per copy, a statistic over that copy's channels only."""

    def __init__(self, channels):
        super().__init__()
        self.norm = torch.nn.LayerNorm(channels)

    def forward(self, x):
        return self.norm(x.transpose(1, 2)).transpose(1, 2)


class _Toy(torch.nn.Module):
    transform_targets = ("a", "b", "c")

    def __init__(self):
        super().__init__()
        self.a = torch.nn.Sequential(torch.nn.Conv1d(16, 16, 3, padding=1), torch.nn.PReLU(), torch.nn.BatchNorm1d(16))
        self.b = _Halves(16)
        self.c = _ChannelNorm(16)

    def forward(self, x):
        return self.c(self.b(self.a(x)))


def test_fusion_keeps_the_loop_where_a_block_cannot_be_fused():
    from lightsv.edge.fuse import FusedTransformed, fuse

    torch.manual_seed(0)
    model = lightsv.transform.apply(_Toy(), subsets=4, in_channels=16)
    for m in model.modules():  # non-trivial slopes and statistics, so a wrong fusion would show
        if isinstance(m, torch.nn.PReLU):
            m.weight.data.uniform_(0.1, 0.9)
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 16, 50)
    fused = fuse(model, x)
    assert isinstance(fused.a, FusedTransformed)  # conv, per-copy PReLU slopes, batch norm: fused
    assert isinstance(fused.b, lightsv.transform.Transformed)  # channel indexing: differs, keeps its loop
    assert isinstance(fused.c, lightsv.transform.Transformed)  # layer norm: no wide form
    with torch.no_grad():
        assert torch.allclose(fused(x), model(x), atol=1e-6)
