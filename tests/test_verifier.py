"""lightsv.Verifier on the bundled LibriSpeech clips, with a tiny random model (the shipped one may be absent)."""

import numpy as np
import pytest
import torch

import lightsv
import lightsv.verifier
from lightsv.audio import load
from lightsv.errors import AudioError, ConfigError, StoreError, ThresholdError
from lightsv.verifier import Identification, Verification, Verifier, example_clips

TINY = dict(channels=32, embed_dim=32, se_channels=16, attention_channels=16, mfa_channels=96)


def tiny_checkpoint(path, seed=0, **extra):
    torch.manual_seed(seed)
    return lightsv.save_model(lightsv.build_model("ecapa_tdnn_small", **TINY), path, **extra)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return tiny_checkpoint(tmp_path_factory.mktemp("model") / "tiny.pt")


@pytest.fixture(scope="module")
def clips():
    return example_clips()


@pytest.fixture
def v(ckpt):
    with Verifier.load(ckpt) as verifier:
        yield verifier


def test_examples_are_three_speakers_of_three_short_flac_clips(clips):
    assert sorted(clips) == ["ls19", "ls26", "ls27"]
    for paths in clips.values():
        assert len(paths) == 3
        assert all(2.5 <= len(load(p)) / 16000 <= 5.0 for p in paths)
    assert sum(p.stat().st_size for ps in clips.values() for p in ps) < 1_000_000


def test_embed_many_pads_exactly_and_matches_embed(v, clips):
    wav = load(clips["ls19"][0])
    batch = [clips["ls26"][0], wav[:16000], wav[: int(2.3 * 16000)], clips["ls27"][2]]
    many = v.embed_many(batch, sample_rate=16000, batch_size=3)
    one = np.stack([v.embed(x, sample_rate=16000) for x in batch])
    assert many.shape == (4, v.dim) and many.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(many, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(many, one, atol=1e-5)


def test_same_clip_scores_one_and_compare_is_symmetric(v, clips):
    a, b = clips["ls19"][0], clips["ls27"][1]
    assert v.compare(a, a) == pytest.approx(1.0, abs=1e-5)
    assert v.compare(a, b) == pytest.approx(v.compare(b, a), abs=1e-6)
    assert v.compare(a, b) == pytest.approx(float(v.embed(a) @ v.embed(b)), abs=1e-5)


def test_enroll_appends_and_verify_scores_cosine_to_the_mean(ckpt, clips):
    with Verifier.load(ckpt, threshold=0.3) as v:
        assert v.enroll("alice", clips["ls19"][:1]).total == 1
        assert v.enroll("alice", [str(clips["ls19"][1])]).total == 2
        assert [(s["name"], s["count"]) for s in v.speakers()] == [("alice", 2)]
        r = v.verify("alice", clips["ls19"][2])
        mean = v.embed_many(clips["ls19"][:2]).mean(axis=0)
        assert isinstance(r, Verification) and r.speaker == "alice"
        assert r.score == pytest.approx(float(mean @ v.embed(clips["ls19"][2]) / np.linalg.norm(mean)), abs=1e-5)
        assert r.threshold == 0.3 and r.accept == (r.score >= 0.3)
        assert v.delete("alice") == 2 and v.speakers() == []


def test_verify_without_a_threshold_refuses_to_decide_and_says_how_to_get_one(v, clips):
    v.enroll("alice", clips["ls19"][:1])
    with pytest.raises(ThresholdError, match="no calibration.*threshold=.*--calibrate"):
        v.verify("alice", clips["ls19"][2])
    with pytest.raises(ThresholdError):
        v.identify(clips["ls19"][2])
    assert v.compare(clips["ls19"][0], clips["ls19"][2]) <= 1.0  # scoring still works


def test_duplicate_clips_are_skipped_and_reported(v, clips, tmp_path):
    copy = tmp_path / "renamed.flac"
    copy.write_bytes(clips["ls19"][0].read_bytes())
    first = v.enroll("alice", clips["ls19"][:2])
    assert (first.added, first.skipped, first.total) == (2, [], 2)
    again = v.enroll("alice", [copy, clips["ls19"][2], clips["ls19"][2]])
    assert (again.added, again.skipped, again.total) == (1, [0, 2], 3)
    assert v.enroll("bob", [copy]).added == 1  # another speaker may hold the same clip
    sources = {s["name"]: s["sources"] for s in v.speakers(sources=True)}
    assert sources == {"alice": [str(c) for c in clips["ls19"]], "bob": [str(copy)]}


def test_a_very_long_speaker_name_is_refused_before_any_work(v, clips):
    with pytest.raises(StoreError, match="100,000 characters long, the limit is 256"):
        v.enroll("x" * 100_000, [clips["ls19"][0], "/no/such/clip.wav"])
    assert v.speakers() == []


def test_identify_ranks_enrolled_speakers_and_decides_on_the_best(ckpt, clips):
    with Verifier.load(ckpt, threshold=-1.0) as v:
        nobody = v.identify(clips["ls19"][2])
        assert isinstance(nobody, Identification)
        assert (nobody.speaker, nobody.score, nobody.accept, nobody.candidates) == (None, None, False, [])
        for name, paths in clips.items():
            v.enroll(name, paths[:2])
        test = v.embed(clips["ls26"][2])
        r = v.identify(clips["ls26"][2], top_k=2)
        expected = sorted(((n, float(v.speaker_embedding(n) @ test)) for n in clips), key=lambda c: -c[1])[:2]
        assert [n for n, _ in r.candidates] == [n for n, _ in expected]
        assert [s for _, s in r.candidates] == pytest.approx([s for _, s in expected], abs=1e-5)
        assert r.speaker == expected[0][0] and r.accept  # every score passes -1
        assert r.as_dict()["candidates"][0] == {"speaker": r.speaker, "score": r.score}
        v.delete(r.speaker)  # the index follows the store
        assert r.speaker not in [n for n, _ in v.identify(clips["ls26"][2], top_k=3).candidates]
        with pytest.raises(ConfigError, match="top_k"):
            v.identify(clips["ls26"][2], top_k=0)


def test_speech_is_trimmed_and_silence_refused(ckpt, clips):
    wav = load(clips["ls19"][0])
    silence = np.zeros(2 * 16000, dtype=np.float32)
    with Verifier.load(ckpt) as v, Verifier.load(ckpt, vad=False) as whole:
        with pytest.raises(AudioError, match="no speech found"):
            v.embed(silence, sample_rate=16000)
        assert whole.embed(silence, sample_rate=16000).shape == (v.dim,)
        short, long = (np.concatenate([silence[:n], wav, silence[:n]]) for n in (8000, 32000))
        # Trimmed, 0.5 s or 2 s of silence around the speech make no difference; whole, they do.
        assert float(v.embed(short, sample_rate=16000) @ v.embed(long, sample_rate=16000)) > 0.9999
        assert float(whole.embed(short, sample_rate=16000) @ whole.embed(long, sample_rate=16000)) < 0.999
