"""lightsv.Verifier on the bundled LibriSpeech clips, with a tiny random model (the shipped one may be absent)."""

import numpy as np
import pytest
import torch

import lightsv
import lightsv.verifier
from lightsv.audio import load
from lightsv.calibrate import calibration, write_calibration
from lightsv.errors import AudioError, CheckpointError, ConfigError, StoreError, ThresholdError, UnknownSpeakerError
from lightsv.verifier import Identification, Verification, Verifier, example_clips, model_id

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


def test_a_dc_offset_does_not_hide_speech(clips):
    # found on a LibriSpeech training clip recorded at -0.25 DC: its mean square was steady, so "no speech"
    from lightsv import speech

    wav = load(clips["ls19"][0])
    silence = np.zeros(16000, dtype=np.float32)
    padded = np.concatenate([silence, wav, silence])
    assert speech.speech_spans(padded - 0.25) == speech.speech_spans(padded) != []


def test_short_clips_are_repeated_to_half_a_second_down_to_the_minimum(tmp_path, clips):
    path = tiny_checkpoint(tmp_path / "short.pt", min_seconds=0.25)
    wav = load(clips["ls19"][0])[16000:20000]  # 0.25 s of speech
    with Verifier.load(path) as v:
        repeated = v.embed(np.concatenate([wav, wav]), sample_rate=16000)
        np.testing.assert_allclose(v.embed(wav, sample_rate=16000), repeated, atol=1e-6)
        with pytest.raises(AudioError, match="shorter than the minimum of 0.25 s"):
            v.embed(wav[:3900], sample_rate=16000)
    with Verifier.load(tiny_checkpoint(tmp_path / "plain.pt")) as v:  # no min_seconds: the default 0.5 s
        with pytest.raises(AudioError, match="shorter than the minimum of 0.5 s"):
            v.embed(wav, sample_rate=16000)


def test_given_threshold_decides_and_the_boundary_accepts(ckpt, clips):
    # calibrated thresholds are real trial scores: a trial scoring exactly the threshold is accepted
    with Verifier.load(ckpt, threshold=0.0) as v:
        v.enroll("bob", clips["ls26"][:2])
        score = v.verify("bob", clips["ls26"][2]).score
    above, below = float(np.nextafter(score, np.inf)), float(np.nextafter(score, -np.inf))
    for threshold, accept in [(score, True), (below, True), (above, False), (-1.0, True), (1.5, False)]:
        with Verifier.load(ckpt, threshold=threshold) as v:
            v.enroll("bob", clips["ls26"][:2])
            r = v.verify("bob", clips["ls26"][2])
            assert (r.score, r.threshold, r.accept) == (score, threshold, accept)


def test_asnorm_changes_scores_symmetrically_and_can_be_turned_off(v, clips):
    a, b = clips["ls19"][0], clips["ls26"][0]
    raw = v.compare(a, b)
    cohort = np.random.default_rng(0).standard_normal((40, v.dim)).astype(np.float32)
    v.set_cohort(cohort, top_n=10)
    assert v.score_norm == "asnorm" and v.cohort_size == 40
    normed = v.compare(a, b)
    assert normed != pytest.approx(raw, abs=1e-3)
    assert normed == pytest.approx(v.compare(b, a), abs=1e-6)
    ea, eb = v.embed(a), v.embed(b)
    unit = cohort / np.linalg.norm(cohort, axis=1, keepdims=True)
    top = [np.sort(unit @ e)[-10:] for e in (ea, eb)]
    expected = 0.5 * sum((float(ea @ eb) - t.mean()) / t.std() for t in top)
    assert normed == pytest.approx(expected, rel=1e-4)
    v.set_cohort(None)
    assert v.compare(a, b) == pytest.approx(raw, abs=1e-6)
    with pytest.raises(ConfigError, match="at least 2"):
        v.set_cohort(cohort[:1])


