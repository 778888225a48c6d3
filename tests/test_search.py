"""lightsv.search: exact and faiss-backed identification over a store, kept in step with it."""

import numpy as np
import pytest

from lightsv.search import SpeakerIndex
from lightsv.store import EnrollmentStore

DIM = 32


def unit(n, seed):
    x = np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


@pytest.fixture
def store(tmp_path):
    with EnrollmentStore(tmp_path / "s.db", model_id="sha256:test", dim=DIM) as s:
        s.enroll_many((f"spk{i:03d}", v[None]) for i, v in enumerate(unit(300, 0)))
        yield s


def test_exact_search_ranks_by_cosine_and_follows_the_store(store):
    index = SpeakerIndex(store, ann_min=10**9)
    means = unit(300, 0)
    query = means[7] + 0.1 * unit(1, 1)[0]
    found = index.search(query, k=3)
    order = np.argsort(-(means @ query))[:3]
    assert [n for n, _ in found] == [f"spk{i:03d}" for i in order]
    assert [s for _, s in found] == pytest.approx((means @ query)[order].tolist(), abs=1e-5)
    # Another handle on the same file changes the store; the index replays the change log.
    with EnrollmentStore(store.path, model_id="sha256:test") as other:
        other.delete("spk007")
        other.enroll("new", means[7:8])
    assert index.search(query, k=1)[0][0] == "new" and "spk007" not in [n for n, _ in index.search(query, k=300)]
    assert len(index) == 300


def test_faiss_index_agrees_with_exact_search_and_is_saved_and_reused(store, tmp_path):
    pytest.importorskip("faiss")
    means = unit(300, 0)
    index = SpeakerIndex(store, ann_min=100)
    index.sync()
    assert index.uses_ann and (tmp_path / "s.db.ann.npz").is_file()
    queries = 0.6 * means[:50] + 0.8 * unit(50, 2)
    assert [index.search(q, 1)[0][0] for q in queries] == [index.exact(q, 1)[0][0] for q in queries]
    store.delete("spk010")
    store.enroll("spk010", -means[10:11])  # spk010 comes back far from where it was
    assert "spk010" not in [n for n, _ in index.search(means[10], k=5)]
    assert index.search(-means[10], k=1)[0][0] == "spk010"
    reopened = SpeakerIndex(store, ann_min=100)
    reopened.sync()
    assert reopened.uses_ann and reopened.search(-means[10], k=1)[0][0] == "spk010"
    (tmp_path / "s.db.ann.npz").write_bytes(b"garbage")  # unreadable: rebuilt from SQLite
    rebuilt = SpeakerIndex(store, ann_min=100)
    assert rebuilt.search(means[3], k=1)[0][0] == "spk003"


def test_an_empty_store_finds_nobody(tmp_path):
    with EnrollmentStore(tmp_path / "e.db", model_id="sha256:test", dim=DIM) as s:
        assert SpeakerIndex(s).search(unit(1, 0)[0]) == []
