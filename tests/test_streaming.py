"""lightsv.streaming: sessions fed any chunk size, bounded work and memory, the sequential test, and
the Verifier's stream on the shipped model (torch and onnx) and the CLI."""

import math

import numpy as np
import pytest

from lightsv.audio import SAMPLE_RATE, load
from lightsv.errors import AudioError, ConfigError
from lightsv.streaming import StreamConfig, StreamSession, sprt_bounds

SR = SAMPLE_RATE
DIM = 8


class FakeEmbed:
    """A deterministic 'model': unit vector of a few statistics of the waveform; records input lengths."""

    def __init__(self):
        self.lengths = []

    def __call__(self, wav):
        self.lengths.append(len(wav))
        x = np.array([wav.mean(), wav.std(), np.abs(wav).mean(), wav[:100].mean(), 1.0, *np.zeros(DIM - 5)])
        return (x / np.linalg.norm(x)).astype(np.float32)


def session(embed=None, llr=lambda s, t: 0.0, **kw):
    enrolled = np.zeros(DIM, np.float32)
    enrolled[4] = 1.0
    kw = {"min_seconds": 0.25, "max_seconds": 60.0, "error": 0.1, "vad": False, **kw}
    return StreamSession("alice", enrolled, embed or FakeEmbed(), llr, **kw)


