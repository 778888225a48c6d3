"""Training recipe: data, augmentation, losses, teacher cache, config loading and the training loop.

The loop runs on a handful of speakers copied from the shared speech corpus (skipped without it),
with a tiny transformed AMCRN, 1.5 s crops and a fake teacher, so the whole file stays fast.
"""

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.multiprocessing as mp

from lightsv import data
from lightsv import train as trainer
from lightsv.errors import ConfigError
from lightsv.features import Fbank
from lightsv.train import augment, distributed, evaluation, loop
from lightsv.train import config as train_config
from lightsv.train.losses import AAMSoftmax, DistillLoss, margin_at
from lightsv.train.teacher import TeacherCache, build_cache

RATE = 16000


# ----------------------------------------------------------------------------- losses


def test_aam_matches_hand_computation():
    aam = AAMSoftmax(2, 2, margin=0.3, scale=10.0)
    with torch.no_grad():
        aam.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0]]))
    a = 0.4  # angle between the embedding and class 0
    emb = torch.tensor([[math.cos(a), math.sin(a)]]) * 3.0  # length must not matter
    loss, acc = aam(emb, torch.tensor([0]))
    target, other = 10.0 * math.cos(a + 0.3), 10.0 * math.sin(a)
    assert loss.item() == pytest.approx(-target + math.log(math.exp(target) + math.exp(other)), rel=1e-5)
    assert acc.item() == 1.0
    # past pi - m the logit falls back to cos(theta) - m sin(m) (no easy margin) or cos(theta) (easy)
    emb = torch.tensor([[-1.0, 0.05]])
    cos0 = (emb[0] / emb[0].norm())[0].item()
    for easy, expected in ((False, cos0 - math.sin(math.pi - 0.3) * 0.3), (True, cos0)):
        aam.easy_margin = easy
        logits = aam.logits(emb, torch.tensor([0]))
        assert logits[0, 0].item() == pytest.approx(10.0 * expected, rel=1e-5)
    # unlabelled rows are left out; none labelled gives zero
    both, _ = aam(torch.tensor([[math.cos(a), math.sin(a)], [5.0, -2.0]]), torch.tensor([0, -1]))
    aam.easy_margin = False
    assert both.item() == pytest.approx(loss.item(), rel=1e-5)
    assert aam(emb, torch.tensor([-1]))[0].item() == 0.0


def test_subcenter_aam_scores_each_class_by_its_nearest_centre():
    # class 0 has centres at 0 and pi/2, class 1 at pi and -pi/2: an embedding at 80 degrees is near
    # class 0's second centre, which a single-centre head (first centres only) would not see
    sub = AAMSoftmax(2, 2, margin=0.3, scale=2.0, subcenters=2)
    single = AAMSoftmax(2, 2, margin=0.3, scale=2.0)
    with torch.no_grad():
        sub.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]]))
        single.weight.copy_(sub.weight[[0, 2]])
    a = math.radians(80)
    emb = torch.tensor([[math.cos(a), math.sin(a)]])
    assert sub.cosine(emb)[0].tolist() == pytest.approx([math.cos(math.pi / 2 - a), -math.cos(a)], abs=1e-6)
    assert single.cosine(emb)[0].tolist() == pytest.approx([math.cos(a), -math.cos(a)], abs=1e-6)
    loss, acc = sub(emb, torch.tensor([0]))
    target, other = 2.0 * math.cos(math.pi / 2 - a + 0.3), -2.0 * math.cos(a)
    assert loss.item() == pytest.approx(-target + math.log(math.exp(target) + math.exp(other)), rel=1e-5)
    assert acc.item() == 1.0
    # a gradient reaches only the centre that won
    loss.backward()
    assert sub.weight.grad is not None
    assert sub.weight.grad[1].abs().sum() > 0 and sub.weight.grad[2].abs().sum() > 0
    assert sub.weight.grad[0].abs().sum() == 0 and sub.weight.grad[3].abs().sum() == 0
    with pytest.raises(ConfigError, match="subcenters"):
        AAMSoftmax(2, 2, subcenters=0)


