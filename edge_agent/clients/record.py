"""Durable recording of the published stream into SQLite (``edge-agent record``), and its CSV export.

The recorder is one more subscriber of the hub's publish endpoint (``subscriber.Subscriber``): it
writes every estimate and every status message to an SQLite database, one transaction per
message, and keeps one row per publisher process for the heartbeats.

Durability. The database runs in WAL mode with ``synchronous=NORMAL`` by default: a commit has
written its record to the write-ahead log in the OS page cache before the next message is read,
so a crash of the recorder (SIGKILL, an exception, OOM) loses nothing it committed, only the one
message it was handling; the kernel writes the log to disk even though the process is gone. Only
a power cut or kernel crash can undo the last commits (the database stays consistent). Where that
matters, ``synchronous=FULL`` fsyncs the log at every commit (one fsync per message, a few per
second per stream). Messages arrive at ~1–4 per second per stream, so a transaction per message
costs well under a millisecond and no batching is needed (a batch would be what a crash loses).

Tables (``DB_SCHEMA_VERSION`` 2: version 2 added ``reliable``, ``ood_score`` and ``beat_ood_score``;
times ``t…`` are the publisher's monotonic seconds as on the wire, ``received_utc`` is the
recorder's wall clock, ISO 8601 UTC, and ``received_unix`` the same in s):

* ``schema_version``: one row, the database schema version, the wire schema version, creation time.
* ``sessions``: one row per recorder run: start, end (NULL when it crashed), endpoints, topics and,
  on a clean stop, its counters.
* ``estimates``: one row per estimate (columns :data:`ESTIMATE_COLUMNS`) plus ``message``, the full
  message as JSON. UNIQUE (stream, seq, t_published): the publisher's last-value cache re-sends its
  latest estimate to every new subscriber, and ``INSERT OR IGNORE`` turns those into counted
  duplicates, also across recorder restarts.
* ``status``: one row per status message (:data:`STATUS_COLUMNS`), UNIQUE (stream, t), likewise.
* ``gaps``: one row per break in a stream's estimate numbering (``subscriber.classify_seq``): ``gap`` when
  seq numbers were skipped (the hub dropped windows, or messages were lost on the way: compare
  ``status.windows_dropped``), ``restart`` when the numbering started again (the stream's windower
  restarted). The previous seq is the last one in the database, so a gap can span recorder downtime.
* ``alarms``: the alarm log of the ward page server (``web.db`` names this database): one row per
  alarm transition (raised, acknowledged, resounded, cleared) with the bed, kind, priority and
  message (:class:`WardStore`; the recorder itself only creates the table).
* ``publishers``: one row per publisher process (host, pid) with first/last heartbeat, count and the
  longest silence between two recorded heartbeats. Heartbeats carry no clinical data; what they
  tell (was the agent alive, since when, did it stall) fits one row updated in place, where a row
  per heartbeat would add 86,400 rows a day per publisher.
"""

from __future__ import annotations

import csv
import json
import logging
import os
import sqlite3
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from edge_agent.clients.subscriber import T_RECEIVED, SeqStep, Subscriber, classify_seq
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig

log = logging.getLogger(__name__)

DB_SCHEMA_VERSION = 2
DEFAULT_ENDPOINT = TransportConfig.publish  # the agent's default publish endpoint
SYNCHRONOUS_LEVELS = ("NORMAL", "FULL")
# The counters of a run, written into its sessions row on a clean stop (Recorder.summary()).
SESSION_COUNTERS = (
    "estimates",
    "status",
    "heartbeats",
    "duplicates",
    "gaps",
    "missing",
    "restarts",
    "invalid",
)
# The stages the hub reports (wire docstring, estimate `stages`); others stay in the JSON only.
STAGES = ("detect", "window", "to_worker", "infer", "publish")
# Summary keys written as columns, for the beat and the running posterior alike.
SUMMARY_COLUMNS = (
    "mean",
    "median",
    "std",
    "ci90_lo",
    "ci90_hi",
    "ci95_lo",
    "ci95_hi",
    "p_ef_lt_40",
    "p_ef_lt_50",
    "multimodal",
    "n_samples",
)