def noise(seconds, seed=0):
    return (0.1 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def feed(s, wav, sizes):
    states, pos, i = [], 0, 0
    while pos < len(wav):
        n = sizes[i % len(sizes)]
        states.append(s.feed(wav[pos : pos + n]))
        pos, i = pos + n, i + 1
    return states


def test_any_chunk_size_gives_the_same_updates_and_state():
    wav = noise(7.3)
    runs = []
    for sizes in ([160], [len(wav)], [1, 4000, 37, 16000, 999]):
        s = session()
        states = feed(s, wav, sizes)
        runs.append((s.updates, states[-1], s.close(), s.embedding))
    for updates, last, closed, emb in runs[1:]:
        assert updates == runs[0][0] == math.floor(7.3 / 0.25)
        assert last.score == pytest.approx(runs[0][1].score, abs=1e-6) and last.seconds == runs[0][1].seconds
        assert closed.seconds == pytest.approx(7.3) and closed.decided and closed.reason == "closed"
        np.testing.assert_allclose(emb, runs[0][3], atol=1e-6)


def test_work_and_memory_are_bounded_whatever_the_stream_length():
    embed = FakeEmbed()
    s = session(embed)
    buffer = s._buffer
    feed(s, noise(40.0), [160])
    cfg = StreamConfig()
    assert s.updates == 40 / cfg.hop_seconds  # one embedding per hop, not per chunk
    assert max(embed.lengths) <= (cfg.block_seconds + cfg.context_seconds) * SR
    assert s._buffer is buffer and buffer.size == (cfg.block_seconds + cfg.context_seconds) * SR


def test_within_the_first_block_the_stream_embeds_everything_heard():
    embed = FakeEmbed()
    s = session(embed)
    wav = noise(3.0, seed=3)
    feed(s, wav[: int(1.75 * SR)], [160])
    np.testing.assert_allclose(s.embedding, FakeEmbed()(wav[: int(1.75 * SR)]), atol=1e-6)
    # beyond it: the seconds-weighted mean of block embeddings (the first block is context + block long)
    long = noise(5.5, seed=4)
    s = session(FakeEmbed())
    feed(s, long, [8000])
    first, rest = long[: int(3.5 * SR)], long[int(3.0 * SR) :]
    expected = 3.5 * FakeEmbed()(first) + 2.0 * FakeEmbed()(rest)
    np.testing.assert_allclose(s.embedding, expected / np.linalg.norm(expected), atol=1e-6)


def test_sprt_bounds_and_early_decisions():
    reject, accept = sprt_bounds(0.05, 0.01)
    assert accept == pytest.approx(math.log(0.95 / 0.01)) and reject == pytest.approx(math.log(0.05 / 0.99))
    # an LLR that rises with time crosses the accept bound at a known update
    s = session(llr=lambda score, t: 2.0 * t, error=0.05)
    states = feed(s, noise(10.0), [160])
    bound = math.log(0.95 / 0.05)
    assert states[-1].decision == "accept" and states[-1].reason == "accept bound"
    assert states[-1].seconds == pytest.approx(math.ceil(bound / 2 / 0.25) * 0.25)
    assert s.updates == round(states[-1].seconds / 0.25)  # no work after the decision
    s = session(llr=lambda score, t: -t, error=(0.05, 0.01))
    assert feed(s, noise(10.0), [800])[-1].decision == "reject"


def test_forced_decisions_at_max_seconds_and_close_use_the_bounds_midpoint():
    s = session(llr=lambda score, t: 0.3, error=(0.2, 0.01), max_seconds=2.1)  # midpoint ~ 1.39: reject
    state = feed(s, noise(5.0), [1000])[-1]
    assert (state.decision, state.reason, state.seconds) == ("reject", "max_seconds", pytest.approx(2.1))
    s = session(llr=lambda score, t: 0.3, error=0.2)  # midpoint 0: accept
    feed(s, noise(1.1), [160])
    assert s.close().decision == "accept" and s.state.seconds == pytest.approx(1.1)


def test_bad_input_is_a_clear_error():
    with pytest.raises(AudioError, match="less than the model's minimum"):
        s = session()
        s.feed(noise(0.1))
        s.close()
    for bad, match in [
        (np.full(10, np.nan), "NaN"),
        (np.zeros((2, 10)), "one channel"),
        (np.zeros(5, np.int16), "float"),
    ]:
        with pytest.raises(AudioError, match=match):
            session().feed(bad)
    for kw, match in [
        ({"error": 0.6}, "in \\(0, 0.5\\)"),
        ({"error": (0.1, 0)}, "false_accept"),
        ({"max_seconds": 0.1}, "at least the model's minimum"),
    ]:
        with pytest.raises(ConfigError, match=match):
            session(**kw)
    with pytest.raises(ConfigError, match="whole number of hops"):
        StreamConfig(hop_seconds=0.3)
    for kw, match in [
        ({"max_seconds": math.inf}, "finite"),
        ({"config": {"hop_seconds": 0.1}}, "StreamConfig"),
        # a block that could never reach the model's minimum would never be embedded nor folded
        ({"config": StreamConfig(hop_seconds=0.1, block_seconds=0.2, context_seconds=0.0)}, "minimum"),
    ]:
        with pytest.raises(ConfigError, match=match):
            session(**kw)
    assert session(config=StreamConfig(hop_seconds=0.05, block_seconds=0.2, context_seconds=0.05)).feed(noise(1.0))


def test_a_stream_that_ended_undecided_refuses_more_audio():
    s = session(vad=True, sample_rate=44100)
    s.feed(quiet(1.0)[: int(44100 * 0.5)])
    with pytest.raises(AudioError, match="no speech found"):
        s.close()
    # its resampler has flushed: audio fed now would be taken at the wrong rate
    with pytest.raises(ConfigError, match="ended"):
        s.feed(noise(0.5))
    with pytest.raises(AudioError, match="no speech found"):
        s.close()  # closing again says the same
    decided = session(llr=lambda sc, t: 10.0)
    state = decided.feed(noise(1.0))
    assert state.decision == "accept" and decided.feed(noise(1.0)) == state == decided.close()


# ---------------------------------------------------------------------- speech-aware streams


def quiet(seconds, seed=1):
    """Faint room noise (-60 dB): audible, but no speech."""
    return (0.001 * np.random.default_rng(seed).standard_normal(int(seconds * SR))).astype(np.float32)


def talk(seconds, seed=2):
    """'Speech' as the energy detector sees it: loud 0.2 s bursts with 0.1 s faint pauses between."""
    wav = quiet(seconds, seed)
    loud = noise(seconds, seed + 1) * 3.0
    t = np.arange(len(wav)) / SR
    on = (t % 0.3) < 0.2
    wav[on] = loud[on]
    return wav


def gate_run(wav, sizes):
    from lightsv.speech import SpeechGate

    gate, out, pos, i, held = SpeechGate(), [], 0, 0, 0
    while pos < len(wav):
        n = sizes[i % len(sizes)]
        out.append(gate.push(wav[pos : pos + n]))
        held = max(held, sum(len(h) for h in gate._held))
        pos, i = pos + n, i + 1
    out.append(gate.flush())
    return gate, np.concatenate(out), held


def test_speech_gate_keeps_what_offline_trimming_keeps_in_bounded_memory_whatever_the_chunks():
    from lightsv import speech

    wav = np.concatenate([quiet(2.0), talk(1.5), quiet(0.6, 3), talk(1.0, 4), quiet(3.0, 5), talk(0.8, 6), quiet(1.0)])
    offline = speech.trim(wav)
    runs = [gate_run(wav, sizes) for sizes in ([160], [len(wav)], [1, 4000, 37, 16000, 999])]
    for gate, kept, held in runs:
        np.testing.assert_array_equal(kept, runs[0][1])
        assert (gate.heard, gate.admitted, gate.speech) == (len(wav), len(kept), runs[0][0].speech)
        # bounded: at most a leading margin + a bridgeable gap + a span too short to count is held back
        cfg = speech.SpeechConfig()
        assert held <= (cfg.margin_s + cfg.bridge_gap_s + cfg.min_span_s + 0.02) * SR
    gate, kept, _ = runs[0]
    # the same speech with the same margins: the causal floor and peak only lag at the very first onset
    assert abs(len(kept) - len(offline)) <= 0.05 * SR
    assert len(kept) < len(wav) - 3.0 * SR  # the 2 s lead-in and the 3 s pause are mostly dropped
    assert gate.speech_seconds == pytest.approx(speech.speech_seconds(wav), abs=0.05)


def test_room_tone_is_the_recordings_quietest_background_tiled_to_length():
    from lightsv import speech

    wav = np.concatenate([talk(1.0), quiet(0.3, 7), talk(0.5, 8)])
    tone = speech.room_tone(wav, 1.23)
    assert tone.shape == (int(round(1.23 * SR)),) and tone.dtype == wav.dtype
    # taken from the pause, not the speech: as faint as the quiet part, far below the talk
    assert np.std(tone) == pytest.approx(0.001, rel=0.3)
    # tiled back and forth: each tile joins its neighbour without a jump
    assert np.max(np.abs(np.diff(tone))) < 0.02
    assert speech.room_tone(wav, 0.0).size == 0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError):
            speech.room_tone(wav, bad)
    with pytest.raises(AudioError):
        speech.room_tone(np.zeros(0, np.float32), 1.0)