def test_margin_warmup_and_distill_loss():
    assert [margin_at(e, 0.2, (1.0, 3.0)) for e in (0.5, 1.0, 2.0, 3.0, 9.0)] == pytest.approx([0, 0, 0.1, 0.2, 0.2])
    assert margin_at(0.0, 0.2) == 0.2
    loss = DistillLoss(3, 3)
    t = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    assert loss(t * 2, t).item() == pytest.approx(0.0, abs=1e-6)
    assert loss(t.flip(0), t).item() == pytest.approx(1.0)
    assert loss(torch.stack([t[0], t[0]]), t, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.0, abs=1e-6)
    assert isinstance(DistillLoss(4, 3).project, torch.nn.Linear)
    with pytest.raises(ConfigError):
        DistillLoss(4, 3, projection="none")


# ----------------------------------------------------------------------------- augmentation


def test_augmentation_keeps_shape_and_is_seeded():
    rng = np.random.default_rng(0)
    wav = (0.1 * rng.standard_normal(RATE)).astype(np.float32)
    other = (0.1 * rng.standard_normal(3 * RATE)).astype(np.float32)
    config = augment.AugmentConfig(
        noise_prob=1, babble_prob=1, reverb_prob=1, bandlimit_prob=1, codec_prob=1, gain_prob=1
    )
    aug = augment.Augmenter(config, babble=lambda r, n: other[(s := int(r.integers(len(other) - n))) : s + n])
    outs = [aug(wav, np.random.default_rng(seed)) for seed in (1, 1, 2)]
    for out in outs:
        assert out.shape == wav.shape and out.dtype == np.float32 and np.isfinite(out).all()
    assert np.array_equal(outs[0], outs[1]) and not np.array_equal(outs[0], outs[2])
    for name in ("noise_prob", "reverb_prob", "bandlimit_prob", "codec_prob", "gain_prob"):
        one = augment.Augmenter(augment.AugmentConfig(**{name: 1.0}))(wav, np.random.default_rng(3))
        assert one.shape == wav.shape and one.dtype == np.float32 and not np.allclose(one, wav)
    assert np.array_equal(augment.Augmenter(augment.AugmentConfig())(wav, rng), wav)
    fast = augment.change_speed(wav, 1.1, 8000)
    assert fast.shape == (8000,) and fast.dtype == np.float32
    speed = augment.Augmenter(augment.AugmentConfig(speed_prob=1.0))
    assert {speed.speed(np.random.default_rng(s)) for s in range(20)} == {(1, 0.9), (2, 1.1)}
    with pytest.raises(ConfigError):
        augment.Augmenter(augment.AugmentConfig(noise_prob=1.5))


def test_spec_augment_masks_bands_and_spans_and_is_seeded():
    feats = torch.randn(6, 50, 20) + 3.0
    config = augment.AugmentConfig(spec_prob=1.0, spec_freq_width=4, spec_time_width=7)
    runs = [augment.spec_augment(feats, config, torch.Generator().manual_seed(s)) for s in (1, 1, 2)]
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])
    assert not torch.equal(feats, runs[0]) and torch.all(feats > -10)  # the input is left alone
    for b in range(6):
        zero = runs[0][b] == 0
        rows, cols = zero.all(dim=1), zero.all(dim=0)  # masked frames, masked channels
        assert 1 <= int(cols.sum()) <= 4 and 1 <= int(rows.sum()) <= 7
        # the band and the span are contiguous, and nothing else is touched
        assert int(cols.nonzero().max() - cols.nonzero().min()) + 1 == int(cols.sum())
        assert int(rows.nonzero().max() - rows.nonzero().min()) + 1 == int(rows.sum())
        keep = ~rows[:, None] & ~cols[None, :]
        assert torch.equal(runs[0][b][keep], feats[b][keep])
    none = augment.spec_augment(feats, augment.AugmentConfig(spec_prob=0.0), torch.Generator().manual_seed(1))
    assert torch.equal(none, feats)
    for bad in ({"spec_prob": 2.0}, {"spec_time_width": -1}, {"spec_freq_masks": 1.5}, {"spec_time_masks": 10**8}):
        with pytest.raises(ConfigError):
            augment.AugmentConfig(**bad).check()