class RecordError(RuntimeError):
    """The database cannot be used for recording or export; the message names the file and the fix."""


# ---------------------------------------------------------------- pure row mapping


def _summary_types(prefix: str) -> list[tuple[str, str]]:
    types = {"multimodal": "INTEGER NOT NULL", "n_samples": "INTEGER NOT NULL"}
    return [(f"{prefix}_{key}", types.get(key, "REAL NOT NULL")) for key in SUMMARY_COLUMNS]


# (column, SQLite type) of the estimates table, in order; `message` is the full JSON message.
ESTIMATE_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stream", "TEXT NOT NULL"),
    ("seq", "INTEGER NOT NULL"),
    ("t_published", "REAL NOT NULL"),
    ("received_utc", "TEXT NOT NULL"),
    ("received_unix", "REAL NOT NULL"),
    ("t_first", "REAL NOT NULL"),
    ("t_last", "REAL NOT NULL"),
    ("t_ready", "REAL NOT NULL"),
    ("frame_first", "INTEGER NOT NULL"),
    ("frame_last", "INTEGER NOT NULL"),
    *_summary_types("beat"),
    *_summary_types("running"),
    ("running_n_beats", "INTEGER NOT NULL"),
    ("reliable", "INTEGER NOT NULL"),
    ("ood_score", "REAL"),
    ("beat_ood_score", "REAL"),
    ("hr_bpm", "REAL"),
    ("latency_ms", "REAL NOT NULL"),
    ("latency_from_ready_ms", "REAL NOT NULL"),
    ("backend", "TEXT NOT NULL"),
    *[(f"stage_{name}_ms", "REAL") for name in STAGES],
    ("truth_ef", "REAL"),
    ("truth_ef_running", "REAL"),
    ("message", "TEXT NOT NULL"),
)
STATUS_COLUMNS: tuple[tuple[str, str], ...] = (
    ("stream", "TEXT NOT NULL"),
    ("t", "REAL NOT NULL"),
    ("received_utc", "TEXT NOT NULL"),
    ("received_unix", "REAL NOT NULL"),
    ("signal", "TEXT NOT NULL"),
    ("fps", "REAL NOT NULL"),
    ("hr_bpm", "REAL"),
    ("windows_dropped", "INTEGER NOT NULL"),
    ("frames_dropped", "INTEGER NOT NULL"),
    ("seq_gaps", "INTEGER NOT NULL"),
    ("queue", "INTEGER"),
    ("message", "TEXT NOT NULL"),
)


def utc_iso(unix_s: float) -> str:
    """Seconds since the epoch → ISO 8601 UTC with microseconds, e.g. ``2025-01-31T12:00:00.250000Z``."""
    return datetime.fromtimestamp(unix_s, tz=timezone.utc).isoformat(timespec="microseconds")[:-6] + "Z"


def message_json(msg: Mapping[str, Any]) -> str:
    """The wire message as compact, strict JSON (the subscriber's receive time left out)."""
    return json.dumps(
        {k: v for k, v in msg.items() if k != T_RECEIVED}, allow_nan=False, separators=(",", ":")
    )