def test_speech_gate_passes_nothing_of_silence_or_steady_noise():
    for wav in (np.zeros(5 * SR, np.float32), quiet(5.0), noise(5.0)):
        gate, kept, held = gate_run(wav, [160])
        assert kept.size == 0 and gate.speech == gate.speech_seconds == 0
        assert held <= 0.5 * SR  # only a leading margin's worth waits for an onset


def test_a_stream_stays_undecided_through_leading_silence_and_embeds_only_speech():
    embed, seen = FakeEmbed(), []
    s = session(embed, llr=lambda score, t: seen.append(t) or 0.0, vad=True)
    lead = quiet(2.0)
    states = feed(s, lead, [160])
    assert all(not st.decided and st.score is None and st.llr is None for st in states)
    assert s.updates == 0 and states[-1].speech_seconds == 0 and states[-1].seconds == pytest.approx(2.0)
    states = feed(s, talk(2.0), [160])
    assert s.updates > 0 and states[-1].speech_seconds > 1.5
    last = states[-1]
    # of the lead-in only the stream's 0.1 s run-up before the onset
    assert last.seconds == pytest.approx(4.0) and last.embedded_seconds <= 2.0 + 0.1 + 0.02
    assert seen[-1] == last.embedded_seconds  # the LLR's duration is what was embedded, not what was heard
    assert max(embed.lengths) <= 2.6 * SR
    # the same through a session without the gate: the silence is embedded and counted
    s = session(FakeEmbed(), vad=False)
    feed(s, np.concatenate([lead, talk(2.0)]), [160])
    assert s.updates == 16 and s.state.embedded_seconds == s.state.speech_seconds == pytest.approx(4.0)