def test_augmentation_ranges_are_checked_before_training():
    nan, inf = float("nan"), float("inf")
    for bad in (
        {"noise_snr": (15.0, 0.0)},
        {"noise_snr": (nan, 5.0)},
        {"babble_snr": (13.0, nan)},
        {"gain_db": (-inf, inf)},
        {"gain_db": (1000.0, 1000.0)},
        {"rt60": (-1.0, -0.5)},
        {"rt60": (1e6, 1e6)},
        {"speeds": (nan,)},
        {"speeds": (1e-9,)},
        {"speeds": (0.9, 1.0)},
    ):
        with pytest.raises(ConfigError, match="augment"):
            augment.AugmentConfig(**bad).check()
    augment.AugmentConfig(noise_snr=(10.0, 30.0), speeds=(0.85, 1.15), rt60=(0.2, 0.8)).check()


# ----------------------------------------------------------------------------- teacher


class FakeTeacher:
    """Window w of a clip embeds as a fixed random unit vector of (window index, rounded clip energy)."""

    name, rate = "fake", 2.0
    window, step = 1600, 800  # 0.1 s windows every 0.05 s

    def embed(self, wav):
        starts = np.arange(0, max(1, len(wav) - self.window + 1), self.step)
        key = int(1000 * float(np.sqrt(np.mean(wav**2))))
        vecs = np.stack([np.random.default_rng([key, w]).standard_normal(8) for w in range(len(starts))])
        vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        utt = vecs.mean(0)
        return utt / np.linalg.norm(utt), vecs, starts, starts + self.window


def test_teacher_crop_mapping(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(4000)).astype(np.float32), RATE)
    cache = build_cache([str(path)], FakeTeacher(), progress=False)
    cache = TeacherCache.load(cache.save(tmp_path / "t.npz"))
    lo, hi = cache.offsets[0], cache.offsets[1]
    windows, starts = cache.windows[lo:hi], cache.starts[lo:hi]
    assert len(windows) == 4 and list(starts) == [0, 800, 1600, 2400]
    seg = data.Segment
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    # windows are weighted by the fraction of them inside the crop
    assert np.allclose(
        cache.target([seg(str(path), 800, 2400)]), unit(0.5 * windows[0] + windows[1] + 0.5 * windows[2])
    )
    expected = 0.5 * windows[0] + windows[1] + windows[2] + 0.5 * windows[3]
    assert np.allclose(cache.target([seg(str(path), 800, 3200)]), expected / np.linalg.norm(expected), atol=1e-6)
    # a joined crop counts each part by its length
    mixed = cache.target([seg(str(path), 0, 1600), seg(str(path), 2400, 4000)])
    expected = unit(unit(windows[0] + 0.5 * windows[1]) + unit(0.5 * windows[2] + windows[3]))
    assert np.allclose(mixed, expected, atol=1e-6)
    assert np.allclose(cache.embedding(str(path)), cache.utterance[0])
    plain = cache.target([seg(str(path), 800, 3200)])
    cache.centre()
    assert np.allclose(cache.target([seg(str(path), 800, 3200)]), unit(plain - cache.utterance.mean(0)), atol=1e-6)
    with pytest.raises(ConfigError):
        cache.target([seg("nowhere.wav", 0, 10)])
    # reusing an existing cache embeds nothing again
    again = build_cache([str(path)], teacher=object(), existing=cache, progress=False)
    assert np.array_equal(again.windows, cache.windows)


# ----------------------------------------------------------------------------- data


