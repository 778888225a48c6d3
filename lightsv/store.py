"""A durable enrollment store: speaker embeddings in one SQLite file.

    with EnrollmentStore("enroll.db", model_id="sha256:...", dim=192) as store:
        store.enroll("alice", embeddings)        # [N, D] float32, appended in one transaction
        store.embeddings("alice")                # [N, D] float32 in enrollment order
        store.mean("alice")                      # [D] unit-length mean, kept up to date by each enrollment

Embeddings from different models live in different spaces, so a store records the model that made
it and refuses to mix: opening it with another `model_id` (or `dim`) raises StoreError, while
`model_id=None` opens any store for listing and deleting but not for enrolling.

Durability: WAL journal with `synchronous=FULL` and one `BEGIN IMMEDIATE` transaction per
enrollment, so a killed process leaves each enrollment either whole or absent, and concurrent
writers wait for each other (up to `timeout` seconds) instead of failing.

Each enrollment also keeps the speaker's unit-length mean embedding (table `means`, what
verification and identification score against, so neither re-reads every embedding) and logs the
speaker in `changes`, whose last row number is the store's `generation`: a search index built at one
generation catches up by replaying the changes after it (:mod:`lightsv.search`). Rows carry a hash of
the clip's samples (`sample_hash`), so an exact duplicate of a clip already enrolled for the speaker
is skipped and reported. Stores of schema version 1 (no hashes, means or changes) are migrated in one
transaction when opened; their rows are kept as they are.

An existing 0-byte file is initialised as a new store when it is writable: it holds nothing to lose,
and it is what `touch`, `mkstemp` or a crash before the first commit leaves behind.
"""

import os
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lightsv.errors import StoreError, UnknownSpeakerError

FORMAT = "lightsv-enrollment"
SCHEMA_VERSION = 2
#: Longest speaker name accepted, in characters.
MAX_NAME_LENGTH = 256
SQLITE_MAGIC = b"SQLite format 3\x00"

SCHEMA_V1 = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE speakers (
    id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, created TEXT NOT NULL, updated TEXT NOT NULL);
CREATE TABLE embeddings (
    id INTEGER PRIMARY KEY,
    speaker_id INTEGER NOT NULL REFERENCES speakers(id) ON DELETE CASCADE,
    vector BLOB NOT NULL,  -- float32, little-endian
    dim INTEGER NOT NULL, created TEXT NOT NULL, source TEXT);
CREATE INDEX embeddings_by_speaker ON embeddings(speaker_id, id);
"""
# Version 2: clip hashes (duplicate detection), kept means and the change log.
ADDED_IN_V2 = """
ALTER TABLE embeddings ADD COLUMN sample_hash TEXT;
CREATE INDEX embeddings_by_hash ON embeddings(speaker_id, sample_hash);
CREATE TABLE means (
    speaker_id INTEGER PRIMARY KEY REFERENCES speakers(id) ON DELETE CASCADE,
    vector BLOB NOT NULL);  -- float32 unit-length mean of the speaker's embeddings
CREATE TABLE changes (generation INTEGER PRIMARY KEY, speaker_id INTEGER NOT NULL);
"""


def _statements(script: str) -> list[str]:
    return [s for s in script.split(";") if s.strip()]


@dataclass(frozen=True)
class Enrollment:
    """What one enrollment did: rows ``added``, ``skipped`` (indices of exact duplicates), speaker's ``total``."""

    speaker: str
    added: int
    skipped: list[int]
    total: int


