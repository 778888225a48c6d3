"""Identification search: the enrolled speakers closest to an embedding, exact or approximate.

    index = SpeakerIndex(store)          # loads the store's speaker means (SQLite stays the truth)
    index.search(embedding, k=5)         # [(name, cosine), ...], best first; catches up with the store first

Below ``ann_min`` speakers the search is one matrix product over the means in memory: exact, and at
that size faster than any index. From ``ann_min`` speakers on (and when faiss is installed:
``pip install lightsv[ann]``) candidates come from a faiss product-quantisation index scanned with
SIMD ("fast scan", 4-bit codes, 32 bytes per speaker), and the ``candidates`` best of them are
re-scored exactly against the means, so the scores returned are exact cosines and only the recall
is approximate. Why this index and not a graph (HNSW) or inverted lists (IVF): on random 256-dim
unit vectors, the worst case for any index, at 100k speakers faiss's HNSW (M=32) found the exact best
for 89 % of queries at efSearch 256 (2.0 ms) and needed efSearch 1024 (7.7 ms) for 99.5 %, IVF-PQ
found it for 63 % at nprobe 64, and PQ fast scan with re-scoring for all of them in 0.46 ms
(``benchmarks/results/scale.md``). Its cost is a scan of every code, linear in the speakers: 5.6 ms
at 1M on one thread of the benchmark machine.

The index follows the store: every enrollment and deletion is logged in the store's ``changes``
table, and before each search the index replays the changes since the generation it was built at
(an updated speaker's old code is dropped from the results, not from the index, until a rebuild).
For a file store the built index is kept beside it (``<db>.ann.npz``) and reused while it matches
the store; a missing, unreadable or foreign one is rebuilt from SQLite.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import numpy as np

from lightsv.store import EnrollmentStore

#: Speakers from which search goes through the approximate index (measured: benchmarks/results/scale.md).
ANN_MIN = 10_000
#: Candidates the approximate index proposes for exact re-scoring.
CANDIDATES = 256
#: Rebuild the approximate index when this fraction of its entries is out of date.
STALE_FRACTION = 0.2
#: Sub-quantisers of the PQ code: 4 bits each, so dim / PQ_DIMS_PER_CODE x 4 bits per speaker.
PQ_DIMS_PER_CODE = 4
TRAIN_SAMPLE = 65_536


def faiss_available() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


class SpeakerIndex:
    """The store's speaker means in memory, searchable by cosine; see the module docstring."""

    def __init__(
        self,
        store: EnrollmentStore,
        *,
        ann_min: int = ANN_MIN,
        candidates: int = CANDIDATES,
        path: str | os.PathLike | None = None,
    ):
        self.store, self.ann_min, self.candidates = store, int(ann_min), int(candidates)
        self.path = Path(path) if path is not None else _default_path(store)
        self.generation = -1
        self.ids = np.zeros(0, dtype=np.int64)
        self.names: list[str] = []
        self._rows = np.zeros((0, store.dim), dtype=np.float32)  # capacity grows by doubling
        self._row_by_id = np.zeros(0, dtype=np.int64)  # speaker id -> row of `matrix`, -1 for none
        self._ann: Any = None  # a faiss index; faiss is optional, so untyped here
        self._ann_ids = np.zeros(0, dtype=np.int64)  # faiss label -> speaker id, -1 once out of date
        self._stale = 0

    # ------------------------------------------------------------------ state

    def __len__(self) -> int:
        self.sync()
        return len(self.names)

    @property
    def matrix(self) -> np.ndarray:
        """The means [N, D], row i for ``names[i]``."""
        return self._rows[: len(self.names)]

    @property
    def uses_ann(self) -> bool:
        return self._ann is not None

    def row_of(self, speaker: int) -> int | None:
        """The row of ``matrix`` holding a speaker's mean, None when the speaker is not (or no longer) there."""
        row = int(self._row_by_id[speaker]) if 0 <= speaker < len(self._row_by_id) else -1
        return None if row < 0 else row

    def sync(self) -> None:
        """Catch up with the store: load it on first use, then replay changes since the last sync."""
        if self.generation < 0:
            self._load()
            return
        if self.store.generation == self.generation:  # one indexed lookup; the common case
            return
        current, changed = self.store.changes_since(self.generation)
        for speaker, name, mean in changed:
            self._apply(speaker, name, mean)
        self.generation = current
        self._ann_in_step(rebuild=False)

    def _load(self) -> None:
        self.generation = self.store.generation
        ids, names, matrix = self.store.means()
        self.ids, self.names, self._rows = ids, names, matrix
        self._row_by_id = np.full(int(ids.max()) + 1 if len(ids) else 0, -1, dtype=np.int64)
        self._row_by_id[ids] = np.arange(len(ids))
        if len(names) >= self.ann_min and faiss_available():
            if not self._read_ann():
                self._build_ann()
                self._write_ann()

    def _apply(self, speaker: int, name: str | None, mean: np.ndarray | None) -> None:
        row = self.row_of(speaker)
        if row is not None:
            self._retire(speaker)
        if name is None or mean is None:  # deleted: move the last row into its place
            if row is not None:
                last = len(self.names) - 1
                if row != last:
                    self.ids[row], self.names[row], self._rows[row] = self.ids[last], self.names[last], self._rows[last]
                    self._row_by_id[self.ids[row]] = row
                self._row_by_id[speaker] = -1
                self.ids = self.ids[:last]
                self.names.pop()
            return
        if row is None:
            row = len(self.names)
            if row == len(self._rows):
                grown = np.zeros((max(16, 2 * row), self._rows.shape[1]), dtype=np.float32)
                grown[:row] = self._rows[:row]
                self._rows = grown
            self.ids = np.append(self.ids, speaker)
            self.names.append(name)
            self._rows[row] = mean
            if speaker >= len(self._row_by_id):
                ids = np.full(max(16, 2 * (speaker + 1)), -1, dtype=np.int64)
                ids[: len(self._row_by_id)] = self._row_by_id
                self._row_by_id = ids
            self._row_by_id[speaker] = row
        else:
            self.names[row], self._rows[row] = name, mean
        if self._ann is not None:
            self._ann.add(mean[None])
            self._ann_ids = np.append(self._ann_ids, speaker)

    def _retire(self, speaker: int) -> None:
        if self._ann is not None:
            hits = np.flatnonzero(self._ann_ids == speaker)
            self._ann_ids[hits] = -1
            self._stale += len(hits)

    def _ann_in_step(self, rebuild: bool) -> None:
        wanted = len(self.names) >= self.ann_min and faiss_available()
        if not wanted:
            self._ann = None
            return
        if rebuild or self._ann is None or self._stale > STALE_FRACTION * max(1, len(self._ann_ids)):
            self._build_ann()
        self._write_ann()

    # ------------------------------------------------------------------ search

    def search(self, embedding: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The ``k`` enrolled speakers whose means have the highest cosine with ``embedding``, best first."""
        self.sync()
        if not self.names or k < 1:
            return []
        query = np.ascontiguousarray(embedding, dtype=np.float32).reshape(-1)
        if self._ann is None:
            scores = self.matrix @ query
            top = _top(scores, k)
            return [(self.names[i], float(scores[i])) for i in top]
        _, labels = self._ann.search(query[None], max(self.candidates, 4 * k))
        speakers = self._ann_ids[labels[0][labels[0] >= 0]]
        rows = np.unique(self._row_by_id[speakers[speakers >= 0]])  # one array lookup, not a Python loop
        scores = self.matrix[rows] @ query
        top = _top(scores, k)
        return [(self.names[rows[i]], float(scores[i])) for i in top]

    def exact(self, embedding: np.ndarray, k: int = 5) -> list[tuple[str, float]]:
        """The same search over every mean, whatever the size: the reference for the index's recall."""
        self.sync()
        scores = self.matrix @ np.asarray(embedding, dtype=np.float32).reshape(-1)
        return [(self.names[i], float(scores[i])) for i in _top(scores, k)]

    # ------------------------------------------------------------------ the approximate index

    def _build_ann(self) -> None:
        import faiss

        dim = self.matrix.shape[1]
        codes = max(1, dim // PQ_DIMS_PER_CODE)
        index = faiss.IndexPQFastScan(dim, codes, 4, faiss.METRIC_INNER_PRODUCT)
        sample = self.matrix
        if len(sample) > TRAIN_SAMPLE:
            pick = np.random.default_rng(0).choice(len(sample), TRAIN_SAMPLE, replace=False)
            sample = self.matrix[np.sort(pick)]
        index.train(sample)
        index.add(self.matrix)
        self._ann, self._ann_ids, self._stale = index, self.ids.copy(), 0

    def _write_ann(self) -> None:
        if self.path is None or self._ann is None:
            return
        import faiss

        buffer = io.BytesIO()
        np.savez(
            buffer,
            index=faiss.serialize_index(self._ann),
            ids=self._ann_ids,
            generation=np.int64(self.generation),
            model_id=np.array(self.store.model_id),
            store_created=np.array(self.store.created),
        )
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")  # writers in two processes do not collide
        try:
            tmp.write_bytes(buffer.getvalue())
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a read-only folder: the index is rebuilt next time instead

    def _read_ann(self) -> bool:
        """Load the saved index if it belongs to this store and is not ahead of it; replay what it missed."""
        if self.path is None or not self.path.is_file():
            return False
        import faiss

        try:
            with np.load(self.path) as saved:
                if str(saved["model_id"]) != self.store.model_id or str(saved["store_created"]) != self.store.created:
                    return False
                generation = int(saved["generation"])
                index = faiss.deserialize_index(saved["index"])
                ids = saved["ids"].astype(np.int64)
        except Exception:  # unreadable or from another version: SQLite has everything to rebuild it
            return False
        if generation > self.generation or index.ntotal != len(ids):
            return False
        self._ann, self._ann_ids = index, ids
        self._stale = int(np.count_nonzero(ids < 0))
        # Speakers changed since the index was saved: their old entries no longer count, new ones go in.
        _, changed = self.store.changes_since(generation)
        for speaker, _, mean in changed:
            self._retire(speaker)
            if mean is not None:
                self._ann.add(mean[None])
                self._ann_ids = np.append(self._ann_ids, speaker)
        if changed:
            self._ann_in_step(rebuild=False)
        return True


def _top(scores: np.ndarray, k: int) -> np.ndarray:
    k = min(k, len(scores))
    top = np.argpartition(-scores, k - 1)[:k]
    return top[np.argsort(-scores[top], kind="stable")]


def _default_path(store: EnrollmentStore) -> Path | None:
    return None if str(store.path) == ":memory:" else store.path.with_name(store.path.name + ".ann.npz")