def test_unknown_speaker_names_the_enrolled_ones(ckpt, clips):
    with Verifier.load(ckpt, threshold=0.5) as v:
        v.enroll("carol", clips["ls27"][:1])
        with pytest.raises(UnknownSpeakerError, match=r"'dave' is not enrolled.*'carol'"):
            v.verify("dave", clips["ls27"][2])
        with pytest.raises(UnknownSpeakerError):
            v.delete("dave")


def test_bad_audio_names_the_file_and_enrolls_nothing(v, tmp_path, clips):
    junk = tmp_path / "junk.wav"
    junk.write_text("not audio at all")
    with pytest.raises(AudioError, match="junk.wav"):
        v.enroll("erin", [clips["ls19"][0], junk])
    assert v.speakers() == []
    with pytest.raises(AudioError, match="shorter than the minimum of 0.5"):
        v.embed(np.zeros(3200, dtype=np.float32), sample_rate=16000)
    with pytest.raises(AudioError, match="no such file"):
        v.compare(clips["ls19"][0], tmp_path / "missing.flac")
    # finite samples far outside [-1, 1] overflow the filterbank: an error, not a NaN score
    loud = load(clips["ls19"][2]) * 1e20
    with pytest.raises(AudioError, match=r"finite numbers \(peak sample [0-9.]+e\+19"):
        v.embed(loud, sample_rate=16000)
    v.enroll("erin", clips["ls19"][:1])
    with pytest.raises(AudioError, match="finite numbers"):
        v.compare(loud, clips["ls19"][0], sample_rate=16000)
    for bad in ("x", float("nan"), -1.0, True):
        with pytest.raises(ConfigError, match="enrolled_seconds"):
            v.verify("erin", clips["ls19"][1], enrolled_seconds=bad)
    with pytest.raises(ConfigError, match="vad must be"):
        Verifier.load(lightsv.verifier.DEFAULT_MODEL, vad="no")
    v.delete("erin")


def test_store_persists_across_verifiers_and_refuses_another_model(ckpt, tmp_path, clips):
    db = tmp_path / "speakers.db"
    with Verifier.load(ckpt, db=db, threshold=0.5) as v:
        v.enroll("frank", clips["ls26"][:2])
        score = v.verify("frank", clips["ls26"][2]).score
    with Verifier.load(ckpt, db=db, threshold=0.5) as v:
        assert [s["name"] for s in v.speakers()] == ["frank"]
        assert v.verify("frank", clips["ls26"][2]).score == pytest.approx(score, abs=1e-6)
    other = tiny_checkpoint(tmp_path / "other.pt", seed=1)
    with pytest.raises(StoreError, match="cannot be mixed"):
        Verifier.load(other, db=db)


def test_calibration_is_written_into_the_checkpoint_and_read_as_threshold(ckpt, tmp_path, clips):
    path = tiny_checkpoint(tmp_path / "cal.pt", note="kept")
    db = tmp_path / "s.db"
    with Verifier.load(path, db=db) as v:
        v.enroll("gina", clips["ls19"][:2])
        before = v.model_id
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(0.7, 0.1, 200), rng.normal(0.2, 0.1, 800)])
    labels = np.r_[np.ones(200), np.zeros(800)]
    cal = calibration(scores, labels, fars=(0.01, 0.05), trials="synthetic")
    assert set(cal) >= {"eer_threshold", "far_thresholds", "eer", "n_target", "n_nontarget", "trials", "score_norm"}
    assert np.mean(scores[labels == 0] >= cal["far_thresholds"]["0.01"]) <= 0.01
    write_calibration(path, cal)
    _, extra = lightsv.load_model(path, return_extra=True)
    assert extra["note"] == "kept" and extra["calibration"]["trials"] == "synthetic"
    # Same weights, same id: stores made before the calibration still open.
    with Verifier.load(path, db=db) as v:
        assert v.model_id == before and v.threshold == pytest.approx(cal["eer_threshold"])
        r = v.verify("gina", clips["ls19"][2])
        assert r.threshold == cal["eer_threshold"] and r.accept is (r.score >= cal["eer_threshold"])
        v.set_cohort(np.eye(v.dim, dtype=np.float32))
        assert v.threshold is None  # a raw-cosine calibration does not apply to AS-norm scores
        with pytest.raises(ThresholdError, match="'asnorm' but .* calibrated for 'none'.*set_cohort\\(None\\)"):
            v.verify("gina", clips["ls19"][2])
    with Verifier.load(path, operating_point="far=0.05") as v:
        assert v.threshold == pytest.approx(cal["far_thresholds"]["0.05"])
    with pytest.raises(CheckpointError, match="no threshold at far=0.1"):
        Verifier.load(path, operating_point="far=0.1")
    with pytest.raises(ConfigError, match="operating point"):
        Verifier.load(path, operating_point="best")
    with pytest.raises(CheckpointError, match="no calibration"):
        Verifier.load(ckpt, operating_point="eer")


