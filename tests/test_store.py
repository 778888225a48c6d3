import hashlib
import os
import signal
import sqlite3
import subprocess
import sys
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import pytest

import lightsv.store
from lightsv.errors import StoreError, UnknownSpeakerError
from lightsv.store import EnrollmentStore

MODEL, DIM = "sha256:" + "a" * 64, 8

# Child processes import lightsv.store without running lightsv/__init__, which loads torch (seconds each).
PRELUDE = f"""
import sys, types
pkg = types.ModuleType("lightsv"); pkg.__path__ = [{str(Path(lightsv.store.__file__).parent)!r}]
sys.modules["lightsv"] = pkg
import numpy as np
from lightsv.store import EnrollmentStore
"""


def vectors(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def store_path(tmp_path) -> Path:
    """A closed store holding alice (3 rows), so its main file is complete and stable."""
    path = tmp_path / "enroll.db"
    with EnrollmentStore(path, model_id=MODEL, dim=DIM) as store:
        store.enroll("alice", vectors(3))
    return path


def test_round_trip_append_list_delete_and_reopen(tmp_path):
    path = tmp_path / "enroll.db"
    first, second, bob = vectors(3, 1), vectors(2, 2), vectors(4, 3)
    with EnrollmentStore(path, model_id=MODEL, dim=DIM) as store:
        assert store.enroll("alice", first).total == 3
        assert store.enroll("bob", bob.astype(np.float64), sources=[f"clip{i}.wav" for i in range(4)]).total == 4
        assert store.enroll("alice", second).total == 5
        got = store.embeddings("alice")
        assert got.dtype == np.float32 and got.shape == (5, DIM)
        np.testing.assert_array_equal(got, np.concatenate([first, second]))
        assert "alice" in store and "carol" not in store and len(store) == 2
    with EnrollmentStore(path, model_id=MODEL, dim=DIM) as store:
        np.testing.assert_array_equal(store.embeddings("bob"), bob)
        listed = store.speakers()
        assert [(s["name"], s["count"]) for s in listed] == [("alice", 5), ("bob", 4)]
        for speaker in listed:
            created, updated = (datetime.fromisoformat(speaker[k]) for k in ("created", "updated"))
            assert created.utcoffset() == timedelta(0) and created <= updated
        assert store.delete("alice") == 5
        assert [s["name"] for s in store.speakers()] == ["bob"]
        with pytest.raises(UnknownSpeakerError, match="'alice'"):
            store.embeddings("alice")
        with pytest.raises(UnknownSpeakerError, match="'alice'"):
            store.delete("alice")
    with EnrollmentStore(path, model_id=MODEL) as store:
        assert store.dim == DIM and len(store) == 1 and store.enroll("alice", first).total == 3


def test_open_store_is_durable_wal_with_full_sync(store_path):
    # WAL lets readers run beside an enroller; synchronous=FULL (2), not NORMAL (1), keeps the last
    # commits through a power loss. A file opened again gets the same settings.
    for _ in range(2):
        with EnrollmentStore(store_path, model_id=MODEL) as store:
            conn = store._conn
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
            assert conn.execute("PRAGMA synchronous").fetchone()[0] == 2
            assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_reenroll_keeps_created_and_moves_updated(store_path):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        before = store.speakers()[0]
        store.enroll("alice", vectors(1))
        after = store.speakers()[0]
    assert after["created"] == before["created"] and after["updated"] >= before["updated"]
    assert after["count"] == 4


def test_other_model_or_dim_is_refused_and_store_untouched(store_path):
    before = digest(store_path)
    with pytest.raises(StoreError, match=f"made by model '{MODEL}'.*cannot be mixed"):
        EnrollmentStore(store_path, model_id="sha256:other", dim=DIM)
    with pytest.raises(StoreError, match="holds 8-dim embeddings, not 16"):
        EnrollmentStore(store_path, model_id=MODEL, dim=16)
    assert digest(store_path) == before
    # model_id=None is for tools that list and delete: any store opens, but nothing can be added.
    with EnrollmentStore(store_path) as store:
        assert store.model_id == MODEL and store.speakers()[0]["count"] == 3
        with pytest.raises(StoreError, match="opened without a model_id"):
            store.enroll("bob", vectors(1))
    assert digest(store_path) == before


@pytest.mark.parametrize("name", ["", "  alice", "alice\n", "a\tb", 3, None, b"alice"])
def test_bad_speaker_names_are_refused(store_path, name):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        with pytest.raises(StoreError) as err:
            store.enroll(name, vectors(1))
        assert isinstance(err.value, ValueError)
        assert [s["name"] for s in store.speakers()] == ["alice"]


@pytest.mark.parametrize(
    "embeddings, match",
    [
        (vectors(1)[0], r"shape \[N >= 1, 8\]"),  # 1-D: one vector without the batch axis
        (vectors(2)[None], r"shape \[N >= 1, 8\]"),
        (np.zeros((2, DIM + 1), np.float32), r"shape \[N >= 1, 8\]"),
        (np.zeros((0, DIM), np.float32), r"shape \[N >= 1, 8\]"),
        (np.where(np.eye(2, DIM, dtype=bool), np.nan, 0.0), "NaN or infinite values"),
        (np.full((2, DIM), np.inf), "NaN or infinite values"),
        (np.full((1, DIM), 1e300), "NaN or infinite values"),  # overflows float32
        (np.array([["x"] * DIM]), "real numbers"),
    ],
)
def test_bad_embeddings_are_refused_and_nothing_is_written(store_path, embeddings, match):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        with pytest.raises(StoreError, match=match):
            store.enroll("alice", embeddings)
        with pytest.raises(StoreError, match="sources must be 2 strings"):
            store.enroll("alice", vectors(2), sources=["only-one.wav"])
        assert store.speakers()[0]["count"] == 3
        np.testing.assert_array_equal(store.embeddings("alice"), vectors(3))


def test_missing_directory_and_closed_paths(tmp_path, store_path):
    with pytest.raises(StoreError, match="is a directory"):
        EnrollmentStore(tmp_path, model_id=MODEL, dim=DIM)
    with pytest.raises(StoreError, match="parent directory .* does not exist"):
        EnrollmentStore(tmp_path / "nope" / "enroll.db", model_id=MODEL, dim=DIM)
    with pytest.raises(StoreError, match="no enrollment database"):
        EnrollmentStore(tmp_path / "absent.db")
    assert not (tmp_path / "absent.db").exists()
    store = EnrollmentStore(store_path, model_id=MODEL)
    store.close()
    with pytest.raises(StoreError, match="closed"):
        store.speakers()


def test_empty_file_is_initialised_only_when_asked_to_create(tmp_path):
    path = tmp_path / "enroll.db"
    path.touch()
    with pytest.raises(StoreError, match="empty file"):
        EnrollmentStore(path)
    assert path.stat().st_size == 0
    with EnrollmentStore(path, model_id=MODEL, dim=DIM) as store:
        store.enroll("alice", vectors(2))
    with EnrollmentStore(path, model_id=MODEL) as store:
        assert store.speakers()[0]["count"] == 2


def test_empty_file_beside_a_wal_is_refused(tmp_path):
    path = tmp_path / "enroll.db"
    path.touch()
    Path(f"{path}-wal").write_bytes(b"\x37\x7f\x06\x82" + bytes(60))
    with pytest.raises(StoreError, match="cannot be initialised"):
        EnrollmentStore(path, model_id=MODEL, dim=DIM)
    assert path.stat().st_size == 0 and Path(f"{path}-wal").stat().st_size == 64


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write to read-only files")
def test_read_only_empty_file_is_refused(tmp_path):
    path = tmp_path / "enroll.db"
    path.touch()
    path.chmod(0o444)
    with pytest.raises(StoreError, match="cannot be initialised"):
        EnrollmentStore(path, model_id=MODEL, dim=DIM)


@pytest.mark.parametrize("content", [b"speaker,embedding\nalice,0.1\n", bytes(range(256)) * 16])
def test_non_sqlite_file_is_refused_untouched(tmp_path, content):
    path = tmp_path / "enroll.db"
    path.write_bytes(content)
    for model_id, dim in ((MODEL, DIM), (None, None)):
        with pytest.raises(StoreError, match="not a lightsv enrollment database"):
            EnrollmentStore(path, model_id=model_id, dim=dim)
    assert path.read_bytes() == content


@pytest.mark.parametrize(
    "schema", ["CREATE TABLE users (id INTEGER PRIMARY KEY, email TEXT)", "CREATE TABLE meta (key TEXT, value TEXT)"]
)
def test_someone_elses_sqlite_database_is_refused_untouched(tmp_path, schema):
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as db:
        db.execute(schema)
        db.execute(f"INSERT INTO {schema.split()[2]} VALUES (1, 'x')")
    db.close()
    before = digest(path)
    with pytest.raises(StoreError, match="not a lightsv enrollment database"):
        EnrollmentStore(path, model_id=MODEL, dim=DIM)
    assert digest(path) == before
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    db.close()


@pytest.mark.parametrize("keep", [4096, 0.5], ids=["all-but-page-1", "second-half"])
def test_corrupt_database_is_refused_untouched(tmp_path, keep):
    path = tmp_path / "enroll.db"
    with EnrollmentStore(path, model_id=MODEL, dim=DIM) as store:
        store.enroll("alice", vectors(2000))
    data = bytearray(path.read_bytes())
    keep = keep if isinstance(keep, int) else len(data) // 2 // 4096 * 4096
    # Page 1 (header and schema) stays intact; with the second half, the meta table does too.
    data[keep:] = np.random.default_rng(0).bytes(len(data) - keep)
    path.write_bytes(data)
    with pytest.raises(StoreError, match="database is corrupt"):
        EnrollmentStore(path, model_id=MODEL, dim=DIM)
    assert path.read_bytes() == data


def test_locked_database_gives_a_clear_error_and_loses_nothing(store_path):
    other = sqlite3.connect(store_path, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # holds the write lock, as an enrolling process would
        with EnrollmentStore(store_path, model_id=MODEL, timeout=0.1) as store:
            with pytest.raises(StoreError, match="locked by another process"):
                store.enroll("bob", vectors(1))
            other.execute("ROLLBACK")
            assert store.enroll("bob", vectors(1)).total == 1
            assert [s["count"] for s in store.speakers()] == [3, 1]
        # An exclusive-mode connection keeps even readers out, so the store cannot be opened at all.
        other.execute("PRAGMA locking_mode=EXCLUSIVE")
        other.execute("BEGIN EXCLUSIVE")
        with pytest.raises(StoreError, match="locked by another process"):
            EnrollmentStore(store_path, model_id=MODEL, timeout=0.1)
    finally:
        other.close()
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        assert [s["count"] for s in store.speakers()] == [3, 1]


ROWS = 64  # rows per enrollment in the child processes

KILLED_CHILD = (
    PRELUDE
    + f"""
import time
store = EnrollmentStore(sys.argv[1], model_id={MODEL!r}, dim={DIM})
store._db.execute("PRAGMA cache_size=2")  # spill uncommitted pages into the WAL before COMMIT
state = {{"enrollment": 0, "rows": 0}}
def trace(sql):
    if sql.startswith("INSERT INTO embeddings") and state["enrollment"] == 7:
        state["rows"] += 1
        if state["rows"] == {ROWS // 2}:
            print("inside", flush=True)
            time.sleep(60)
store._db.set_trace_callback(trace)
for i in range(1000):
    state["enrollment"] = i
    rows = np.full(({ROWS}, {DIM}), i, np.float32) + np.arange({ROWS}, dtype=np.float32)[:, None]
    total = store.enroll(f"spk{{i % 3}}", rows).total
    print("committed", i, total, flush=True)
"""
)


def test_sigkill_mid_enrollment_keeps_every_commit_and_no_partial(tmp_path):
    path = tmp_path / "enroll.db"
    EnrollmentStore(path, model_id=MODEL, dim=DIM).close()
    child = subprocess.Popen([sys.executable, "-c", KILLED_CHILD, str(path)], stdout=subprocess.PIPE, text=True)
    committed = []
    try:
        for line in child.stdout:
            if line.strip() == "inside":
                os.kill(child.pid, signal.SIGKILL)
                break
            committed.append(tuple(map(int, line.split()[1:])))
    finally:
        child.kill()
        child.wait(timeout=10)
    assert child.returncode == -signal.SIGKILL and [i for i, _ in committed] == list(range(7))
    assert os.path.getsize(f"{path}-wal") > 0  # the killed process left its WAL behind for recovery
    with EnrollmentStore(path, model_id=MODEL) as store:
        counts = {s["name"]: s["count"] for s in store.speakers()}
        assert counts == {f"spk{i % 3}": total for i, total in committed}  # the last total per speaker
        assert all(count % ROWS == 0 for count in counts.values())
        ramp = np.arange(ROWS, dtype=np.float32)[:, None]
        for name in counts:
            expected = [np.full((ROWS, DIM), i, np.float32) + ramp for i, _ in committed if f"spk{i % 3}" == name]
            np.testing.assert_array_equal(store.embeddings(name), np.concatenate(expected))
        assert store.enroll("spk1", np.ones((1, DIM))).total == counts["spk1"] + 1


RACING_CHILD = (
    PRELUDE
    + f"""
tag = int(sys.argv[2])
store = EnrollmentStore(sys.argv[1], model_id={MODEL!r}, dim={DIM})
print("ready", flush=True)
sys.stdin.readline()
for i in range(100):
    store.enroll(f"spk{{i % 4}}", np.full((2, {DIM}), tag * 1000 + i, np.float32))
"""
)


def test_two_processes_enrolling_at_once_lose_nothing(tmp_path):
    path = tmp_path / "enroll.db"
    EnrollmentStore(path, model_id=MODEL, dim=DIM).close()
    children = [
        subprocess.Popen(
            [sys.executable, "-c", RACING_CHILD, str(path), str(tag)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for tag in (1, 2)
    ]
    try:
        assert [child.stdout.readline().strip() for child in children] == ["ready", "ready"]
        for child in children:  # both start enrolling together, after both have paid for their imports
            child.stdin.write("go\n")
            child.stdin.flush()
        assert [child.wait(timeout=60) for child in children] == [0, 0]
    finally:
        for child in children:
            child.kill()
    with EnrollmentStore(path, model_id=MODEL) as store:
        assert {s["name"]: s["count"] for s in store.speakers()} == {f"spk{k}": 100 for k in range(4)}
        tags = np.concatenate([store.embeddings(f"spk{k}")[:, 0] for k in range(4)])
    assert sorted(tags.astype(int).tolist()) == sorted(2 * [t * 1000 + i for t in (1, 2) for i in range(100)])


def test_duplicate_hashes_are_skipped_and_reported(store_path):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        first = store.enroll("bob", vectors(2, 5), hashes=["h1", "h2"])
        assert (first.added, first.skipped, first.total) == (2, [], 2)
        again = store.enroll("bob", vectors(3, 6), hashes=["h2", None, "h3"])
        assert (again.added, again.skipped, again.total) == (2, [0], 4)
        assert store.enroll("bob", vectors(1, 7), hashes=["h1"]).added == 0
        assert store.enroll("alice", vectors(1, 7), hashes=["h1"]).added == 1  # per speaker


def test_names_longer_than_the_limit_are_refused(store_path):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        assert store.enroll("a" * lightsv.store.MAX_NAME_LENGTH, vectors(1)).total == 1
        with pytest.raises(StoreError, match="100,000 characters long"):
            store.enroll("a" * 100_000, vectors(1))
        assert len(store) == 2


def test_means_and_change_log_follow_enrollments_and_deletions(store_path):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        start = store.generation
        store.enroll("bob", vectors(2, 1))
        mean = vectors(2, 1).astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(store.mean("bob"), mean / np.linalg.norm(mean), atol=1e-6)
        generation, changed = store.changes_since(start)
        assert generation == start + 1 and [name for _, name, _ in changed] == ["bob"]
        store.delete("bob")
        generation, changed = store.changes_since(start)
        assert generation == start + 2 and [(name, mean) for _, name, mean in changed] == [(None, None)]
        ids, names, means = store.means()
        assert names == ["alice"] and means.shape == (1, DIM)
        assert store.enroll_many([("c1", vectors(1, 2)), ("c2", vectors(2, 3))]) == 2
        assert store.generation == start + 4 and [s["count"] for s in store.speakers()] == [3, 1, 2]


def test_a_version_1_store_is_migrated_and_keeps_every_row(tmp_path):
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(lightsv.store.SCHEMA_V1)
    db.executemany(
        "INSERT INTO meta VALUES (?, ?)",
        [("format", "lightsv-enrollment"), ("schema_version", "1"), ("model_id", MODEL), ("dim", str(DIM))]
        + [("created", "2026-01-01T00:00:00.000+00:00")],
    )
    db.execute("INSERT INTO speakers VALUES (1, 'alice', 'then', 'then')")
    rows = vectors(3)
    db.executemany(
        "INSERT INTO embeddings (speaker_id, vector, dim, created, source) VALUES (1, ?, ?, 'then', ?)",
        [(v.tobytes(), DIM, f"a{i}.wav") for i, v in enumerate(rows)],
    )
    db.commit()
    db.close()
    with EnrollmentStore(path, model_id=MODEL) as store:
        np.testing.assert_array_equal(store.embeddings("alice"), rows)
        mean = rows.astype(np.float64).mean(axis=0)
        np.testing.assert_allclose(store.mean("alice"), mean / np.linalg.norm(mean), atol=1e-6)
        assert store.speakers(sources=True)[0]["sources"] == ["a0.wav", "a1.wav", "a2.wav"]
        assert store.enroll("alice", vectors(1, 9), hashes=["h"]).total == 4
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone() == ("2",)
    db.close()


def test_a_bad_speaker_in_a_bulk_enrollment_writes_nothing(store_path):
    with EnrollmentStore(store_path, model_id=MODEL) as store:
        before = store.generation
        with pytest.raises(StoreError, match="speaker name"):
            store.enroll_many([("bob", vectors(1)), (" bad", vectors(1))])
        assert [s["name"] for s in store.speakers()] == ["alice"] and store.generation == before


def test_an_empty_file_says_how_it_becomes_a_store(tmp_path):
    path = tmp_path / "empty.db"
    path.touch()
    with pytest.raises(StoreError, match="not an enrollment database yet .enroll a speaker to create one."):
        EnrollmentStore(path)