def test_bounds_wait_for_min_speech_seconds_and_forced_decisions_do_not():
    s = session(llr=lambda score, t: -10.0, error=0.05)  # past the reject bound from the first update
    states = [st for st in feed(s, noise(2.0), [4000]) if st.score is not None]  # a chunk per update
    assert [st.decided for st in states[:2]] == [False, True]  # 0.25 s: too little speech; 0.5 s: decided
    assert states[1].seconds == pytest.approx(0.5) and states[1].reason == "reject bound"
    s = session(llr=lambda score, t: -10.0, error=0.05, config=StreamConfig(min_speech_seconds=0.0))
    assert [st for st in feed(s, noise(1.0), [160]) if st.decided][0].seconds == pytest.approx(0.25)
    s = session(llr=lambda score, t: -10.0, error=0.05, max_seconds=0.3)  # forced below it all the same
    state = feed(s, noise(1.0), [160])[-1]
    assert (state.decision, state.reason) == ("reject", "max_seconds")
    with pytest.raises(ConfigError, match="min_speech_seconds"):
        StreamConfig(min_speech_seconds=-1.0)


def test_a_48k_stream_is_the_16k_stream_of_the_same_audio_resampled_as_loading_would():
    from scipy.signal import resample_poly

    x48 = (0.1 * np.random.default_rng(5).standard_normal(48000 * 4)).astype(np.float32)
    x16 = resample_poly(x48, 1, 3).astype(np.float32)
    a, b = session(), session(sample_rate=48000)
    feed(a, x16, [160])
    feed(b, x48, [480, 1, 4801])
    closed_a, closed_b = a.close(), b.close()
    assert a.updates == b.updates and closed_b.seconds == pytest.approx(closed_a.seconds)
    assert closed_b.score == pytest.approx(closed_a.score, abs=1e-5)
    np.testing.assert_allclose(b.embedding, a.embedding, atol=1e-5)
    s = session(sample_rate=48000, max_seconds=1.0)  # max_seconds counts the audio, whatever its rate
    assert feed(s, x48, [4800])[-1].seconds == pytest.approx(1.0) and s.state.reason == "max_seconds"
    with pytest.raises(AudioError, match="bad sample_rate"):
        session(sample_rate=0)


def test_streams_keep_a_short_run_up_before_an_onset_and_clips_the_detector_margin():
    from lightsv import speech
    from lightsv.streaming import STREAM_SPEECH

    wav = np.concatenate([quiet(2.0), talk(1.5), quiet(3.0, 5), talk(0.8, 6), quiet(1.0)])
    assert STREAM_SPEECH.onset_margin == 0.1 and STREAM_SPEECH.margin_s == speech.SpeechConfig().margin_s
    clip = speech.trim(wav)
    run_up = speech.trim(wav, config=STREAM_SPEECH)
    assert len(clip) - len(run_up) == 2 * int(0.4 * SR)  # two onsets after long silence, 0.4 s less before each
    gate = speech.SpeechGate(STREAM_SPEECH)
    kept = np.concatenate([gate.push(wav[i : i + 160]) for i in range(0, len(wav), 160)] + [gate.flush()])
    assert abs(len(kept) - len(run_up)) <= 0.05 * SR  # the causal gate keeps what offline trimming keeps
    s = session(vad=True)
    feed(s, wav[: int(3.0 * SR)], [160])
    assert s.state.embedded_seconds <= 1.0 + 0.1 + 0.02  # the speech heard and 0.1 s of the lead-in


