"""``edge-agent record``: real recorder processes, real ZeroMQ publishers, real SQLite files.

A deterministic publisher (a real XPUB socket sending real wire messages with known seq numbers,
answering each subscription with its last message per topic like the hub's last-value cache)
drives the crash, restart, duplicate, gap and export tests; one test records a real agent. The
pure row mapping is checked against every valid estimate hypothesis can make.
"""

from __future__ import annotations

import csv
import json
import math
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from fixtures import summary_body
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edge_agent.clients import record, subscriber
from edge_agent.clients.subscriber import T_RECEIVED
from edge_agent.live.agent import Agent, load_agent_config
from edge_agent.protocol import wire

ROOT = Path(__file__).resolve().parents[2]
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# ---------------------------------------------------------------- builders


def estimate(stream: str, seq: int, t_published: float, **extra: Any) -> list[bytes]:
    body = {
        "seq": seq,
        "frame_seq": [seq * 50, seq * 50 + 49],
        "t": [t_published - 1.5, t_published - 0.5],
        "t_ready": t_published - 0.3,
        "t_published": t_published,
        "beat": summary_body(50.0 + seq % 7),
        "running": {**summary_body(52.0), "n_beats": 1 + seq % 5},
        "hr_bpm": 70.0,
        "backend": "onnxruntime",
        "latency_ms": 500.0 + seq,
        "stages": {"detect": 200.0, "window": 1.0, "to_worker": 2.0, "infer": 290.0, "publish": 7.0 + seq},
        "reliable": True,
        "ood_score": 0.5,
        "beat_ood_score": 0.5,
        "truth": {"ef": 55.0},
        **extra,
    }
    return [bytes(p) for p in wire.encode_estimate(stream, body)]


def status(stream: str, t: float, **extra: Any) -> list[bytes]:
    body = {
        "t": t,
        "fps": 50.0,
        "hr_bpm": 70.0,
        "signal": "ok",
        "windows_dropped": 1,
        "frames_dropped": 2,
        "seq_gaps": 0,
        "queue": 1,
        **extra,
    }
    return [bytes(p) for p in wire.encode_status(stream, body)]


def heartbeat(t: float, pid: int = 4242) -> list[bytes]:
    return [bytes(p) for p in wire.encode_heartbeat({"host": "edge-01", "pid": pid, "uptime_s": t, "t": t})]


class Publisher:
    """A real XPUB socket on a random loopback tcp port that, like the hub, answers every new
    subscription with the last message of each matching topic (its last-value cache)."""

    def __init__(self) -> None:
        self.ctx = zmq.Context()
        self.sock = self.ctx.socket(zmq.XPUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.XPUB_VERBOSE, 1)
        self.sock.setsockopt(zmq.SNDHWM, 100_000)
        port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self.endpoint = f"tcp://127.0.0.1:{port}"
        self.cache: dict[bytes, list[bytes]] = {}
        self.subscriptions = 0

    def pump(self, timeout_s: float = 0.0) -> None:
        """Answer the subscriptions that arrived (within ``timeout_s`` s for the first)."""
        while self.sock.poll(int(timeout_s * 1000)):
            timeout_s = 0.0
            event = self.sock.recv()
            if event[:1] == b"\x01":
                self.subscriptions += 1
                for topic, message in self.cache.items():
                    if topic.startswith(event[1:]):
                        self.sock.send_multipart(message)

    def wait_subscriber(self, timeout_s: float = 20.0) -> None:
        before, deadline = self.subscriptions, time.monotonic() + timeout_s
        while self.subscriptions == before:
            assert time.monotonic() < deadline, "no subscriber connected"
            self.pump(0.1)

    def send(self, parts: list[bytes]) -> None:
        self.pump()
        self.cache[parts[0]] = parts
        self.sock.send_multipart(parts)

    def close(self) -> None:
        self.ctx.destroy(linger=0)


def start_recorder(db: Path, endpoint: str, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "edge_agent", "record", "--db", str(db), "--connect", endpoint, *extra]
    return subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True)


def stop(proc: subprocess.Popen, how: signal.Signals = signal.SIGTERM) -> str:
    proc.send_signal(how)
    try:
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
    return err


def rows(db: Path, sql: str, *args: Any) -> list[tuple]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