def _summary_values(prefix: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    values = {
        **{key: summary[key] for key in ("mean", "median", "std", "p_ef_lt_40", "p_ef_lt_50", "n_samples")},
        "ci90_lo": summary["ci90"][0],
        "ci90_hi": summary["ci90"][1],
        "ci95_lo": summary["ci95"][0],
        "ci95_hi": summary["ci95"][1],
        "multimodal": int(summary["multimodal"]),
    }
    return {f"{prefix}_{key}": values[key] for key in SUMMARY_COLUMNS}


def estimate_row(msg: Mapping[str, Any], received_unix: float) -> dict[str, Any]:
    """A decoded estimate (``wire.decode_estimate``) received at ``received_unix`` (s since the
    epoch) → {column: value} in :data:`ESTIMATE_COLUMNS` order. Latencies in ms, EF in %."""
    truth, stages = msg.get("truth", {}), msg["stages"]
    row = {
        "stream": msg["stream"],
        "seq": msg["seq"],
        "t_published": msg["t_published"],
        "received_utc": utc_iso(received_unix),
        "received_unix": received_unix,
        "t_first": msg["t"][0],
        "t_last": msg["t"][1],
        "t_ready": msg["t_ready"],
        "frame_first": msg["frame_seq"][0],
        "frame_last": msg["frame_seq"][1],
        **_summary_values("beat", msg["beat"]),
        **_summary_values("running", msg["running"]),
        "running_n_beats": msg["running"]["n_beats"],
        "reliable": int(msg["reliable"]),
        "ood_score": msg["ood_score"],
        "beat_ood_score": msg["beat_ood_score"],
        "hr_bpm": msg["hr_bpm"],
        "latency_ms": msg["latency_ms"],
        # Both times are on the capture host's clock: the delay after the beat was complete.
        "latency_from_ready_ms": 1000.0 * (msg["t_published"] - msg["t_ready"]),
        "backend": msg["backend"],
        **{f"stage_{name}_ms": stages.get(name) for name in STAGES},
        "truth_ef": truth.get("ef"),
        "truth_ef_running": truth.get("ef_running"),
        "message": message_json(msg),
    }
    return {name: row[name] for name, _type in ESTIMATE_COLUMNS}


def status_row(msg: Mapping[str, Any], received_unix: float) -> dict[str, Any]:
    """A decoded status (``wire.decode_status``) → {column: value} in :data:`STATUS_COLUMNS` order;
    ``queue`` is None when the publisher does not report it."""
    row = {
        **{key: msg[key] for key in ("stream", "t", "signal", "fps", "hr_bpm")},
        **{key: msg[key] for key in wire.BASE_COUNTERS},
        "received_utc": utc_iso(received_unix),
        "received_unix": received_unix,
        "queue": msg.get("queue"),
        "message": message_json(msg),
    }
    return {name: row[name] for name, _type in STATUS_COLUMNS}


# ---------------------------------------------------------------- the database


def _table(name: str, columns: Sequence[tuple[str, str]], unique: str) -> str:
    body = ",\n    ".join(f"{column} {kind}" for column, kind in columns)
    return (
        f"CREATE TABLE IF NOT EXISTS {name} (\n    id INTEGER PRIMARY KEY,\n"
        f"    session INTEGER NOT NULL REFERENCES sessions(id),\n    {body},\n    UNIQUE ({unique})\n)"
    )


# Written by the ward page server (WardStore), created with the others so every recording has it.
ALARMS_TABLE = """CREATE TABLE IF NOT EXISTS alarms (
    id INTEGER PRIMARY KEY,
    received_utc TEXT NOT NULL,
    received_unix REAL NOT NULL,
    bed TEXT NOT NULL,
    kind TEXT NOT NULL,
    priority TEXT NOT NULL,
    what TEXT NOT NULL CHECK (what IN ('raised', 'acknowledged', 'resounded', 'cleared')),
    message TEXT NOT NULL
)"""
SCHEMA = [
    """CREATE TABLE IF NOT EXISTS schema_version (
    version INTEGER NOT NULL,
    wire_version INTEGER NOT NULL,
    created_utc TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS sessions (
    id INTEGER PRIMARY KEY,
    started_utc TEXT NOT NULL,
    ended_utc TEXT,
    pid INTEGER NOT NULL,
    endpoints TEXT NOT NULL,
    topics TEXT NOT NULL,
    estimates INTEGER,
    status INTEGER,
    heartbeats INTEGER,
    duplicates INTEGER,
    gaps INTEGER,
    missing INTEGER,
    restarts INTEGER,
    invalid INTEGER
)""",
    _table("estimates", ESTIMATE_COLUMNS, "stream, seq, t_published"),
    _table("status", STATUS_COLUMNS, "stream, t"),
    """CREATE TABLE IF NOT EXISTS gaps (
    id INTEGER PRIMARY KEY,
    session INTEGER NOT NULL REFERENCES sessions(id),
    stream TEXT NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('gap', 'restart')),
    prev_seq INTEGER NOT NULL,
    seq INTEGER NOT NULL,
    missing INTEGER NOT NULL,
    t_published REAL NOT NULL,
    received_utc TEXT NOT NULL
)""",
    """CREATE TABLE IF NOT EXISTS publishers (
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    first_seen_utc TEXT NOT NULL,
    last_seen_utc TEXT NOT NULL,
    last_seen_unix REAL NOT NULL,
    last_t REAL NOT NULL,
    uptime_s REAL NOT NULL,
    heartbeats INTEGER NOT NULL,
    max_silence_s REAL NOT NULL,
    PRIMARY KEY (host, pid)
)""",
    ALARMS_TABLE,
    # What is queried: one stream over a span of wall-clock time; the UNIQUE keys index (stream, seq).
    "CREATE INDEX IF NOT EXISTS estimates_stream_received ON estimates (stream, received_unix)",
    "CREATE INDEX IF NOT EXISTS status_stream_received ON status (stream, received_unix)",
    "CREATE INDEX IF NOT EXISTS gaps_stream ON gaps (stream, id)",
]
# CSV exports: the typed columns (the JSON message stays in the database).
CSV_COLUMNS = {
    "estimates": ["session", *(c for c, _t in ESTIMATE_COLUMNS if c != "message")],
    "status": ["session", *(c for c, _t in STATUS_COLUMNS if c != "message")],
    "gaps": ["session", "stream", "kind", "prev_seq", "seq", "missing", "t_published", "received_utc"],
}


def _check_version(conn: sqlite3.Connection, path: Path) -> bool:
    """True when ``path`` holds this schema, False when it is empty; RecordError otherwise."""
    tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    if not tables:
        return False
    if "schema_version" not in tables:
        raise RecordError(
            f"{path}: not an edge-agent recording (no schema_version table; tables {sorted(tables)}); "
            "give --db a new file"
        )
    row = conn.execute("SELECT version FROM schema_version").fetchone()
    if row is None or row[0] != DB_SCHEMA_VERSION:
        raise RecordError(
            f"{path}: recording schema version {None if row is None else row[0]}, this edge-agent "
            f"writes version {DB_SCHEMA_VERSION}; record into a new --db file"
        )
    return True


class RecordStore:
    """The recording database, opened for writing: schema, pragmas, one transaction per record.

    path: the SQLite file (created with its tables when absent; a recording of another schema
    version is refused). synchronous: ``NORMAL`` (durable against a crash of this process) or
    ``FULL`` (also against a power cut: one fsync per record); see the module docstring.
    """

    def __init__(self, path: str | Path, synchronous: str = "NORMAL") -> None:
        self.path = Path(path)
        if synchronous.upper() not in SYNCHRONOUS_LEVELS:
            raise RecordError(f"synchronous: expected one of {list(SYNCHRONOUS_LEVELS)}, got {synchronous!r}")
        if not self.path.parent.is_dir():
            raise RecordError(f"{self.path}: folder {self.path.parent} does not exist; create it first")
        # isolation_level=None: this class opens and commits every transaction itself.
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0)
        try:
            # Checked first: a database of something else is refused before any pragma changes it.
            existing = _check_version(self.conn, self.path)
            mode = self.conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise RecordError(
                    f"{self.path}: SQLite could not switch to WAL mode (got {mode!r}); put the database "
                    "on a local file system"
                )
            self.conn.execute(f"PRAGMA synchronous={synchronous.upper()}")
            self.conn.execute("PRAGMA foreign_keys=ON")
            with self._transaction():
                for statement in SCHEMA:
                    self.conn.execute(statement)
                if not existing:
                    self.conn.execute(
                        "INSERT INTO schema_version VALUES (?, ?, ?)",
                        (DB_SCHEMA_VERSION, wire.SCHEMA_VERSION, utc_iso(time.time())),
                    )
        except sqlite3.DatabaseError as e:
            self.conn.close()
            raise RecordError(f"{self.path}: cannot open as an SQLite recording: {e}") from None
        except RecordError:
            self.conn.close()
            raise
        # Each stream's last recorded seq, so that a gap across recorder downtime is seen too.
        self.last_seq: dict[str, int] = {
            stream: seq
            for stream, seq in self.conn.execute(
                "SELECT stream, seq FROM estimates "
                "WHERE id IN (SELECT max(id) FROM estimates GROUP BY stream)"
            )
        }
        self.session: int | None = None

    def _transaction(self) -> _Transaction:
        return _Transaction(self.conn)

    def open_session(self, endpoints: Sequence[str], topics: Sequence[str]) -> int:
        """Start a session row; returns its id (stored with every record of this run)."""
        with self._transaction():
            cur = self.conn.execute(
                "INSERT INTO sessions (started_utc, pid, endpoints, topics) VALUES (?, ?, ?, ?)",
                (utc_iso(time.time()), os.getpid(), json.dumps(list(endpoints)), json.dumps(list(topics))),
            )
        self.session = int(cur.lastrowid)
        return self.session

    def close_session(self, counters: Mapping[str, int]) -> None:
        """Write the end time and the run's counters into its session row."""
        columns = SESSION_COUNTERS
        with self._transaction():
            self.conn.execute(
                f"UPDATE sessions SET ended_utc = ?, {', '.join(f'{c} = ?' for c in columns)} WHERE id = ?",
                (utc_iso(time.time()), *(counters[c] for c in columns), self.session),
            )

    def _insert(self, table: str, row: Mapping[str, Any]) -> bool:
        names = ["session", *row]
        cur = self.conn.execute(
            f"INSERT OR IGNORE INTO {table} ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})",
            (self.session, *row.values()),
        )
        return cur.rowcount == 1

    def add_estimate(self, row: Mapping[str, Any]) -> SeqStep | None:
        """Insert an estimate row (and its gap, in the same transaction); None when it was already
        recorded (a last-value-cache re-send), else how its seq follows the stream's previous one."""
        stream, seq = row["stream"], row["seq"]
        with self._transaction():
            if not self._insert("estimates", row):
                return None
            prev = self.last_seq.get(stream)
            step = classify_seq(prev, seq)
            if step.kind in ("gap", "restart"):
                self.conn.execute(
                    "INSERT INTO gaps (session, stream, kind, prev_seq, seq, missing, t_published, "
                    "received_utc) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        self.session,
                        stream,
                        step.kind,
                        prev,
                        seq,
                        step.missing,
                        row["t_published"],
                        row["received_utc"],
                    ),
                )
        self.last_seq[stream] = seq
        return step

    def add_status(self, row: Mapping[str, Any]) -> bool:
        """Insert a status row; False when it was already recorded (a last-value-cache re-send)."""
        with self._transaction():
            return self._insert("status", row)

    def add_heartbeat(self, msg: Mapping[str, Any], received_unix: float) -> bool:
        """Update the publisher's row with its heartbeat; False when this heartbeat (same ``t``)
        was already counted (a last-value-cache re-send)."""
        received_utc = utc_iso(received_unix)
        with self._transaction():
            cur = self.conn.execute(
                """INSERT INTO publishers VALUES (?, ?, ?, ?, ?, ?, ?, 1, 0.0)
                ON CONFLICT (host, pid) DO UPDATE SET
                    last_seen_utc = excluded.last_seen_utc,
                    last_seen_unix = excluded.last_seen_unix,
                    last_t = excluded.last_t,
                    uptime_s = excluded.uptime_s,
                    heartbeats = heartbeats + 1,
                    max_silence_s = max(max_silence_s, excluded.last_seen_unix - last_seen_unix)
                WHERE excluded.last_t <> last_t""",
                (
                    msg["host"],
                    msg["pid"],
                    received_utc,
                    received_utc,
                    received_unix,
                    msg["t"],
                    msg["uptime_s"],
                ),
            )
            return cur.rowcount == 1

    def close(self) -> None:
        self.conn.close()