def fluctuating(seconds, seed=7):
    """Faint noise whose level swings by 12 dB (a fan cycling, passing traffic): no speech, but too
    uneven for the detector to call it steady before anything louder has been heard."""
    t = np.arange(int(seconds * SR)) / SR
    return quiet(seconds, seed) * (10 ** (6 * np.sin(2 * np.pi * 0.7 * t) / 20)).astype(np.float32)


def test_a_fluctuating_run_up_never_rejects_and_is_dropped_once_speech_is_heard():
    from lightsv import speech

    gate, _, _ = gate_run(fluctuating(3.0), [160])
    assert not gate.sure and gate.admitted > 2.0 * SR  # taken for a noisy recording's speech, for now
    gate, _, _ = gate_run(np.concatenate([fluctuating(3.0), talk(1.0)]), [160])
    assert gate.sure
    assert len(speech.trim(np.concatenate([fluctuating(3.0), talk(1.0)]))) < 1.7 * SR  # offline: dropped
    # a reject bound does not decide on it; once speech is heard it is dropped and the speech decides
    s = session(llr=lambda score, t: -10.0, error=0.05, vad=True)
    run_up = feed(s, fluctuating(3.0), [160])
    assert not run_up[-1].decided and run_up[-1].score is not None and not run_up[-1].sure
    last = feed(s, talk(2.0), [160])[-1]
    assert (last.decision, last.reason, last.sure) == ("reject", "reject bound", True)
    assert last.seconds < 3.0 + 1.0 and last.embedded_seconds < 1.0  # on the speech, not on the run-up
    assert 0.5 <= last.speech_seconds < 1.0  # speech counted from the talk, not the run-up
    # an accept bound may: noise matches nobody, so an accept on it is the model's call, not the run-up's
    s = session(llr=lambda score, t: 10.0, error=0.05, vad=True)
    assert feed(s, fluctuating(3.0), [160])[-1].decision == "accept"
    # a stream ending right after its first loud sound is decided on what was scored before the drop
    s = session(vad=True)
    state = feed(s, fluctuating(3.0), [160])[-1]
    assert state.score is not None  # scored on the run-up
    assert feed(s, talk(0.06, seed=9), [160])[-1].score is None  # dropped, too little since to score
    closed = s.close()
    assert closed.decided and closed.reason == "closed" and closed.score == state.score
    # only a run-up at the start is dropped: here loud noise after the first words makes the detector
    # unsure for over 3 s, then louder speech makes it sure again; nothing heard is dropped
    s = session(vad=True)
    feed(s, np.concatenate([talk(0.3), 0.5 * noise(4.0, 4), 3.0 * talk(0.5, 5)]), [160])
    assert s.state.sure and s.state.speech_seconds > 4.0
    # a shorter stretch taken before the detector was sure (a quiet onset, say) is kept, and counted
    s = session(vad=True)
    feed(s, np.concatenate([fluctuating(1.0), talk(1.0)]), [160])
    assert s.state.speech_seconds > 1.1


def test_speech_aware_streams_do_not_depend_on_the_chunk_size():
    wav = np.concatenate([quiet(1.3), talk(2.2), quiet(1.7, 3), talk(1.4, 4), quiet(0.4)])
    runs = []
    for sizes in ([160], [len(wav)], [1, 4000, 37, 16000, 999], [2400]):
        s = session(llr=lambda score, t: 3.0 * t - 3.0, error=0.05, vad=True)
        feed(s, wav, sizes)
        runs.append((s.updates, s.state))
    for updates, state in runs[1:]:
        assert updates == runs[0][0]
        assert state == runs[0][1] and state.decision == "accept" and state.reason == "accept bound"