def test_scan_splits_trials_and_sampler(tmp_path):
    for spk, n in (("a", 3), ("b", 1), ("c", 2)):
        for i in range(n):
            (tmp_path / "wav" / spk / "s1").mkdir(parents=True, exist_ok=True)
            (tmp_path / "wav" / spk / "s1" / f"{i}.flac").write_bytes(b"")
    (tmp_path / "wav" / "stray.flac").write_bytes(b"")
    utts = data.scan(tmp_path / "wav")
    assert [u.key for u in utts][:2] == ["a/s1/0.flac", "a/s1/1.flac"] and len(utts) == 6
    (tmp_path / "splits.csv").write_text("speaker,split\na,train\nb,dev\nc,train\n")
    assert {u.speaker for u in data.select_split(utts, tmp_path / "splits.csv", "train")} == {"a", "c"}
    (tmp_path / "trials.txt").write_text("1 a/s1/0.flac a/s1/1.flac\n0 a/s1/0.flac b/s1/0.flac\n")
    assert data.read_trials(tmp_path / "trials.txt")[1] == data.Trial(0, "a/s1/0.flac", "b/s1/0.flac")
    (tmp_path / "bad.txt").write_text("yes a b\n")
    with pytest.raises(ConfigError):
        data.read_trials(tmp_path / "bad.txt")

    labels = [0] * 50 + [1] * 2 + [2] * 2 + [-1] * 10
    sampler = data.BalancedBatchSampler(labels, 8, 200, per_speaker=2, unlabeled=2, seed=3)
    batches = list(sampler)
    assert len(batches) == 200 and all(len(b) == 8 for b in batches)
    counts = np.bincount([labels[i] + 1 for b in batches for i, _ in b])
    assert counts[0] == 400  # unlabelled: 2 per batch
    assert counts[1:].min() > 0.8 * counts[1:].max()  # speakers uniform despite 50 vs 2 clips
    assert list(sampler) == batches  # seeded
    sampler.set_epoch(1)
    assert list(sampler) != batches
    # two ranks split one global batch: together they hold batch_size * world distinct crops
    ranks = [
        data.BalancedBatchSampler(labels, 5, 3, per_speaker=2, unlabeled=1, seed=3, rank=r, world_size=2)
        for r in (0, 1)
    ]
    for b in range(3):
        both = ranks[0].batch(b) + ranks[1].batch(b)
        assert len(both) == 10 and len({seed for _, seed in both}) == 10
        assert sum(labels[i] == -1 for i, _ in both) == 2 and len(ranks[0].batch(b)) == 5


def test_sampler_draws_one_crop_length_per_batch(tmp_path):
    labels = [0, 0, 1, 1, 2, 2, data.UNLABELED]
    fixed = data.BalancedBatchSampler(labels, 5, 4, per_speaker=2, unlabeled=1, seed=3)
    ranged = data.BalancedBatchSampler(labels, 5, 4, per_speaker=2, unlabeled=1, seed=3, crop_range=(16000, 32000))
    lengths = set()
    for number in range(4):
        a, b = fixed.batch(number), ranged.batch(number)
        assert [x[:2] for x in b] == a  # the same clips and seeds as without a range
        assert len({x[2] for x in b}) == 1 and 16000 <= b[0][2] <= 32000
        lengths.add(b[0][2])
    assert len(lengths) > 1
    path = tmp_path / "a.wav"
    sf.write(path, np.zeros(3 * RATE, np.float32), RATE)
    dataset = data.CropDataset([data.Clip(str(path), 0)], 2.0)
    assert dataset[(0, 1)][0].shape == (2 * RATE,) and dataset[(0, 1, 12345)][0].shape == (12345,)


def test_crops_join_short_clips(tmp_path):
    paths = []
    for i, seconds in enumerate((0.5, 0.3, 2.0)):
        path = tmp_path / f"{i}.wav"
        sf.write(path, np.full(int(seconds * RATE), 0.1 * (i + 1), np.float32), RATE)
        paths.append(str(path))
    clips = [data.Clip(paths[0], 0), data.Clip(paths[1], 0), data.Clip(paths[2], 1)]
    dataset = data.CropDataset(clips, 1.0, target=lambda segs: np.array([len(segs)], np.float32), target_dim=1)
    wav, label, target, weight, clean = dataset[(0, 7)]
    assert wav.shape == (RATE,) and wav.dtype == torch.float32 and label == 0
    assert set(np.round(wav.numpy().astype(float), 3).tolist()) == {0.1, 0.2}  # joined with the other clip of speaker 0
    assert target.item() >= 2 and weight == 1.0
    assert torch.equal(dataset[(0, 7)][0], wav) and not torch.equal(dataset[(0, 8)][0], wav)
    repeat = data.CropDataset(clips, 1.0, short="repeat")
    assert set(np.round(repeat[(0, 7)][0].numpy().astype(float), 3).tolist()) == {0.1}
    segments = data._clip_segments([data.Segment("a", 0, 10), data.Segment("b", 5, 25)], 8, 20)
    assert segments == [data.Segment("a", 8, 10), data.Segment("b", 5, 15)]