def test_asnorm_calibration_applies_only_with_a_cohort(tmp_path):
    path = tiny_checkpoint(
        tmp_path / "as.pt", calibration={"eer_threshold": 2.5, "far_thresholds": {}, "score_norm": "asnorm"}
    )
    with Verifier.load(path) as v:
        assert v.threshold is None
        v.set_cohort(np.eye(v.dim, dtype=np.float32))
        assert v.threshold == 2.5


def test_filterbank_comes_from_the_training_config(tmp_path):
    path = tiny_checkpoint(tmp_path / "f.pt", training_config={"features": {"frame_shift_ms": 20.0}})
    with Verifier.load(path) as v:
        assert v.fbank.config.frame_shift_ms == 20.0
    bad = tiny_checkpoint(tmp_path / "g.pt", features={"n_mels": 40})
    with pytest.raises(CheckpointError, match="40"):
        Verifier.load(bad)


def test_default_model_missing_or_present(monkeypatch, tmp_path, ckpt):
    monkeypatch.setattr(lightsv.verifier, "DEFAULT_MODEL", tmp_path / "default.pt")
    with pytest.raises(CheckpointError, match="default model .* is missing"):
        Verifier.load()
    monkeypatch.setattr(lightsv.verifier, "DEFAULT_MODEL", ckpt)
    with Verifier.load() as v:
        assert v.model_id == model_id(lightsv.load_model(ckpt)) and v.model_id.startswith("sha256:")


def test_calibration_refuses_rates_the_trials_cannot_resolve_and_warns_on_few():
    scores, labels = np.r_[np.linspace(0.5, 1, 10), np.linspace(0, 0.6, 20)], np.r_[np.ones(10), np.zeros(20)]
    with pytest.raises(ConfigError, match=r"20 non-target trials cannot resolve .*0\.01, 0\.001 .*at least 100"):
        calibration(scores, labels)
    with pytest.warns(UserWarning, match="far=0.1 rests on 2.0 expected false accepts"):
        cal = calibration(scores, labels, fars=(0.1,))
    assert set(cal["far_thresholds"]) == {"0.1"}


def test_identify_with_a_cohort_ranks_by_asnorm_scores(ckpt, clips):
    with Verifier.load(ckpt, threshold=-100.0) as v:
        for name, paths in clips.items():
            v.enroll(name, paths[:2])
        v.set_cohort(np.random.default_rng(0).standard_normal((30, v.dim)).astype(np.float32), top_n=10)
        test = v.embed(clips["ls27"][2])
        r = v.identify(clips["ls27"][2], top_k=3)
        expected = sorted(((n, v.score(v.speaker_embedding(n), test)) for n in clips), key=lambda c: -c[1])
        assert [n for n, _ in r.candidates] == [n for n, _ in expected]
        assert [s for _, s in r.candidates] == pytest.approx([s for _, s in expected], rel=1e-4)