def test_a_stream_without_speech_cannot_be_decided_as_a_clip_without_speech_cannot():
    from lightsv import speech

    with pytest.raises(AudioError, match="no speech found"):  # offline: the same clip is refused
        speech.trim(quiet(3.0))
    s = session(vad=True)
    state = feed(s, quiet(3.0), [160])[-1]
    assert not state.decided and state.seconds == pytest.approx(3.0) and state.speech_seconds == 0
    with pytest.raises(AudioError, match="no speech found in 3.00 s"):
        s.close()
    s = session(vad=True, max_seconds=2.0)
    with pytest.raises(AudioError, match="no speech found in 2.00 s"):
        feed(s, quiet(3.0), [800])
    # a blip of speech shorter than the model's minimum (with its margins) is not enough either
    s = session(vad=True, min_seconds=2.0)
    feed(s, np.concatenate([quiet(2.0), talk(0.2), quiet(2.0, 3)]), [160])
    with pytest.raises(AudioError, match="less than the model's minimum"):
        s.close()


# ---------------------------------------------------------------------- the shipped model


@pytest.fixture(scope="module")
def verifiers():
    lightsv = pytest.importorskip("lightsv")
    pytest.importorskip("onnxruntime")
    from lightsv.verifier import example_clips

    clips = example_clips()
    out = {}
    for backend in ("torch", "onnx"):
        v = lightsv.Verifier.load(backend=backend, vad=False, threads=1)
        v.enroll("ls19", clips["ls19"][:2])
        out[backend] = v
    yield out, clips
    for v in out.values():
        v.close()


def test_shipped_model_is_duration_calibrated_and_verify_decides_on_the_llr(verifiers):
    (vs, clips) = verifiers
    v = vs["torch"]
    assert v.duration is not None
    for clip in (clips["ls19"][2], clips["ls26"][0]):
        r = v.verify("ls19", clip)
        assert r.llr is not None and r.seconds == pytest.approx(len(load(clip)) / SR)
        assert r.accept == (r.llr >= 0) == (r.score >= r.threshold)
        # a shorter test clip at the same score is weaker evidence: its threshold is further from the middle
    assert v.duration.slope_offset(0.5)[0] < v.duration.slope_offset(3.0)[0]


def test_stream_on_torch_and_onnx_agree_and_match_the_embedding_of_what_was_heard(verifiers):
    (vs, clips) = verifiers
    wav = load(clips["ls19"][2])
    runs = {}
    for backend, v in vs.items():
        s = v.stream("ls19", error=0.01, max_seconds=6.0)
        states = feed(s, wav, [160])  # 10 ms chunks
        runs[backend] = [st for st in states if st.score is not None]
        heard = int(runs[backend][-1].seconds * SR) if not s.state.decided else int(s.state.seconds * SR)
        if heard <= 3.5 * SR:
            assert s.state.score == pytest.approx(
                float(v.embed(wav[:heard], sample_rate=SR) @ v.speaker_embedding("ls19")), abs=1e-4
            )
    # the same clip at 48 kHz through a 48 kHz session: resampled as it comes, nearly the same score
    from scipy.signal import resample_poly

    v = vs["onnx"]
    s = v.stream("ls19", error=0.01, max_seconds=6.0, sample_rate=48000)
    feed(s, resample_poly(wav, 3, 1).astype(np.float32), [480])
    assert s.close().score == pytest.approx(runs["onnx"][-1].score, abs=0.02)
    torch_scores = [st.score for st in runs["torch"]]
    onnx_scores = [st.score for st in runs["onnx"]]
    assert len(torch_scores) == len(onnx_scores) > 0
    np.testing.assert_allclose(torch_scores, onnx_scores, atol=2e-3)
    assert runs["torch"][-1].decision == runs["onnx"][-1].decision