# ----------------------------------------------------------------------------- config


def _write(path, text):
    path.write_text(text)
    return path


def test_bad_configs_raise_config_error(tmp_path):
    (tmp_path / "wav").mkdir()
    root = tmp_path / "wav"
    good = f"data: {{root: {root}}}\n"
    assert train_config.load_config(_write(tmp_path / "ok.yaml", good)).data.root == str(root)
    cases = {
        "unknown key": good + "epochs: 3\nepoch: 3\n",
        "unknown nested key": good + "loss: {margn: 0.2}\n",
        "wrong type": good + "batch_size: many\n",
        "bool for int": good + "epochs: true\n",
        "wrong tuple": good + "loss: {margin_warmup: [1]}\n",
        "missing file": good.replace(str(root), str(tmp_path / "nope")),
        "missing trials": good + f"data: {{root: {root}, trials: {tmp_path}/none.txt}}\n",
        "bad choice": good + "optim: {name: adam_w}\n",
        "no teacher": good + "loss: {distill_weight: 1.0}\n",
        "not a mapping": "- 1\n",
        "bad yaml": "data: [\n",
        "negative": good + "max_minutes: -1\n",
        "no centres": good + "loss: {subcenters: 0}\n",
    }
    for _name, text in cases.items():
        with pytest.raises(ConfigError):
            train_config.load_config(_write(tmp_path / "bad.yaml", text))
    with pytest.raises(ConfigError):
        train_config.load_config(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError):
        train_config.load_config(_write(tmp_path / "ok.yaml", good), ["epochs=zero"])
    assert (
        train_config.load_config(tmp_path / "ok.yaml", ["loss.margin=0.3", "transform={subsets: 2}"]).transform.subsets
        == 2
    )


def test_init_from_continues_a_transformed_model_and_refits_its_filterbank(tmp_path):
    import lightsv
    from lightsv import transform

    (tmp_path / "wav").mkdir()
    model = lightsv.build_model("amcrn_small")
    transform.apply(model, subsets=2)
    path = lightsv.save_model(model, tmp_path / "m.pt", training_config={"features": {"n_mels": 80}})
    base = {"init_from": str(path), "data": {"root": str(tmp_path / "wav")}}

    config = train_config.config_from_dict(base)
    assert (config.transform.subsets, config.transform.share) == (2, False)  # carried by the checkpoint
    built = train_config.build(config)
    assert built.tuners == model.tuners  # not wrapped a second time
    assert built.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(built.state_dict()[k], v) for k, v in model.state_dict().items())

    with pytest.raises(ConfigError, match="features.high_freq differ.*refit_features"):
        train_config.config_from_dict({**base, "features": {"high_freq": -400.0}})
    refit = train_config.config_from_dict({**base, "features": {"high_freq": -400.0}, "refit_features": True})
    assert refit.features.high_freq == -400.0 and refit.features.n_mels == 80
    with pytest.raises(ConfigError, match="carries the transformation module"):
        train_config.config_from_dict({**base, "transform": {"subsets": 4}})
    with pytest.raises(ConfigError, match="features.n_mels"):  # the weights read 80 mels
        train_config.config_from_dict({**base, "features": {"n_mels": 40}, "refit_features": True})

    from lightsv.peft import adapters

    tuned = lightsv.build_model("amcrn_small")
    adapters.apply(tuned, targets="embed")
    with pytest.raises(ConfigError, match="carries tuners"):
        train_config.config_from_dict({**base, "init_from": str(lightsv.save_model(tuned, tmp_path / "t.pt"))})


# ----------------------------------------------------------------------------- training on real speech