class WardStore:
    """The ward page server's use of a recording (``web.db``): it appends the alarm log and reads
    each bed's trend back, so that a restarted page server still shows the last hours.

    path: a recording the recorder made (``edge-agent record --db PATH``, running beside the
    agent); both write to it, which WAL mode allows (each waits up to 5 s for the other's commit).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise RecordError(
                f"web.db: {self.path} is not there; start `edge-agent record --db {self.path}` first, "
                "or leave web.db unset (trends then live in the page server's memory only)"
            )
        # Opened by the caller of start(), used by the page server's event loop thread only after.
        self.conn = sqlite3.connect(self.path, isolation_level=None, timeout=5.0, check_same_thread=False)
        try:
            if not _check_version(self.conn, self.path):
                raise RecordError(f"web.db: {self.path} is empty, not a recording; give the recorder's --db")
            self.conn.execute(ALARMS_TABLE)  # for a recording made before the table existed
        except (RecordError, sqlite3.DatabaseError) as e:
            self.conn.close()
            raise RecordError(str(e) if isinstance(e, RecordError) else f"web.db: {self.path}: {e}") from None

    def add_alarm(self, unix_s: float, bed: str, kind: str, priority: str, what: str, message: str) -> None:
        """One alarm transition, at ``unix_s`` (wall clock, s)."""
        self.conn.execute(
            "INSERT INTO alarms (received_utc, received_unix, bed, kind, priority, what, message) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (utc_iso(unix_s), unix_s, bed, kind, priority, what, message),
        )

    def removals(self, prefix: str, since_unix: float) -> dict[str, float]:
        """Each bed's latest removal since ``since_unix`` (wall clock, s): the latest alarm row it
        cleared whose message begins with ``prefix`` (the board's wording for an operator's removal)."""
        rows = self.conn.execute(
            "SELECT bed, MAX(received_unix) FROM alarms WHERE what = 'cleared' AND received_unix >= ? "
            "AND substr(message, 1, ?) = ? GROUP BY bed",
            (since_unix, len(prefix), prefix),
        )
        return dict(rows.fetchall())

    def trends(self, since_unix: float) -> dict[str, list[tuple[float, float, float, float, float]]]:
        """Each bed's recorded estimates since ``since_unix``: (received_unix, running mean, running
        ci90 lo, hi, beat mean), oldest first. EF in %."""
        out: dict[str, list[tuple[float, float, float, float, float]]] = {}
        rows = self.conn.execute(
            "SELECT stream, received_unix, running_mean, running_ci90_lo, running_ci90_hi, beat_mean "
            "FROM estimates WHERE received_unix >= ? ORDER BY stream, received_unix",
            (since_unix,),
        )
        for stream, *point in rows:
            out.setdefault(stream, []).append(tuple(point))
        return out

    def close(self) -> None:
        self.conn.close()


class _Transaction:
    """BEGIN … COMMIT, or ROLLBACK on an exception (sqlite3's own context manager needs the
    module's implicit transactions, which isolation_level=None turns off)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> None:
        self.conn.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_exc: object) -> None:
        self.conn.execute("ROLLBACK" if exc_type is not None else "COMMIT")