def committed_seqs(db: Path) -> list[int]:
    """What a concurrent reader sees committed (WAL lets it read while the recorder writes)."""
    if not db.exists():
        return []
    try:
        return [r[0] for r in rows(db, "SELECT seq FROM estimates ORDER BY id")]
    except sqlite3.OperationalError:  # the recorder has not made its tables yet
        return []


def wait_for(predicate, timeout_s: float, what: str, publisher: Publisher | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        if publisher is not None:
            publisher.pump(0.05)
        else:
            time.sleep(0.05)


def assert_sound(db: Path) -> None:
    assert rows(db, "PRAGMA integrity_check") == [("ok",)]
    assert rows(db, "PRAGMA journal_mode") == [("wal",)]
    assert rows(db, "SELECT version, wire_version FROM schema_version") == [
        (record.DB_SCHEMA_VERSION, wire.SCHEMA_VERSION)
    ]
    dupes = rows(
        db, "SELECT stream, seq, t_published, count(*) FROM estimates GROUP BY 1, 2, 3 HAVING count(*) > 1"
    )
    assert dupes == []


# ---------------------------------------------------------------- crash, restart, gaps, duplicates


def test_sigkill_mid_stream_keeps_every_committed_estimate_in_order(tmp_path: Path) -> None:
    """SIGKILL while estimates pour in: what a reader saw committed before the kill is all still
    there, the rows are an unbroken prefix of what was published (so at most the message in hand
    was lost), the skipped seq is a recorded gap, and the database is intact in WAL mode."""
    db = tmp_path / "rec.db"
    pub = Publisher()
    proc = start_recorder(db, pub.endpoint, "--progress", "0")
    try:
        pub.wait_subscriber()
        t0 = time.monotonic()
        seq, skipped, seen_before_kill = 0, 7, []
        while True:
            if seq != skipped:
                pub.send(estimate("bed1", seq, t0 + seq * 0.01))
            if seq % 10 == 0:
                pub.send(status("bed1", t0 + seq * 0.01))
                pub.send(heartbeat(t0 + seq * 0.01))
            seq += 1
            time.sleep(0.003)
            if seq == 30:  # a pause: every message received is committed, none held back for a batch
                wait_for(lambda: len(committed_seqs(db)) == 29, 20, "estimates 0-29 committed", pub)
            if seq % 20 == 0:
                seen_before_kill = committed_seqs(db)
                if len(seen_before_kill) >= 60:
                    break
            assert seq < 20_000, "the recorder committed nothing"
        proc.send_signal(signal.SIGKILL)  # mid-stream: the publisher was still sending
        for extra in range(seq, seq + 20):
            pub.send(estimate("bed1", extra, t0 + extra * 0.01))
        _out, err = proc.communicate(timeout=20)
    finally:
        proc.kill()
        pub.close()
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    assert_sound(db)
    seqs = committed_seqs(db)
    assert seqs[: len(seen_before_kill)] == seen_before_kill  # nothing committed was lost
    assert seqs == [s for s in range(seqs[-1] + 1) if s != skipped]  # an unbroken prefix
    assert rows(db, "SELECT stream, kind, prev_seq, seq, missing FROM gaps") == [("bed1", "gap", 6, 8, 1)]
    assert "estimate seq gap: 8 follows 6, 1 missing" in err
    assert rows(db, "SELECT count(*) FROM status")[0][0] >= 6
    # A crashed session has no end time and no counters: the audit trail shows the crash.
    assert rows(db, "SELECT ended_utc, estimates FROM sessions") == [(None, None)]
    hosts = rows(db, "SELECT host, pid, heartbeats FROM publishers")
    assert hosts[0][:2] == ("edge-01", 4242) and hosts[0][2] >= 6


def test_restart_resumes_ignores_cache_resends_and_records_gaps_restarts_invalid(tmp_path: Path) -> None:
    db = tmp_path / "rec.db"
    pub = Publisher()
    try:
        first = start_recorder(db, pub.endpoint, "--progress", "0")
        pub.wait_subscriber()
        for seq in range(10):
            pub.send(estimate("bed1", seq, 100.0 + seq))
        pub.send(status("bed1", 110.0))
        wait_for(lambda: len(committed_seqs(db)) == 10, 20, "10 estimates", pub)
        err1 = stop(first)
        assert first.returncode == 0, err1[-2000:]
        assert "11 records written (10 estimates, 1 status, 0 heartbeats), 0 duplicates" in err1

        # The second run's subscription is answered with seq 9 and the status again (already
        # recorded: ignored by the database), then 10 and 11 are skipped, then the numbering
        # restarts, an estimate comes twice (dropped by the subscriber), and one message is garbage.
        second = start_recorder(db, pub.endpoint, "--progress", "0")
        pub.wait_subscriber()
        for seq in (12, 13, 14):
            pub.send(estimate("bed1", seq, 100.0 + seq))
        pub.send(estimate("bed1", 0, 200.0))
        pub.send(estimate("bed1", 1, 201.0))
        pub.send(estimate("bed1", 1, 201.0))
        pub.send([b"lvef.bed1", b"\xc1 not msgpack"])
        pub.send(estimate("bed2", 5, 300.0))  # another stream's first: neither gap nor restart
        # The duplicate and the garbage went out before bed2's estimate: handled once it is stored.
        wait_for(lambda: len(committed_seqs(db)) == 16, 20, "16 estimates", pub)
        err2 = stop(second)
        assert second.returncode == 0, err2[-2000:]
    finally:
        pub.close()
    assert_sound(db)
    assert committed_seqs(db) == [*range(10), 12, 13, 14, 0, 1, 5]
    assert rows(db, "SELECT session, stream, kind, prev_seq, seq, missing FROM gaps ORDER BY id") == [
        (2, "bed1", "gap", 9, 12, 2),
        (2, "bed1", "restart", 14, 0, 0),
    ]
    sessions = rows(
        db,
        "SELECT id, ended_utc IS NOT NULL, estimates, status, duplicates, gaps, missing, restarts, invalid "
        "FROM sessions ORDER BY id",
    )
    assert sessions == [(1, 1, 10, 1, 0, 0, 0, 0, 0), (2, 1, 6, 0, 3, 1, 2, 1, 1)]
    assert (
        "6 estimates, 0 status, 0 heartbeats), 3 duplicates, 1 gaps (2 estimates missing), 1 restarts" in err2
    )
    assert "1 invalid (last invalid: estimate body: not valid msgpack" in err2
    assert "bed1 numbering restarted at seq 0" in err2


def test_csv_export_has_a_header_and_every_row(tmp_path: Path) -> None:
    db = tmp_path / "rec.db"
    store = record.RecordStore(db)
    store.open_session(["tcp://127.0.0.1:1"], [""])
    messages = [
        *(wire.decode_estimate(estimate("bed1", s, 10.0 + s)) for s in (0, 1, 3)),
        wire.decode_estimate(estimate("bed0", 0, 50.0, hr_bpm=None)),
        wire.decode_status(status("bed1", 12.0)),
        wire.decode_status(status("bed1", 13.0, signal="stale", hr_bpm=None)),
    ]
    for msg in messages:
        if msg["kind"] == "estimate":
            store.add_estimate(record.estimate_row(msg, 1.7e9))
        else:
            store.add_status(record.status_row(msg, 1.7e9))
    store.close()

    out = tmp_path / "export" / "run.csv"
    out.parent.mkdir()
    done = subprocess.run(
        [sys.executable, "-m", "edge_agent", "record", "--db", str(db), "--export-csv", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert "estimates: 4 rows" in done.stdout and "status: 2 rows" in done.stdout
    tables = {name: list(csv.DictReader(path.open())) for name, path in record.csv_paths(out).items()}
    assert record.csv_paths(out)["status"].name == "run.status.csv"
    for name, path in record.csv_paths(out).items():
        assert next(csv.reader(path.open())) == record.CSV_COLUMNS[name]
    est = tables["estimates"]
    # By stream, then arrival.
    assert [(r["stream"], int(r["seq"])) for r in est] == [("bed0", 0), ("bed1", 0), ("bed1", 1), ("bed1", 3)]
    assert est[0]["hr_bpm"] == "" and float(est[1]["hr_bpm"]) == 70.0  # null → empty cell
    assert float(est[3]["t_published"]) == 13.0 and float(est[3]["latency_ms"]) == 503.0
    assert float(est[3]["stage_publish_ms"]) == 10.0 and est[3]["beat_multimodal"] == "0"
    assert math.isclose(float(est[3]["latency_from_ready_ms"]), 300.0)
    assert [(r["signal"], r["hr_bpm"], r["queue"]) for r in tables["status"]] == [
        ("ok", "70.0", "1"),
        ("stale", "", "1"),
    ]
    assert [(r["kind"], r["prev_seq"], r["seq"], r["missing"]) for r in tables["gaps"]] == [
        ("gap", "1", "3", "1")
    ]

    refused = subprocess.run(
        [
            sys.executable,
            "-m",
            "edge_agent",
            "record",
            "--db",
            str(db),
            "--export-csv",
            str(out),
            "--connect",
            "x",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and "--export-csv reads --db only; drop --connect" in refused.stderr


def test_recording_a_real_agent_survives_sigkill(tmp_path: Path) -> None:
    cfg = load_agent_config(
        None,
        [
            "transport.publish=ipc://{run}/publish",
            "supervisor.log_level=WARNING",
            "worker.threads=1",
        ],
        sources=["synthetic://?seed=1&fps=50&ecg=1"],
    )
    agent = Agent(cfg)
    db = tmp_path / "agent.db"
    agent.start()
    proc = start_recorder(db, agent.endpoints["publish"], "--progress", "0")
    try:
        deadline = time.monotonic() + 60
        while len(committed_seqs(db)) < 4:
            assert time.monotonic() < deadline, "the recorder stored no 4 estimates within 60 s"
            agent.check()
            time.sleep(0.2)
        seen = committed_seqs(db)
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=20)
    finally:
        proc.kill()
        agent.stop()
    assert agent.leftovers() == {"processes": [], "rings": []}
    assert_sound(db)
    seqs = committed_seqs(db)
    assert seqs[: len(seen)] == seen
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))
    assert rows(db, "SELECT count(*) FROM gaps") == [(0,)]
    est = rows(db, "SELECT stream, backend, running_n_beats, received_unix, message FROM estimates")
    assert {(r[0], r[1]) for r in est} == {("bed1", "onnxruntime")}
    assert all(abs(time.time() - r[3]) < 120 for r in est)
    message = json.loads(est[-1][4])
    assert message["kind"] == "estimate" and message["running"]["n_beats"] == est[-1][2]
    status_rows = rows(db, "SELECT signal, fps, queue FROM status WHERE stream = 'bed1'")
    assert status_rows and all(q is not None and q >= 0 for _s, _f, q in status_rows)  # the hub's queue
    assert rows(db, "SELECT pid FROM publishers")[0][0] > 1


# ---------------------------------------------------------------- the database alone


def test_store_refuses_databases_it_did_not_make(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE patients (id INTEGER)")
    conn.commit()
    conn.close()
    with pytest.raises(record.RecordError, match=r"other.db: not an edge-agent recording.*new file"):
        record.RecordStore(other)
    newer = tmp_path / "newer.db"
    record.RecordStore(newer).close()
    conn = sqlite3.connect(newer)
    conn.execute("UPDATE schema_version SET version = 99")
    conn.commit()
    conn.close()
    with pytest.raises(
        record.RecordError,
        match=f"schema version 99, this edge-agent writes version {record.DB_SCHEMA_VERSION}",
    ):
        record.RecordStore(newer)
    with pytest.raises(record.RecordError, match="does not exist; create it first"):
        record.RecordStore(tmp_path / "missing" / "x.db")
    with pytest.raises(record.RecordError, match="no such recording"):
        record.export_csv(tmp_path / "absent.db", tmp_path / "x.csv")
    with pytest.raises(record.RecordError, match="synchronous"):
        record.RecordStore(tmp_path / "y.db", synchronous="OFF")


@pytest.mark.parametrize("level, code", [("NORMAL", 1), ("FULL", 2)])
def test_store_sets_wal_and_the_synchronous_level(tmp_path: Path, level: str, code: int) -> None:
    store = record.RecordStore(tmp_path / "r.db", synchronous=level)
    try:
        assert store.conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert store.conn.execute("PRAGMA synchronous").fetchone() == (code,)
    finally:
        store.close()


def test_heartbeats_update_one_row_per_publisher(tmp_path: Path) -> None:
    store = record.RecordStore(tmp_path / "r.db")
    store.open_session(["x"], [""])
    hb = wire.decode_heartbeat(heartbeat(5.0))
    assert store.add_heartbeat(hb, 1000.0)
    assert not store.add_heartbeat(hb, 1000.5)  # the cache's re-send of the same heartbeat
    assert store.add_heartbeat(wire.decode_heartbeat(heartbeat(6.0)), 1003.0)
    assert store.add_heartbeat(wire.decode_heartbeat(heartbeat(0.5, pid=7)), 1004.0)  # restarted agent
    got = store.conn.execute(
        "SELECT host, pid, heartbeats, uptime_s, max_silence_s, last_t FROM publishers ORDER BY pid"
    ).fetchall()
    store.close()
    assert got == [("edge-01", 7, 1, 0.5, 0.0, 0.5), ("edge-01", 4242, 2, 6.0, 3.0, 6.0)]


# ---------------------------------------------------------------- pure functions


@pytest.mark.parametrize(
    "prev, seq, kind, missing",
    [
        (None, 0, "first", 0),
        (None, 17, "first", 0),
        (4, 5, "next", 0),
        (4, 6, "gap", 1),
        (4, 100, "gap", 95),
        (4, 0, "restart", 0),
        (4, 2, "restart", 2),
        (4, 4, "restart", 4),
    ],
)
def test_classify_seq(prev: int | None, seq: int, kind: str, missing: int) -> None:
    assert subscriber.classify_seq(prev, seq) == subscriber.SeqStep(kind, missing)


def test_utc_iso_is_utc_with_microseconds() -> None:
    assert record.utc_iso(0.25) == "1970-01-01T00:00:00.250000Z"
    assert record.utc_iso(1_700_000_000.0) == "2023-11-14T22:13:20.000000Z"


def test_status_row_with_and_without_queue() -> None:
    msg = wire.decode_status(status("bed1", 12.0, signal="lost", fps=0.0))
    msg[T_RECEIVED] = 99.0
    row = record.status_row(msg, 0.0)
    assert list(row) == [c for c, _t in record.STATUS_COLUMNS]
    assert (row["signal"], row["fps"], row["queue"], row["windows_dropped"]) == ("lost", 0.0, 1, 1)
    assert json.loads(row["message"]) == {k: v for k, v in msg.items() if k != T_RECEIVED}
    report = {k: v for k, v in msg.items() if k not in ("queue", T_RECEIVED, "v", "kind", "stream")}
    assert record.status_row(wire.decode_status(wire.encode_status("bed1", report)), 0.0)["queue"] is None


FINITE = st.floats(allow_nan=False, allow_infinity=False, min_value=-1e12, max_value=1e12)
EF = st.floats(0.0, 100.0)
SEQS = st.integers(0, 2**63 - 1)


def ordered(values: st.SearchStrategy) -> st.SearchStrategy:
    return st.tuples(values, values).map(sorted)


SUMMARIES = st.fixed_dictionaries(
    {
        "n_samples": st.integers(1, 4096),
        **{k: EF for k in ("mean", "median", "std", "q05", "q25", "q75", "q95")},
        "ci90": ordered(EF),
        "ci95": ordered(EF),
        "p_ef_lt_40": st.floats(0.0, 1.0),
        "p_ef_lt_50": st.floats(0.0, 1.0),
        "multimodal": st.booleans(),
    }
)
ESTIMATES = st.fixed_dictionaries(
    {
        "seq": SEQS,
        "frame_seq": ordered(SEQS),
        "t": ordered(FINITE),
        "t_ready": FINITE,
        "t_published": FINITE,
        "beat": SUMMARIES,
        "running": st.tuples(SUMMARIES, st.integers(1, 10**6)).map(lambda p: {**p[0], "n_beats": p[1]}),
        "hr_bpm": st.none() | st.floats(min_value=1e-3, max_value=400.0),
        "backend": st.sampled_from(["torch", "onnxruntime", "tensorrt"]),
        "latency_ms": FINITE,
        "stages": st.dictionaries(st.sampled_from([*record.STAGES, "extra"]), FINITE, max_size=6),
        "reliable": st.booleans(),
        "ood_score": st.none() | st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
        "beat_ood_score": st.none() | st.floats(min_value=0.0, allow_infinity=False, allow_nan=False),
    },
    optional={"truth": st.dictionaries(st.sampled_from(["ef", "ef_running", "other"]), FINITE)},
)
STREAMS = st.from_regex(wire.STREAM_PATTERN, fullmatch=True)


@FAST
@given(STREAMS, ESTIMATES, st.floats(0, 4e9))
def test_estimate_row_maps_every_valid_estimate(stream: str, body: dict[str, Any], received: float) -> None:
    msg = wire.decode_estimate(wire.encode_estimate(stream, body))
    msg[T_RECEIVED] = 1.0  # what Subscriber.recv adds: not part of the recorded message
    row = record.estimate_row(msg, received)
    assert list(row) == [c for c, _t in record.ESTIMATE_COLUMNS]
    assert (row["stream"], row["seq"], row["t_published"]) == (stream, body["seq"], body["t_published"])
    assert (row["t_first"], row["t_last"]) == tuple(body["t"])
    assert (row["frame_first"], row["frame_last"]) == tuple(body["frame_seq"])
    for part in ("beat", "running"):
        summary_ = body[part]
        assert row[f"{part}_mean"] == summary_["mean"] and row[f"{part}_std"] == summary_["std"]
        assert (row[f"{part}_ci90_lo"], row[f"{part}_ci90_hi"]) == tuple(summary_["ci90"])
        assert (row[f"{part}_ci95_lo"], row[f"{part}_ci95_hi"]) == tuple(summary_["ci95"])
        assert row[f"{part}_p_ef_lt_40"] == summary_["p_ef_lt_40"]
        assert row[f"{part}_multimodal"] == int(summary_["multimodal"])
    assert row["running_n_beats"] == body["running"]["n_beats"]
    assert row["hr_bpm"] == body["hr_bpm"] and row["backend"] == body["backend"]
    assert row["latency_ms"] == body["latency_ms"]
    assert row["latency_from_ready_ms"] == 1000.0 * (body["t_published"] - body["t_ready"])
    for name in record.STAGES:
        assert row[f"stage_{name}_ms"] == body["stages"].get(name)
    truth = body.get("truth", {})
    assert (row["truth_ef"], row["truth_ef_running"]) == (truth.get("ef"), truth.get("ef_running"))
    assert json.loads(row["message"]) == {"v": 2, "kind": "estimate", "stream": stream, **body}
    assert row["received_unix"] == received and re.fullmatch(
        r"\d{4}-\d\d-\d\dT[\d:.]{15}Z", row["received_utc"]
    )
    # The row satisfies the table's types and NOT NULL constraints, and reads back unchanged.
    conn = sqlite3.connect(":memory:")
    for statement in record.SCHEMA:
        conn.execute(statement)
    conn.execute("INSERT INTO sessions (started_utc, pid, endpoints, topics) VALUES ('', 1, '', '')")
    conn.execute(
        f"INSERT INTO estimates (session, {', '.join(row)}) VALUES (1, {', '.join('?' * len(row))})",
        tuple(row.values()),
    )
    back = conn.execute(f"SELECT {', '.join(row)} FROM estimates").fetchone()
    conn.close()
    assert back == tuple(row.values())


def test_record_count_option_stops_the_recorder(tmp_path: Path) -> None:
    """``--count`` ends a run after that many records, with the summary written to the session row."""
    db = tmp_path / "rec.db"
    pub = Publisher()
    proc = start_recorder(db, pub.endpoint, "--count", "3", "--topic", "lvef.bed1.")
    try:
        pub.wait_subscriber()
        for seq in range(6):
            pub.send(status("bed1", 50.0 + seq))  # not subscribed: never arrives
            pub.send(estimate("bed1", seq, 100.0 + seq))
            pub.send(estimate("bed10", seq, 100.0 + seq))  # prefix match: recorded too
        _out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        pub.close()
    assert proc.returncode == 0, err[-2000:]
    assert db.exists() and not Path(f"{db}-wal").exists()  # the clean close checkpointed the log
    assert rows(db, "SELECT count(*) FROM estimates") == [(3,)]
    assert rows(db, "SELECT count(*) FROM status") == [(0,)]
    assert rows(db, "SELECT estimates, ended_utc IS NOT NULL FROM sessions") == [(3, 1)]