@pytest.fixture(scope="module")
def corpus(speech_root, tmp_path_factory):
    """4 train and 2 dev speakers (3 clips each), a trial list, a manifest and a fake-teacher cache."""
    rows = list(csv.DictReader(open(speech_root / "manifest.csv")))
    split = {r["speaker"]: r["split"] for r in csv.DictReader(open(speech_root / "splits.csv"))}
    want, chosen = {"train": 4, "dev": 2}, {}
    for r in rows:
        spk = r["speaker"]
        if r["source"] != "arabic-speech-commands":
            continue
        if spk not in chosen:
            if sum(split[s] == split[spk] for s in chosen) >= want[split[spk]]:
                continue
            chosen[spk] = []
        if len(chosen[spk]) < 3:
            chosen[spk].append(r["path"])
    tmp = tmp_path_factory.mktemp("corpus")
    manifest = ["path,speaker,session,source,license,duration_s"]
    for spk, paths in chosen.items():
        for p in paths:
            dest = tmp / p
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(speech_root / p, dest)
            manifest.append(f"{p},{spk},x,arabic-speech-commands,x,1.0")
    (tmp / "manifest.csv").write_text("\n".join(manifest) + "\n")
    (tmp / "splits.csv").write_text("speaker,split\n" + "".join(f"{s},{split[s]}\n" for s in chosen))
    dev = [s for s in chosen if split[s] == "dev"]
    keys = [p.removeprefix("wav/") for s in dev for p in chosen[s]]
    trials = [f"1 {keys[0]} {keys[1]}", f"1 {keys[3]} {keys[4]}", f"0 {keys[0]} {keys[3]}", f"0 {keys[2]} {keys[5]}"]
    (tmp / "trials.txt").write_text("\n".join(trials) + "\n")
    clips = [str((tmp / p).resolve()) for s in chosen for p in chosen[s] if split[s] == "train"]
    build_cache(clips, FakeTeacher(), progress=False).save(tmp / "teacher.npz")
    return tmp


def _config(corpus, **changes):
    base = {
        "data": {"root": str(corpus / "wav"), "splits": str(corpus / "splits.csv")},
        "model": {
            "name": "amcrn_small",
            "options": {"channels": 32, "embed_dim": 32, "se_channels": 8, "attention_channels": 16},
        },
        "transform": {"subsets": 2},
        "augment": {"noise_prob": 0.5, "reverb_prob": 0.5, "babble_prob": 0.2},
        "loss": {
            "distill_weight": 1.0,
            "teacher_cache": str(corpus / "teacher.npz"),
            "aam_weight": 0.5,
            "margin_warmup": [0.0, 1.0],
        },
        "optim": {"lr": 0.005, "warmup_epochs": 0.5},
        "epochs": 2,
        "steps_per_epoch": 2,
        "batch_size": 8,
        "per_speaker": 2,
        "crop_seconds": 1.5,
        "seed": 5,
        "eval": {"bootstrap": 20},
    }
    for key, value in changes.items():
        train_config._set(base, key, value)
    return train_config.config_from_dict(base)