# ---------------------------------------------------------------- the recorder stage


@dataclass(frozen=True)
class RecordConfig:
    """``edge-agent record``.

    db: the SQLite file (created when absent; an existing recording is appended to).
    connect: publish endpoints to subscribe to (``tcp://host:port``, ``ipc://path``).
    topics: topic prefixes ("" = every topic; ``lvef.`` estimates only, ``status.bed1.`` …).
    synchronous: ``NORMAL`` (survives a crash of the recorder) or ``FULL`` (also a power cut, one
        fsync per record).
    rcvhwm: messages ZeroMQ queues for the recorder while it writes before it drops new ones (a
        drop shows as a gap); large because a recorder wants every message, not the latest.
    progress_s: s between progress log lines (0: none).
    count: stop after this many records written (None: until stopped).
    curve_server_key, curve_client_key: the publisher's public NAME.key and this recorder's
        NAME.key_secret when the publisher has CURVE on (as for ``subscriber.Subscriber``).
    """

    db: str
    connect: tuple[str, ...] = (DEFAULT_ENDPOINT,)
    topics: tuple[str, ...] = ("",)
    synchronous: str = "NORMAL"
    rcvhwm: int = 100_000
    progress_s: float = 60.0
    count: int | None = None
    curve_server_key: str | None = None
    curve_client_key: str | None = None