class InvalidEnrollmentError(StoreError, ValueError):
    """A speaker name or embedding array that cannot be enrolled; nothing was written."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


class EnrollmentStore:
    """Speaker embeddings in the SQLite file at `path` (created if absent, which needs `model_id` and `dim`)."""

    def __init__(
        self, path: str | os.PathLike, model_id: str | None = None, dim: int | None = None, *, timeout: float = 30.0
    ):
        self.path, self.timeout = Path(path), float(timeout)
        self._db: sqlite3.Connection | None = None
        self._enroll_ok = model_id is not None
        if self.path.is_dir():
            raise StoreError(f"{self.path}: is a directory, not an enrollment database")
        if not self.path.parent.is_dir():
            raise StoreError(f"{self.path}: parent directory {self.path.parent} does not exist")
        try:
            new = self._check_file(creating=model_id is not None and dim is not None)
        except OSError as err:
            raise StoreError(f"{self.path}: cannot read: {err.strerror}") from None
        try:
            # isolation_level=None: transactions are ours to begin, so each enrollment is exactly one.
            self._db = sqlite3.connect(self.path, timeout=self.timeout, isolation_level=None)
        except sqlite3.Error as err:
            raise StoreError(f"{self.path}: cannot open: {err}") from None
        try:
            with self._errors():
                if new:  # only when creating, so both are given
                    assert model_id is not None and dim is not None
                    self._create(model_id, int(dim))
                meta = self._read_meta()
                self.model_id, self.dim, self.created = meta["model_id"], int(meta["dim"]), meta["created"]
                if model_id is not None and model_id != self.model_id:
                    raise StoreError(
                        f"{self.path}: made by model {self.model_id!r}, not {model_id!r}; "
                        "embeddings from different models cannot be mixed"
                    )
                if dim is not None and int(dim) != self.dim:
                    raise StoreError(f"{self.path}: holds {self.dim}-dim embeddings, not {dim}")
                # Only now that the file is known to be ours may anything be written to it.
                self._conn.execute("PRAGMA journal_mode=WAL")
                # FULL, not NORMAL: in WAL mode NORMAL survives a killed process but can drop the last
                # commits on power loss, and an enrollment is rare and reported to the user as saved.
                self._conn.execute("PRAGMA synchronous=FULL")
                self._conn.execute("PRAGMA foreign_keys=ON")
                # Reads every page; catches corruption before an enrollment is written on top of it.
                problems = [row[0] for row in self._conn.execute("PRAGMA quick_check(5)")]
                if problems != ["ok"]:
                    raise StoreError(f"{self.path}: database is corrupt ({'; '.join(problems)[:300]})")
                if meta["schema_version"] == "1":
                    self._migrate()
        except BaseException:
            self.close()
            raise

    @property
    def _conn(self) -> sqlite3.Connection:
        if self._db is None:
            raise StoreError(f"{self.path}: enrollment store is closed")
        return self._db

    def _check_file(self, creating: bool) -> bool:
        """Whether the file must be initialised; refuses files that are not ours before SQLite touches them."""
        if not self.path.exists():
            if not creating:
                raise StoreError(f"{self.path}: no enrollment database (creating one needs model_id and dim)")
            return True
        with open(self.path, "rb") as f:
            head = f.read(len(SQLITE_MAGIC))
        if not head:
            wal = Path(f"{self.path}-wal")
            if not creating:
                # Said for the command line too: enrolling (with a model) is what initialises it.
                raise StoreError(
                    f"{self.path}: empty file, not an enrollment database yet (enroll a speaker to create one)"
                )
            # SQLite would delete a WAL beside an empty database; whatever that WAL holds is not ours to drop.
            if not os.access(self.path, os.W_OK) or (wal.exists() and wal.stat().st_size):
                raise StoreError(f"{self.path}: empty file that cannot be initialised (read-only or has a WAL)")
            return True
        if head != SQLITE_MAGIC:
            raise StoreError(f"{self.path}: not a lightsv enrollment database (not an SQLite file)")
        return False

    def _create(self, model_id: str, dim: int) -> None:
        if not isinstance(model_id, str) or not model_id or dim < 1:
            raise StoreError(f"{self.path}: a new store needs a non-empty model_id and a positive dim")
        with self._transaction():
            # Another process may have created the file since we looked; its tables then win.
            if self._conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                return
            for statement in _statements(SCHEMA_V1) + _statements(ADDED_IN_V2):
                self._conn.execute(statement)
            self._conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("format", FORMAT),
                    ("schema_version", str(SCHEMA_VERSION)),
                    ("model_id", model_id),
                    ("dim", str(dim)),
                    ("created", _now()),
                ],
            )

    def _read_meta(self) -> dict:
        tables = {row[0] for row in self._conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        meta = {}
        if {"meta", "speakers", "embeddings"} <= tables:
            try:
                meta = dict(self._conn.execute("SELECT key, value FROM meta"))
            except sqlite3.OperationalError:  # someone else's table called meta
                pass
        if meta.get("format") != FORMAT:
            raise StoreError(f"{self.path}: not a lightsv enrollment database (no lightsv meta table)")
        if meta.get("schema_version") not in ("1", str(SCHEMA_VERSION)):
            raise StoreError(
                f"{self.path}: enrollment schema version {meta.get('schema_version')}, "
                f"this lightsv reads {SCHEMA_VERSION}"
            )
        if not {"model_id", "dim", "created"} <= meta.keys() or not meta["dim"].isdigit():
            raise StoreError(f"{self.path}: database is corrupt (incomplete meta table)")
        return meta

    def _migrate(self) -> None:
        """Version 1 -> 2 in one transaction: add the hash column, the means of every speaker, the change log."""
        if not os.access(self.path, os.W_OK):
            raise StoreError(f"{self.path}: enrollment schema version 1 must be upgraded, but the file is read-only")
        with self._transaction():
            if self._conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0] != "1":
                return  # another process migrated it while we waited for the lock
            for statement in _statements(ADDED_IN_V2):
                self._conn.execute(statement)
            for (speaker,) in self._conn.execute("SELECT id FROM speakers").fetchall():
                self._update_mean(speaker)
            self._conn.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION),))

    def _update_mean(self, speaker: int) -> None:
        """Recompute the speaker's kept mean and log the change; inside the caller's transaction."""
        rows = self._conn.execute("SELECT vector FROM embeddings WHERE speaker_id = ?", (speaker,)).fetchall()
        vectors = np.frombuffer(b"".join(blob for (blob,) in rows), dtype="<f4").reshape(len(rows), self.dim)
        self._conn.execute(
            "INSERT OR REPLACE INTO means (speaker_id, vector) VALUES (?, ?)",
            (speaker, _unit_mean(vectors).tobytes()),
        )
        self._conn.execute("INSERT INTO changes (speaker_id) VALUES (?)", (speaker,))

    @contextmanager
    def _errors(self):
        """Turn sqlite3's errors into StoreErrors that say what is wrong with the file."""
        if self._db is None:
            raise StoreError(f"{self.path}: enrollment store is closed")
        try:
            yield
        except sqlite3.Error as err:
            text = str(err)
            if "locked" in text or "busy" in text:
                why = f"database is locked by another process (gave up after {self.timeout:g} s)"
            elif "not a database" in text:
                why = "not a lightsv enrollment database (not an SQLite file)"
            elif "malformed" in text or "corrupt" in text:
                why = f"database is corrupt ({text})"
            else:
                why = f"{type(err).__name__}: {text}"
            raise StoreError(f"{self.path}: {why}") from None

    @contextmanager
    def _transaction(self):
        # IMMEDIATE takes the write lock up front: a deferred transaction that later needs it fails at
        # once in WAL mode instead of waiting out the busy timeout.
        self._conn.execute("BEGIN IMMEDIATE")
        try:
            yield
            self._conn.execute("COMMIT")
        except BaseException:
            if self._conn.in_transaction:
                self._conn.execute("ROLLBACK")
            raise

    def _speaker_id(self, name) -> int:
        _check_name(name)
        row = self._conn.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UnknownSpeakerError(f"{self.path}: speaker {name!r} is not enrolled")
        return row[0]

    def enroll(self, name: str, embeddings, sources=None, hashes=None) -> Enrollment:
        """Append `embeddings` [N, D] for `name`, with optional per-row `sources` and `hashes` (of the clips' samples).

        A row whose hash the speaker already has (or that repeats an earlier row of this call) is
        skipped and reported in the result's `skipped` (row indices); rows without a hash are always added.
        """
        if not self._enroll_ok:
            raise StoreError(f"{self.path}: opened without a model_id; enrolling needs model_id={self.model_id!r}")
        _check_name(name)
        vectors = self._check_embeddings(embeddings)
        sources = self._per_row(sources, len(vectors), "sources")
        hashes = self._per_row(hashes, len(vectors), "hashes")
        with self._errors(), self._transaction():
            now = _now()
            row = self._conn.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
            if row is None:
                speaker = self._new_speaker(name, now)
                seen: set[str] = set()
            else:
                speaker = row[0]
                wanted = sorted({h for h in hashes if h is not None})
                seen = {
                    h
                    for start in range(0, len(wanted), 500)  # SQLite caps the number of bound parameters
                    for (h,) in self._conn.execute(
                        "SELECT sample_hash FROM embeddings WHERE speaker_id = ? AND sample_hash IN "
                        f"({','.join('?' * len(wanted[start : start + 500]))})",
                        (speaker, *wanted[start : start + 500]),
                    )
                }
            keep, skipped = [], []
            for i, h in enumerate(hashes):
                if h is not None and h in seen:
                    skipped.append(i)
                else:
                    keep.append(i)
                    if h is not None:
                        seen.add(h)
            if not keep:  # only for a known speaker: a new one has no hashes to repeat
                total = self._conn.execute("SELECT count(*) FROM embeddings WHERE speaker_id = ?", (speaker,))
                return Enrollment(name, 0, skipped, total.fetchone()[0])
            if row is not None:
                self._conn.execute("UPDATE speakers SET updated = ? WHERE id = ?", (now, speaker))
            self._conn.executemany(
                "INSERT INTO embeddings (speaker_id, vector, dim, created, source, sample_hash) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                ((speaker, vectors[i].tobytes(), self.dim, now, sources[i], hashes[i]) for i in keep),
            )
            self._update_mean(speaker)
            total = self._conn.execute("SELECT count(*) FROM embeddings WHERE speaker_id = ?", (speaker,)).fetchone()[0]
            return Enrollment(name, len(keep), skipped, total)

    def enroll_many(self, speakers) -> int:
        """Add many speakers' embeddings in one transaction: `speakers` yields (name, embeddings [N, D]).

        For bulk imports (one commit instead of one per speaker); no sources, hashes or duplicate
        checks. Returns the number of speakers written.
        """
        if not self._enroll_ok:
            raise StoreError(f"{self.path}: opened without a model_id; enrolling needs model_id={self.model_id!r}")
        count = 0
        with self._errors(), self._transaction():
            now = _now()
            for name, embeddings in speakers:
                _check_name(name)
                vectors = self._check_embeddings(embeddings)
                row = self._conn.execute("SELECT id FROM speakers WHERE name = ?", (name,)).fetchone()
                if row is None:
                    speaker = self._new_speaker(name, now)
                else:
                    speaker = row[0]
                    self._conn.execute("UPDATE speakers SET updated = ? WHERE id = ?", (now, speaker))
                self._conn.executemany(
                    "INSERT INTO embeddings (speaker_id, vector, dim, created) VALUES (?, ?, ?, ?)",
                    ((speaker, v.tobytes(), self.dim, now) for v in vectors),
                )
                if row is None:  # a new speaker's mean is its own rows' mean: no need to read them back
                    self._conn.execute(
                        "INSERT INTO means (speaker_id, vector) VALUES (?, ?)", (speaker, _unit_mean(vectors).tobytes())
                    )
                    self._conn.execute("INSERT INTO changes (speaker_id) VALUES (?)", (speaker,))
                else:
                    self._update_mean(speaker)
                count += 1
        return count

    def _new_speaker(self, name: str, now: str) -> int:
        cursor = self._conn.execute("INSERT INTO speakers (name, created, updated) VALUES (?, ?, ?)", (name, now, now))
        assert cursor.lastrowid is not None  # set by every INSERT
        return cursor.lastrowid

    @staticmethod
    def _per_row(values, n: int, what: str) -> list:
        values = [None] * n if values is None else list(values)
        if len(values) != n or not all(v is None or isinstance(v, str) for v in values):
            raise InvalidEnrollmentError(f"{what} must be {n} strings (one per embedding)")
        return values

    def _check_embeddings(self, embeddings) -> np.ndarray:
        try:
            array = np.asarray(embeddings)
        except Exception as err:
            raise InvalidEnrollmentError(f"embeddings are not an array ({err})") from None
        if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] != self.dim:
            raise InvalidEnrollmentError(f"embeddings must have shape [N >= 1, {self.dim}], got {list(array.shape)}")
        if array.dtype.kind not in "iuf":
            raise InvalidEnrollmentError(f"embeddings must be real numbers, got dtype {array.dtype}")
        with np.errstate(over="ignore"):  # out-of-range values become inf and are refused just below
            vectors = np.ascontiguousarray(array, dtype="<f4")
        if not np.isfinite(vectors).all():
            raise InvalidEnrollmentError(
                f"embeddings contain NaN or infinite values (rows "
                f"{np.flatnonzero(~np.isfinite(vectors).all(axis=1))[:5].tolist()})"
            )
        return vectors

    def embeddings(self, name: str) -> np.ndarray:
        """The speaker's embeddings [N, D] float32, in enrollment order."""
        with self._errors():
            speaker = self._speaker_id(name)
            rows = self._conn.execute(
                "SELECT vector, dim FROM embeddings WHERE speaker_id = ? ORDER BY id", (speaker,)
            ).fetchall()
        if any(dim != self.dim or len(blob) != 4 * self.dim for blob, dim in rows):
            raise StoreError(f"{self.path}: database is corrupt (an embedding of {name!r} is not {self.dim}-dim)")
        flat = np.frombuffer(b"".join(blob for blob, _ in rows), dtype="<f4")
        return flat.reshape(len(rows), self.dim).astype(np.float32)

    @staticmethod
    def check_name(name) -> None:
        """InvalidEnrollmentError unless ``name`` can be a speaker name."""
        _check_name(name)

    def mean(self, name: str) -> np.ndarray:
        """The speaker's unit-length mean embedding [D] float32, as kept by the last enrollment."""
        with self._errors():
            speaker = self._speaker_id(name)
            row = self._conn.execute("SELECT vector FROM means WHERE speaker_id = ?", (speaker,)).fetchone()
        if row is None or len(row[0]) != 4 * self.dim:
            raise StoreError(f"{self.path}: database is corrupt (no {self.dim}-dim mean for {name!r})")
        return np.frombuffer(row[0], dtype="<f4").astype(np.float32)

    def means(self) -> tuple[np.ndarray, list[str], np.ndarray]:
        """Every speaker's (ids [N] int64, names, unit-length means [N, D] float32), in id order."""
        with self._errors():
            count = self._conn.execute("SELECT count(*) FROM means").fetchone()[0]
            ids = np.zeros(count, dtype=np.int64)
            matrix = np.zeros((count, self.dim), dtype=np.float32)
            names = []
            rows = self._conn.execute(
                "SELECT s.id, s.name, m.vector FROM means m JOIN speakers s ON s.id = m.speaker_id ORDER BY s.id"
            )
            for i, (speaker, name, blob) in enumerate(rows):
                ids[i] = speaker
                names.append(name)
                matrix[i] = np.frombuffer(blob, dtype="<f4")
        return ids[: len(names)], names, matrix[: len(names)]

    @property
    def generation(self) -> int:
        """The number of the last change (enrollment or deletion); grows with every one."""
        with self._errors():
            return self._conn.execute("SELECT coalesce(max(generation), 0) FROM changes").fetchone()[0]

    def changes_since(self, generation: int) -> tuple[int, list[tuple[int, str | None, np.ndarray | None]]]:
        """(current generation, [(speaker id, name, mean) ...]) for speakers changed after `generation`;
        name and mean are None for a speaker deleted since."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT c.speaker_id, max(c.generation), s.name, m.vector FROM changes c "
                "LEFT JOIN speakers s ON s.id = c.speaker_id LEFT JOIN means m ON m.speaker_id = c.speaker_id "
                "WHERE c.generation > ? GROUP BY c.speaker_id",
                (generation,),
            ).fetchall()
            current = max([generation, *(g for _, g, _, _ in rows)])
        return current, [
            (speaker, name, None if blob is None else np.frombuffer(blob, dtype="<f4").astype(np.float32))
            for speaker, _, name, blob in rows
        ]

    def speakers(self, sources: bool = False) -> list[dict]:
        """One dict per speaker (name, count, created, updated; ISO-8601 UTC), sorted by name; with
        `sources`, also the list of where each enrolled clip came from (None where not recorded)."""
        with self._errors():
            rows = self._conn.execute(
                "SELECT s.id, s.name, count(e.id), s.created, s.updated FROM speakers s "
                "LEFT JOIN embeddings e ON e.speaker_id = s.id GROUP BY s.id ORDER BY s.name"
            ).fetchall()
            listed = [
                dict(name=name, count=count, created=created, updated=updated)
                for _, name, count, created, updated in rows
            ]
            if sources:
                for (speaker, *_), entry in zip(rows, listed, strict=True):
                    entry["sources"] = [
                        source
                        for (source,) in self._conn.execute(
                            "SELECT source FROM embeddings WHERE speaker_id = ? ORDER BY id", (speaker,)
                        )
                    ]
        return listed

    def delete(self, name: str) -> int:
        """Remove the speaker and all their embeddings; returns the number of embeddings removed."""
        with self._errors(), self._transaction():
            speaker = self._speaker_id(name)
            removed = self._conn.execute("DELETE FROM embeddings WHERE speaker_id = ?", (speaker,)).rowcount
            self._conn.execute("DELETE FROM means WHERE speaker_id = ?", (speaker,))
            self._conn.execute("DELETE FROM speakers WHERE id = ?", (speaker,))
            self._conn.execute("INSERT INTO changes (speaker_id) VALUES (?)", (speaker,))
            return removed

    def __contains__(self, name) -> bool:
        if not isinstance(name, str):
            return False
        with self._errors():
            return self._conn.execute("SELECT 1 FROM speakers WHERE name = ?", (name,)).fetchone() is not None

    def __len__(self) -> int:
        with self._errors():
            return self._conn.execute("SELECT count(*) FROM speakers").fetchone()[0]

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None

    def __enter__(self) -> "EnrollmentStore":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EnrollmentStore({str(self.path)!r}, model_id={getattr(self, 'model_id', None)!r})"


def _unit_mean(vectors: np.ndarray) -> np.ndarray:
    mean = vectors.astype(np.float64).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype("<f4")


def _check_name(name) -> None:
    # Surrounding whitespace or control characters would make look-alike speakers and break listings.
    if not isinstance(name, str) or not name or name != name.strip() or not name.isprintable():
        raise InvalidEnrollmentError(
            f"speaker name must be a non-empty printable string without surrounding whitespace, got {name!r}"
        )
    if len(name) > MAX_NAME_LENGTH:
        raise InvalidEnrollmentError(
            f"speaker name is {len(name):,} characters long, the limit is {MAX_NAME_LENGTH} ({name[:40]!r}...)"
        )