def _weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_steps_reduce_the_loss(corpus):
    config = _config(corpus)
    torch.manual_seed(0)
    clips, speakers = loop.training_clips(config)
    cache = TeacherCache.load(config.loss.teacher_cache)
    dataset = data.CropDataset(clips, 1.5, target=cache.target, target_dim=cache.dim)
    wav, labels, targets, weights, clean = data.collate([dataset[(i, i)] for i in range(len(clips))])
    model = train_config.build(config)
    objective = loop.Objective(model, AAMSoftmax(32, len(speakers)), DistillLoss(32, cache.dim), 0.5, 1.0)
    feats, _ = Fbank()(wav)
    optimizer = torch.optim.Adam(objective.parameters(), lr=0.01)
    losses = []
    for _ in range(12):
        loss, _ = objective(feats, labels, targets, weights)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_train_is_seeded_resumes_exactly_and_evaluates(corpus, tmp_path):
    first = trainer.train(_config(corpus), tmp_path / "a", progress=False)
    second = trainer.train(_config(corpus), tmp_path / "b", progress=False)
    assert _same(_weights(first.model), _weights(second.model))
    ckpts = sorted((tmp_path / "a" / "checkpoints").glob("step_*.pt"))
    assert [p.name for p in ckpts] == ["step_0000002.pt", "step_0000004.pt"]
    # resume from the end of epoch 1 in a fresh folder: epoch 2 must come out the same
    (tmp_path / "c" / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpts[0], tmp_path / "c" / "checkpoints")
    resumed = trainer.train(_config(corpus), tmp_path / "c", progress=False)
    assert _same(_weights(first.model), _weights(resumed.model))
    other_seed = trainer.train(_config(corpus, seed=6), tmp_path / "d", progress=False)
    assert not _same(_weights(first.model), _weights(other_seed.model))
    # SpecAugment's masks are drawn per batch from the seed: a resumed run draws the same ones
    masked = trainer.train(_config(corpus, **{"augment.spec_prob": 1.0}), tmp_path / "g", progress=False)
    assert not _same(_weights(first.model), _weights(masked.model))
    (tmp_path / "h" / "checkpoints").mkdir(parents=True)
    shutil.copy(tmp_path / "g" / "checkpoints" / "step_0000002.pt", tmp_path / "h" / "checkpoints")
    again = trainer.train(_config(corpus, **{"augment.spec_prob": 1.0}), tmp_path / "h", progress=False)
    assert _same(_weights(masked.model), _weights(again.model))
    # sub-center AAM: the head the trainer keeps has three centres per class
    trainer.train(_config(corpus, **{"loss.subcenters": 3}), tmp_path / "f", progress=False)
    one, three = (torch.load(tmp_path / d / "heads.pt", weights_only=True)["aam"]["weight"] for d in "af")
    assert three.shape == (3 * one.shape[0], one.shape[1])

    # with a trial list: dev model selection, results.json and a model lightsv.load_model reads
    evaluated = trainer.train(
        _config(
            corpus,
            **{"data.trials": str(corpus / "trials.txt"), "data.manifest": str(corpus / "manifest.csv"), "epochs": 1},
        ),
        tmp_path / "e",
        progress=False,
    )
    results = evaluated.results["dev"]
    assert 0 <= results["overall"]["eer"] <= 100 and len(results["overall"]["eer_ci95"]) == 2
    assert set(results["families"]) <= {"arabic"}
    import lightsv

    assert (
        json.loads((tmp_path / "e" / "results.json").read_text())["dev"]["overall"]["eer"] == results["overall"]["eer"]
    )
    model, extra = lightsv.load_model(tmp_path / "e" / "model.pt", return_extra=True)
    assert extra["training_config"]["model"]["name"] == "amcrn_small" and extra["eer"] == results["overall"]["eer"]
    assert trainer.export(tmp_path / "e", tmp_path / "final.pt").exists()
    half = trainer.export(tmp_path / "e", tmp_path / "half.pt", half=True, min_seconds=0.25)
    _, half_extra = lightsv.load_model(half, return_extra=True)
    assert half_extra["min_seconds"] == 0.25 and half_extra["eer"] == extra["eer"]
    with pytest.raises(ConfigError, match="min_seconds must be positive"):
        trainer.export(tmp_path / "e", tmp_path / "bad.pt", min_seconds=0)


def _distributed_worker(rank, world, store, config, out, paths):
    torch.distributed.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        trained = trainer.train(config, out, progress=False)
        torch.save(_weights(trained.model), Path(out) / f"rank{rank}.pt")
        emb = evaluation.extract(trained.model, paths, ctx=distributed.setup("cpu"), batch_seconds=2.0)
        torch.save(emb, Path(out) / f"emb{rank}.pt")
        # a rank that tears gloo down while the other still has its last collective in flight can abort
        # the process ("terminate called without an active exception"): wait for both first
        torch.distributed.barrier()
    finally:
        torch.distributed.destroy_process_group()


def test_two_process_gloo_training_and_extraction(corpus, tmp_path):
    config = _config(corpus, epochs=1, steps_per_epoch=3, batch_size=4)
    paths = sorted(str(p) for p in (corpus / "wav").rglob("*.flac"))
    mp.spawn(
        _distributed_worker,
        args=(2, str(tmp_path / "store"), config, str(tmp_path / "out"), paths),
        nprocs=2,
        join=True,
    )
    ranks = [torch.load(tmp_path / "out" / f"rank{r}.pt") for r in (0, 1)]
    assert _same(*ranks)
    model = train_config.build(config)
    model.load_state_dict(ranks[0])
    single = evaluation.extract(model, paths, batch_seconds=2.0)
    for r in (0, 1):
        emb = torch.load(tmp_path / "out" / f"emb{r}.pt", weights_only=False)
        assert emb.keys() == single.keys()
        assert all(np.allclose(emb[k], single[k], atol=1e-5) for k in single)


# ----------------------------------------------------------------------------- online teacher