class Recorder:
    """The recorder's lifecycle, like the agent's stages: ``start`` opens the database and
    subscribes, ``process`` records what arrived within 0.2 s (False once ``count`` is reached),
    ``stop`` closes the session with its counters and logs the summary."""

    def __init__(self, cfg: RecordConfig) -> None:
        self.cfg = cfg
        self.store: RecordStore | None = None
        self.sub: Subscriber | None = None
        self.counts = dict.fromkeys(
            ("estimates", "status", "heartbeats", "duplicates_db", "gaps", "missing", "restarts"), 0
        )

    def start(self) -> None:
        self.store = RecordStore(self.cfg.db, self.cfg.synchronous)
        self.store.open_session(self.cfg.connect, self.cfg.topics)
        self.sub = Subscriber(
            self.cfg.connect,
            topics=self.cfg.topics,
            rcvhwm=self.cfg.rcvhwm,
            curve_server_key=self.cfg.curve_server_key,
            curve_client_key=self.cfg.curve_client_key,
        )
        self._next_progress = time.monotonic() + self.cfg.progress_s
        log.info(
            "record: %s → %s (session %d, synchronous=%s)",
            ", ".join(self.cfg.connect),
            self.cfg.db,
            self.store.session,
            self.cfg.synchronous.upper(),
        )

    @property
    def written(self) -> int:
        return self.counts["estimates"] + self.counts["status"] + self.counts["heartbeats"]

    def process(self, timeout: float = 0.2) -> bool:
        """Record every message that arrives within ``timeout`` s; False once ``count`` is reached."""
        assert self.sub is not None, "start() first"
        msg = self.sub.recv(timeout)
        while msg is not None:
            self.record(msg)
            if self.cfg.count is not None and self.written >= self.cfg.count:
                return False
            msg = self.sub.recv(0)
        if self.cfg.progress_s > 0 and time.monotonic() >= self._next_progress:
            self._next_progress = time.monotonic() + self.cfg.progress_s
            log.info("record: %s", self.summary_line())
        return True

    def record(self, msg: dict[str, Any]) -> None:
        """Write one message as ``Subscriber.recv`` returns it (decoded, with its receive time)."""
        assert self.store is not None, "start() first"
        # The receive time on the wall clock: now, less the time the message waited in this process.
        received_unix = time.time() - (time.monotonic() - msg[T_RECEIVED])
        kind = msg["kind"]
        if kind == "estimate":
            step = self.store.add_estimate(estimate_row(msg, received_unix))
            if step is None:
                self.counts["duplicates_db"] += 1
                return
            self.counts["estimates"] += 1
            if step.kind == "gap":
                self.counts["gaps"] += 1
                self.counts["missing"] += step.missing
                log.warning(
                    "record: %s estimate seq gap: %d follows %d, %d missing",
                    msg["stream"],
                    msg["seq"],
                    msg["seq"] - step.missing - 1,
                    step.missing,
                )
            elif step.kind == "restart":
                self.counts["restarts"] += 1
                self.counts["missing"] += step.missing
                log.warning("record: %s numbering restarted at seq %d", msg["stream"], msg["seq"])
        elif kind == "status":
            if self.store.add_status(status_row(msg, received_unix)):
                self.counts["status"] += 1
            else:
                self.counts["duplicates_db"] += 1
        elif self.store.add_heartbeat(msg, received_unix):
            self.counts["heartbeats"] += 1
        else:
            self.counts["duplicates_db"] += 1

    def summary(self) -> dict[str, int]:
        """Counters of this run: records written per kind, duplicates (dropped by the subscriber
        plus ignored by the database), gaps, estimates missing, numbering restarts, invalid messages."""
        sub_duplicates = 0 if self.sub is None else self.sub.duplicates
        return {
            "estimates": self.counts["estimates"],
            "status": self.counts["status"],
            "heartbeats": self.counts["heartbeats"],
            "duplicates": sub_duplicates + self.counts["duplicates_db"],
            "gaps": self.counts["gaps"],
            "missing": self.counts["missing"],
            "restarts": self.counts["restarts"],
            "invalid": 0 if self.sub is None else self.sub.invalid,
        }

    def summary_line(self) -> str:
        s = self.summary()
        line = (
            f"{self.written} records written ({s['estimates']} estimates, {s['status']} status, "
            f"{s['heartbeats']} heartbeats), {s['duplicates']} duplicates, {s['gaps']} gaps "
            f"({s['missing']} estimates missing), {s['restarts']} restarts, {s['invalid']} invalid"
        )
        if self.sub is not None and self.sub.last_error is not None:
            line += f" (last invalid: {self.sub.last_error})"
        return line

    def stop(self) -> None:
        if self.sub is not None:
            self.sub.close()
        if self.store is not None:
            try:
                if self.store.session is not None:
                    self.store.close_session(self.summary())
            except sqlite3.Error as e:  # e.g. the disk that failed a record fails this update too
                log.error("record: %s: could not write the session's counters: %s", self.cfg.db, e)
            finally:
                self.store.close()
            log.info("record: stopped: %s → %s", self.summary_line(), self.cfg.db)


