"""Enrollment store and identification search from 10 to 1M speakers (synthetic embeddings).

    python benchmarks/scale.py [--sizes 10 1000 10000 100000 1000000]   # writes benchmarks/results/scale.{md,json,png}

Each size gets a fresh SQLite store in a temporary folder, bulk-loaded (``enroll_many``, 50k speakers
per transaction) with one random 256-dim unit vector per speaker, the cost-only stand-in the issue
allows. Then, after the embedding (which costs the same at any size):

* verify: read the speaker's kept mean from SQLite and take the dot product (median of 200);
* identify: ``SpeakerIndex.search`` top-5, exact (matrix product) and through the faiss index, each
  median of 200 queries; the default switches at ``lightsv.search.ANN_MIN``;
* recall@1 of the index against exact search, for queries planted near a random enrolled speaker
  (cosine 0.5 to it, and 0.3, where the exact best is often an impostor by a hair);
* single enrollments: 100 speakers of 3 embeddings each, one durable transaction (fsync) each;
* database size on disk, and the memory of the search state (means + index).

At ``--alternatives-at`` speakers (default 100,000) it also measures the indexes not chosen, on the
same means and queries: faiss HNSW (graph) and IVF-PQ fast scan (inverted lists), recall@1 and
latency, so the choice is on record.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from tqdm import tqdm

from lightsv import search
from lightsv.search import SpeakerIndex
from lightsv.store import EnrollmentStore

RESULTS = Path(__file__).parent / "results"
DIM = 256
CHUNK = 50_000
QUERIES = 200


def unit(rng: np.random.Generator, n: int) -> np.ndarray:
    x = rng.standard_normal((n, DIM), dtype=np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def planted(rng: np.random.Generator, targets: np.ndarray, cosine: float) -> np.ndarray:
    noise = unit(rng, len(targets))
    noise -= (noise * targets).sum(axis=1, keepdims=True) * targets  # orthogonal to the target
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    return (cosine * targets + np.sqrt(1 - cosine**2) * noise).astype(np.float32)


def median_ms(fn, items) -> float:
    times = []
    for item in items:
        start = time.perf_counter()
        fn(item)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def alternatives(matrix: np.ndarray, queries: dict, truth: dict, names: list[str]) -> list[dict]:
    """Recall@1 (after the same exact re-scoring of 128 candidates) and latency of faiss HNSW and IVF-PQ."""
    import faiss

    rows = []

    def measure(label: str, index, build_s: float) -> None:
        for c, qs in queries.items():

            def best(q):
                _, labels = index.search(q[None], search.CANDIDATES)
                cand = labels[0][labels[0] >= 0]
                return names[cand[np.argmax(matrix[cand] @ q)]]

            found = [best(q) for q in qs]
            rows.append(
                {
                    "index": label,
                    "cosine": c,
                    "recall_at_1": float(np.mean([f == t for f, t in zip(found, truth[c], strict=True)])),
                    "ms": median_ms(best, qs),
                    "build_s": build_s,
                }
            )

    for ef in (search.CANDIDATES, 4 * search.CANDIDATES):  # faiss searches with max(efSearch, k)
        start = time.perf_counter()
        if ef == search.CANDIDATES:
            hnsw = faiss.IndexHNSWFlat(DIM, 32, faiss.METRIC_INNER_PRODUCT)
            hnsw.hnsw.efConstruction = 40
            hnsw.add(matrix)
            hnsw_build = time.perf_counter() - start
        hnsw.hnsw.efSearch = ef
        measure(f"HNSW M=32 efSearch={ef}", hnsw, hnsw_build)
    nlist = int(4 * np.sqrt(len(matrix)))
    start = time.perf_counter()
    ivf = faiss.IndexIVFPQFastScan(faiss.IndexFlatIP(DIM), DIM, nlist, DIM // 4, 4, faiss.METRIC_INNER_PRODUCT)
    ivf.train(matrix[: 40 * nlist])
    ivf.add(matrix)
    ivf_build = time.perf_counter() - start
    for nprobe in (16, 64):
        ivf.nprobe = nprobe
        measure(f"IVF{nlist}-PQ fast scan nprobe={nprobe}", ivf, ivf_build)
    return rows


def run(size: int, folder: Path, compare: bool = False) -> dict:
    rng = np.random.default_rng(size)
    path = folder / f"scale_{size}.db"
    row: dict = {"speakers": size}
    with EnrollmentStore(path, model_id="sha256:synthetic", dim=DIM) as store:
        start = time.perf_counter()
        for first in tqdm(range(0, size, CHUNK), desc=f"load {size:,}", leave=False, disable=None):
            n = min(CHUNK, size - first)
            vectors = unit(rng, n)
            store.enroll_many((f"spk{first + i:07d}", vectors[i : i + 1]) for i in range(n))
        row["bulk_load_s"] = time.perf_counter() - start
        row["bulk_speakers_per_s"] = size / row["bulk_load_s"]

    with EnrollmentStore(path, model_id="sha256:synthetic", dim=DIM) as store:
        names = [f"spk{i:07d}" for i in rng.integers(0, size, QUERIES)]
        query = unit(rng, 1)[0]
        row["verify_ms"] = median_ms(lambda name: float(store.mean(name) @ query), names)

        start = time.perf_counter()
        exact = SpeakerIndex(store, ann_min=size + 1, path=folder / "none.npz")
        exact.sync()
        row["load_means_s"] = time.perf_counter() - start
        row["means_mb"] = exact.matrix.nbytes / 2**20
        targets = rng.integers(0, size, QUERIES)
        queries = {c: planted(rng, exact.matrix[targets], c) for c in (0.5, 0.3)}
        row["identify_exact_ms"] = median_ms(lambda q: exact.search(q, 5), queries[0.5])
        truth = {c: [exact.search(q, 1)[0][0] for q in qs] for c, qs in queries.items()}
        if compare and search.faiss_available():
            row["alternatives"] = alternatives(exact.matrix, queries, truth, exact.names)
        row["exact_top1_is_target_0.5"] = float(
            np.mean([t == exact.names[i] for t, i in zip(truth[0.5], targets, strict=True)])
        )

        if size >= 1000 and search.faiss_available():
            start = time.perf_counter()
            ann = SpeakerIndex(store, ann_min=0, path=folder / f"scale_{size}.ann.npz")
            ann.sync()
            row["build_index_s"] = time.perf_counter() - start
            row["index_mb"] = ann._ann_ids.nbytes / 2**20 + os.path.getsize(folder / f"scale_{size}.ann.npz") / 2**20
            row["identify_ann_ms"] = median_ms(lambda q: ann.search(q, 5), queries[0.5])
            for c, qs in queries.items():
                row[f"recall_at_1_{c}"] = float(
                    np.mean([ann.search(q, 1)[0][0] == t for q, t in zip(qs, truth[c], strict=True)])
                )
            start = time.perf_counter()
            reopened = SpeakerIndex(store, ann_min=0, path=folder / f"scale_{size}.ann.npz")
            reopened.sync()
            row["reopen_with_saved_index_s"] = time.perf_counter() - start
            ann = reopened = None  # free the means they hold before the next size
        exact = None

        extra = unit(rng, 300)
        start = time.perf_counter()
        for i in range(100):
            store.enroll(f"new{i:03d}", extra[3 * i : 3 * i + 3])
        row["single_enrollments_per_s"] = 100 / (time.perf_counter() - start)
    row["db_mb"] = sum(p.stat().st_size for p in folder.glob(f"scale_{size}.db*")) / 2**20
    for p in folder.glob(f"scale_{size}*"):
        p.unlink()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--tmp", default=None, help="folder for the temporary stores (default: system temp)")
    parser.add_argument("--alternatives-at", type=int, default=100_000, help="size at which HNSW and IVF are measured")
    args = parser.parse_args()
    rows = []
    args.load_at_start = os.getloadavg()[0]  # the machine is shared: say how busy it was
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        for size in args.sizes:
            rows.append(run(size, Path(tmp), compare=size == args.alternatives_at))
            print(json.dumps(rows[-1]), flush=True)
    write(rows, args)


def write(rows: list[dict], args) -> None:
    meta = {
        "command": "python benchmarks/scale.py --sizes "
        + " ".join(map(str, args.sizes))
        + f" --alternatives-at {args.alternatives_at}",
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, load average {args.load_at_start:.1f} at the start "
        f"and {os.getloadavg()[0]:.1f} at the end",
        "omp_threads": os.environ.get("OMP_NUM_THREADS", "default"),
        "ann_min": search.ANN_MIN,
        "candidates": search.CANDIDATES,
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    f = lambda row, key, spec: "-" if key not in row else format(row[key], spec)  # noqa: E731
    lines = [
        "# Enrollment store and identification at scale (synthetic 256-dim unit embeddings)",
        "",
        f"Written by `{meta['command']}` on {meta['date']} ({meta['machine']}, OMP_NUM_THREADS="
        f"{meta['omp_threads']}). Latencies are medians after the embedding; the default search is exact "
        f"below {search.ANN_MIN:,} speakers and the faiss index (PQ fast scan, {search.CANDIDATES} candidates "
        "re-scored exactly) from there. Recall@1: the index's best equals exact search's best, for queries at "
        "cosine 0.5 / 0.3 to a random enrolled speaker.",
        "",
        "| speakers | verify ms | identify exact ms | identify index ms | recall@1 (0.5) | recall@1 (0.3) "
        "| bulk load spk/s | single enroll /s | db MB | means MB | index MB | load means s | build index s "
        "| reopen with saved index s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['speakers']:,} | {f(r, 'verify_ms', '.3f')} | {f(r, 'identify_exact_ms', '.3f')} "
            f"| {f(r, 'identify_ann_ms', '.3f')} | {f(r, 'recall_at_1_0.5', '.3f')} | {f(r, 'recall_at_1_0.3', '.3f')} "
            f"| {f(r, 'bulk_speakers_per_s', ',.0f')} | {f(r, 'single_enrollments_per_s', '.0f')} "
            f"| {f(r, 'db_mb', ',.1f')} "
            f"| {f(r, 'means_mb', ',.1f')} | {f(r, 'index_mb', ',.1f')} | {f(r, 'load_means_s', '.2f')} "
            f"| {f(r, 'build_index_s', '.2f')} | {f(r, 'reopen_with_saved_index_s', '.2f')} |"
        )
    for r in rows:
        if "alternatives" in r:
            lines += [
                "",
                f"Indexes not chosen, at {r['speakers']:,} speakers (same means and queries; the "
                f"{search.CANDIDATES} candidates each returns re-scored exactly, as for the chosen one):",
                "",
                "| index | query cosine | recall@1 | ms | build s |",
                "|---|---|---|---|---|",
            ]
            lines += [
                f"| {a['index']} | {a['cosine']} | {a['recall_at_1']:.3f} | {a['ms']:.3f} | {a['build_s']:.1f} |"
                for a in r["alternatives"]
            ]
    (RESULTS / "scale.md").write_text("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    sizes = [r["speakers"] for r in rows]
    ax.loglog(sizes, [r["verify_ms"] for r in rows], "o-", label="verify")
    ax.loglog(sizes, [r["identify_exact_ms"] for r in rows], "o-", label="identify, exact")
    ann = [r for r in rows if "identify_ann_ms" in r]
    ax.loglog([r["speakers"] for r in ann], [r["identify_ann_ms"] for r in ann], "o-", label="identify, faiss index")
    ax.axhline(10, color="grey", linestyle=":", label="10 ms goal")
    ax.set_xlabel("enrolled speakers")
    ax.set_ylabel("median ms per query (after the embedding)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "scale.png", dpi=120)


if __name__ == "__main__":
    main()