def test_online_teacher_reproduces_resemblyzer(speech_clip):
    audio = pytest.importorskip("resemblyzer.audio")
    from lightsv.audio import load
    from lightsv.train.teacher import OnlineTeacher

    wav = load(speech_clip[0])[: 3 * RATE]
    teacher = OnlineTeacher()
    ref = audio.wav_to_mel_spectrogram(audio.normalize_volume(wav, -30, increase_only=True))
    mels = teacher.mels(torch.from_numpy(wav)[None])[0].numpy()
    assert mels.shape == ref.shape and np.allclose(mels, ref, rtol=1e-4, atol=1e-6 * ref.max())
    crop = audio.wav_to_mel_spectrogram(audio.normalize_volume(wav[:25600], -30, increase_only=True))
    with torch.no_grad():
        windows = teacher.encoder(torch.from_numpy(crop[None, :160]))
        # a 3 s crop (300 whole frames): windows at frames 0, 70 and 140, averaged as resemblyzer does
        three = teacher.encoder(torch.from_numpy(np.stack([ref[s : s + 160] for s in (0, 70, 140)])))
    assert torch.allclose(teacher(torch.from_numpy(wav[:25600])[None]), windows, atol=1e-5)
    expected = torch.nn.functional.normalize(three.mean(0, keepdim=True), dim=1)
    assert torch.allclose(teacher(torch.from_numpy(wav)[None]), expected, atol=1e-5)
    # a 1 s clip is zero-padded to one window, as resemblyzer pads it
    short = audio.wav_to_mel_spectrogram(np.pad(audio.normalize_volume(wav[:RATE], -30, increase_only=True), (0, 9600)))
    with torch.no_grad():
        padded = teacher.encoder(torch.from_numpy(short[None, :160]))
    assert torch.allclose(teacher(torch.from_numpy(wav[:RATE])[None]), padded, atol=1e-4)
    # quiet audio is raised to the teacher's level, so only the voice decides the target
    batch = torch.from_numpy(np.stack([0.01 * wav, 0.001 * wav]))
    out = teacher(batch)
    assert torch.allclose(out[0], out[1], atol=1e-4) and out.shape == (2, teacher.dim)
    teacher.centre(batch)
    target = teacher.target(batch)
    assert torch.allclose(target.norm(dim=1), torch.ones(2)) and torch.allclose(teacher.center, out.mean(0))


def test_dataset_keeps_the_clean_crop_for_the_teacher(tmp_path):
    path = tmp_path / "a.wav"
    sf.write(path, (0.1 * np.random.default_rng(0).standard_normal(2 * RATE)).astype(np.float32), RATE)
    shifted = lambda wav, rng: wav + 1.0  # noqa: E731
    dataset = data.CropDataset([data.Clip(str(path), 0)], 1.0, augment=shifted, keep_clean=True)
    wav, _, _, weight, clean = dataset[(0, 3)]
    assert clean.shape == wav.shape and torch.allclose(wav, clean + 1.0) and weight == 0.0
    assert data.CropDataset([data.Clip(str(path), 0)], 1.0)[(0, 3)][4].numel() == 0


def test_training_with_the_online_teacher(corpus, tmp_path, capsys):
    pytest.importorskip("resemblyzer")
    config = _config(
        corpus,
        **{
            "loss.teacher": "online",
            "loss.teacher_cache": None,
            "loss.teacher_center": True,
            "augment.speed_prob": 0.5,
            "epochs": 1,
        },
    )
    import dataclasses

    import yaml

    (tmp_path / "online.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(dataclasses.asdict(config)))))
    assert trainer.main(["teacher", str(tmp_path / "online.yaml")]) == 0  # recipe stage 1: nothing to cache
    assert "no teacher cache to build" in capsys.readouterr().out
    first = trainer.train(config, tmp_path / "a", progress=False)
    entry = first.results["history"][0]
    assert 0.0 < entry["distill"] < 2.0 and not (tmp_path / "a" / "teacher.npz").exists()
    assert _same(_weights(first.model), _weights(trainer.train(config, tmp_path / "b", progress=False).model))
    with pytest.raises(ConfigError, match="loss.teacher"):
        _config(corpus, **{"loss.teacher": "live"})