def test_speech_aware_stream_on_torch_and_onnx_waits_for_speech_and_embeds_only_it(verifiers):
    from lightsv.speech import SpeechGate
    from lightsv.streaming import STREAM_SPEECH

    (vs, clips) = verifiers
    wav = np.concatenate([quiet(2.0), load(clips["ls19"][2])])
    runs = {}
    for backend, v in vs.items():  # the fixture's verifiers are vad=False: the stream's own switch wins
        s = v.stream("ls19", error=0.01, max_seconds=6.0, vad=True)
        states = [st for st in feed(s, wav, [160]) if st.score is not None]
        runs[backend] = states
        first = states[0]
        assert first.seconds > 2.0 and first.speech_seconds < first.seconds - 1.5  # nothing scored in the lead-in
        last = s.state
        assert last.speech_seconds < last.embedded_seconds < last.seconds
        if last.embedded_seconds <= 3.5:  # within the first block: exactly the embedding of the speech kept
            heard = int(round(last.seconds * SR))
            kept = SpeechGate(STREAM_SPEECH).push(wav[:heard])[: int(round(last.embedded_seconds * SR))]
            expected = float(v.embed(kept, sample_rate=SR) @ v.speaker_embedding("ls19"))
            assert last.score == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose([st.score for st in runs["torch"]], [st.score for st in runs["onnx"]], atol=2e-3)
    assert [st.seconds for st in runs["torch"]] == [st.seconds for st in runs["onnx"]]


def test_cli_verify_stream_prints_the_running_state(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    from lightsv.cli import main
    from lightsv.verifier import example_clips

    clips = example_clips()
    db = str(tmp_path / "s.db")
    common = ["--db", db, "--backend", "onnx", "--no-vad"]
    assert main(["enroll", *common, "ls19", *map(str, clips["ls19"][:2])]) == 0
    capsys.readouterr()
    assert main(["verify", *common, "--stream", "--chunk-seconds", "0.25", "ls19", str(clips["ls19"][2])]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) >= 2 and " s speech)  score " in out[0] and out[-1].startswith("ls19: ")
    # --no-vad: every second heard is embedded and counted as speech
    assert out[0].startswith("  0.25 s ( 0.25 s speech)") and " s, " in out[-1] and " s of speech (" in out[-1]
    speech_aware = ["--db", db, "--backend", "onnx", "--stream", "--json", "ls19", str(clips["ls19"][2])]
    assert main(["verify", *speech_aware]) == 0
    import json

    states = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert states[-1]["decision"] in ("accept", "reject") and states[-1]["speech_seconds"] < states[-1]["seconds"]
    assert main(["verify", *common, "ls19", str(clips["ls19"][2])]) == 0
    assert ", llr " in capsys.readouterr().out  # the plain verify reports the duration-aware LLR too
    assert main(["verify", *common, "--stream", "--mic", "ls19", str(clips["ls19"][2])]) == 2
    assert "either a CLIP or --mic" in capsys.readouterr().err


def test_overrides_fall_back_to_raw_scores_and_streams_need_the_calibration(verifiers, tmp_path):
    import lightsv
    from lightsv.errors import ThresholdError

    (vs, clips) = verifiers
    with pytest.raises(ConfigError, match="vad must be"):
        vs["onnx"].stream("ls19", vad="no")
    with lightsv.Verifier.load(backend="onnx", vad=False, threshold=0.3) as v:
        v.enroll("ls19", clips["ls19"][:2])
        r = v.verify("ls19", clips["ls26"][0])
        assert r.llr is None and r.threshold == 0.3 and r.accept == (r.score >= 0.3)
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    tiny = lightsv.build_model("ecapa_tdnn_small", channels=32, embed_dim=32, se_channels=16, attention_channels=16)
    path = lightsv.save_model(tiny, tmp_path / "tiny.pt", calibration={"eer_threshold": 0.5, "far_thresholds": {}})
    with lightsv.Verifier.load(path) as v:
        v.enroll("ls19", clips["ls19"][:1])
        assert v.duration is None and v.verify("ls19", clips["ls19"][1]).llr is None
        with pytest.raises(ThresholdError, match="no duration-aware calibration"):
            v.stream("ls19")


def test_recalibrating_thresholds_drops_the_duration_part(tmp_path):
    import lightsv
    from lightsv.calibrate import write_calibration
    from lightsv.verifier import DEFAULT_MODEL

    out = write_calibration(DEFAULT_MODEL, {"eer_threshold": 0.4, "far_thresholds": {}}, out=tmp_path / "m.pt")
    with lightsv.Verifier.load(out) as v:
        assert v.duration is None and v.threshold == 0.4