# ---------------------------------------------------------------- export


def open_readonly(path: str | Path) -> sqlite3.Connection:
    """A read-only connection to a recording (a recorder may be writing it at the same time)."""
    path = Path(path)
    if not path.is_file():
        raise RecordError(f"{path}: no such recording; give --db the file edge-agent record wrote")
    conn = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True, timeout=5.0)
    try:
        if not _check_version(conn, path):
            raise RecordError(f"{path}: empty database, not an edge-agent recording")
    except BaseException:
        conn.close()
        raise
    return conn


def csv_paths(out: str | Path) -> dict[str, Path]:
    """Export file names: estimates to ``out``, status and gaps beside it (``x.csv`` →
    ``x.status.csv``, ``x.gaps.csv``)."""
    out = Path(out)
    suffix = out.suffix or ".csv"
    return {
        "estimates": out,
        "status": out.with_name(f"{out.stem}.status{suffix}"),
        "gaps": out.with_name(f"{out.stem}.gaps{suffix}"),
    }


def export_csv(db: str | Path, out: str | Path) -> dict[str, tuple[Path, int]]:
    """Write the recording's estimates, status and gaps as CSV files with a header row (columns
    :data:`CSV_COLUMNS`, rows by stream then arrival; empty cell = null). Returns table → (path, rows)."""
    conn = open_readonly(db)
    written: dict[str, tuple[Path, int]] = {}
    try:
        for table, path in csv_paths(out).items():
            columns = CSV_COLUMNS[table]
            rows = conn.execute(f"SELECT {', '.join(columns)} FROM {table} ORDER BY stream, id")
            n = 0
            with path.open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(columns)
                for row in rows:
                    writer.writerow(row)
                    n += 1
            written[table] = (path, n)
    finally:
        conn.close()
    return written
