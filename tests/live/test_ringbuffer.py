"""Shared-memory frame ring: real /dev/shm segments, readers and writers in real processes."""

from __future__ import annotations

import mmap
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.queues import Queue
from multiprocessing.shared_memory import SharedMemory
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.live.ringbuffer import (
    AUX_LEN,
    FLAG_R_WAVE,
    HEADER_DTYPE,
    LAYOUT_VERSION,
    SHM_DIR,
    Frame,
    FrameRing,
    RingClosedError,
    RingLayoutError,
    RingReader,
    _data_offset,
    _slot_stride,
    cleanup_stale,
    slot_checksum,
)

CTX = mp.get_context("spawn")  # children start fresh: nothing shared but the segment itself
SHAPE = (112, 112)
PATTERN_PERIOD = 251  # prime: frames i and i + n_slots differ unless n_slots is a multiple of it
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def prefix() -> Iterator[str]:
    """A name prefix of this test's own: cleanup_stale(prefix) never touches other segments."""
    p = f"edge_agent_test_{uuid.uuid4().hex[:10]}_"
    yield p
    for leftover in SHM_DIR.glob(p + "*"):  # a failed test must not leak into /dev/shm
        leftover.unlink()


def _random_frame(i: int) -> np.ndarray:
    return np.random.default_rng(i).integers(0, 256, SHAPE, dtype=np.uint8)


def _poke_header(name: str, field: str, value: int) -> None:
    """Overwrite one header field of a segment, as a corrupt or foreign writer would."""
    with open(SHM_DIR / name, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
        np.ndarray((), HEADER_DTYPE, buffer=mm)[field] = value


# ---- child processes (module level, so "spawn" can import them) ----


def _reader_server(conn: Connection) -> None:
    """Serve reader commands until None: ("open", name, start) → reader id,
    ("poll", id) → (frames, missed, torn), ("close", id) → None."""
    readers: dict[int, tuple[FrameRing, RingReader]] = {}
    for cmd, *args in iter(conn.recv, None):
        if cmd == "open":
            name, start = args
            ring = FrameRing.attach(name)
            readers[len(readers)] = (ring, RingReader(ring, start))
            conn.send(len(readers) - 1)
        elif cmd == "poll":
            reader = readers[args[0]][1]
            conn.send((reader.poll(), reader.missed, reader.torn))
        else:
            readers[args[0]][0].close()
            conn.send(None)


def _fast_writer(
    name: str, n_slots: int, duration: float, created: Event, attached: Barrier, out: Queue
) -> None:
    """Write frames filled with frame_seq % PATTERN_PERIOD as fast as possible for `duration` s."""
    frames = [np.full(SHAPE, v, np.uint8) for v in range(PATTERN_PERIOD)]
    with FrameRing.create(name, n_slots) as ring:
        created.set()
        attached.wait(20)
        i, end = 0, time.monotonic() + duration
        while time.monotonic() < end:
            ring.write(frames[i % PATTERN_PERIOD], i, i * 1e-3)
            i += 1
    out.put(("writer", i))


def _checking_reader(name: str, created: Event, attached: Barrier, out: Queue) -> None:
    """Read until the writer closes; count frames whose content, frame_seq and t disagree."""
    assert created.wait(20), "writer did not create its ring"
    ring = FrameRing.attach(name)
    reader = RingReader(ring, "oldest")
    attached.wait(20)
    inconsistent, out_of_order, last = 0, 0, -1
    while True:
        try:
            # Spin (no sleep between polls): as many copies as possible race the writer.
            frames = reader.read(timeout=10.0, poll_interval=0.0)
        except RingClosedError:
            break
        for f in frames:
            value = f.frame_seq % PATTERN_PERIOD
            if not (f.pixels == value).all() or f.t != f.frame_seq * 1e-3:
                inconsistent += 1
            out_of_order += f.frame_seq <= last
            last = f.frame_seq
    ring.close()
    out.put(("reader", reader.delivered, reader.missed, reader.torn, inconsistent, out_of_order))


def _writer_then(name: str, created: Event, ending: str) -> None:
    """Create a ring, write a frame, then end: "return" normally, or wait for the parent's signal."""
    ring = FrameRing.create(name, 4)
    ring.write(np.zeros(SHAPE, np.uint8), 0, 0.0)
    created.set()
    if ending != "return":
        time.sleep(60)


@pytest.fixture(scope="module")
def reader_proc() -> Iterator[Connection]:
    """One reader process shared by the tests below (saves a spawn per test)."""
    parent, child = CTX.Pipe()
    proc = CTX.Process(target=_reader_server, args=(child,), daemon=True)
    proc.start()
    yield parent
    parent.send(None)
    proc.join(10)
    assert proc.exitcode == 0


def _ask(conn: Connection, *cmd: object) -> object:
    conn.send(cmd)
    assert conn.poll(20), "reader process did not answer"
    return conn.recv()


# ---- tests ----


def test_wraparound_readers_in_another_process_get_frames_in_order(prefix, reader_proc):
    n = 8
    name = prefix + "wrap"
    sent: list[np.ndarray] = []
    following: list[Frame] = []
    with FrameRing.create(name, n) as ring:
        live = _ask(reader_proc, "open", name, "latest")
        for i in range(3 * n):
            sent.append(_random_frame(i))
            ring.write(sent[-1], 1000 + i, 5.0 + 0.02 * i)
            if i % 4 == 3:  # half a ring between polls: the live reader is never lapped
                frames, missed, torn = _ask(reader_proc, "poll", live)
                following += frames
        late = _ask(reader_proc, "open", name, "oldest")
        recent, late_missed, _ = _ask(reader_proc, "poll", late)
        for reader_id in (live, late):
            _ask(reader_proc, "close", reader_id)
        assert ring.written == 3 * n
    assert (missed, torn, late_missed) == (0, 0, 0)
    assert [f.frame_seq for f in following] == [1000 + i for i in range(3 * n)]
    # A reader arriving after three laps starts at the oldest frame still held: the last n.
    assert [f.frame_seq for f in recent] == [1000 + i for i in range(2 * n, 3 * n)]
    for f in following + recent:
        i = f.frame_seq - 1000
        assert f.t == 5.0 + 0.02 * i
        np.testing.assert_array_equal(f.pixels, sent[i])
        assert f.pixels.shape == SHAPE and f.pixels.dtype == np.uint8


def test_lapped_reader_counts_missed_frames_and_resumes_at_oldest(prefix, reader_proc):
    n = 8
    name = prefix + "lap"
    with FrameRing.create(name, n) as ring:
        rid = _ask(reader_proc, "open", name, "oldest")

        def write(count: int) -> None:
            for _ in range(count):
                i = ring.written
                ring.write(_random_frame(i), i, float(i))

        write(4)
        frames, missed, _ = _ask(reader_proc, "poll", rid)
        assert [f.frame_seq for f in frames] == [0, 1, 2, 3] and missed == 0
        write(19)  # frames 4..22: slots of 4..14 are overwritten before the reader looks again
        frames, missed, torn = _ask(reader_proc, "poll", rid)
        assert missed == 11 and torn == 0
        assert [f.frame_seq for f in frames] == list(range(15, 23))  # the oldest still held, on
        np.testing.assert_array_equal(frames[0].pixels, _random_frame(15))
        write(2)
        frames, missed, _ = _ask(reader_proc, "poll", rid)
        assert [f.frame_seq for f in frames] == [23, 24] and missed == 11
        _ask(reader_proc, "close", rid)


@settings(max_examples=30, deadline=None)
@given(
    n_slots=st.integers(1, 6),
    steps=st.lists(st.tuples(st.integers(0, 15), st.none() | st.integers(1, 4)), min_size=1, max_size=12),
)
def test_cursor_matches_a_model_of_lapping(n_slots, steps):
    """Any interleaving of writes and polls: frames delivered in order, skipped ones all counted."""
    name = f"edge_agent_test_model_{uuid.uuid4().hex[:10]}"
    with FrameRing.create(name, n_slots, shape=(3,)) as ring, FrameRing.attach(name) as view:
        reader = RingReader(view, "oldest")
        pos = missed = 0
        for n_writes, max_frames in steps:
            for _ in range(n_writes):
                i = ring.written
                ring.write(np.full(3, i % 256, np.uint8), i, float(i))
            written = ring.written
            if written - pos > n_slots:
                missed += written - n_slots - pos
                pos = written - n_slots
            end = written if max_frames is None else min(written, pos + max_frames)
            frames = reader.poll(max_frames)
            assert [f.frame_seq for f in frames] == list(range(pos, end))
            assert all((f.pixels == f.frame_seq % 256).all() for f in frames)
            pos = end
            assert (reader.missed, reader.position) == (missed, pos)
            assert reader.delivered + reader.missed == pos  # nothing dropped uncounted


def test_concurrent_readers_never_get_a_torn_frame(prefix):
    name = prefix + "hammer"
    n_readers = 3
    created, attached, out = CTX.Event(), CTX.Barrier(n_readers + 1), CTX.Queue()
    # Two slots and a writer at full speed: the slot a reader copies is being rewritten most of
    # the time. (With the seq re-check removed from poll, this test sees dozens to thousands of
    # torn frames per reader.)
    procs = [
        CTX.Process(target=_checking_reader, args=(name, created, attached, out)) for _ in range(n_readers)
    ]
    procs.append(CTX.Process(target=_fast_writer, args=(name, 2, 1.5, created, attached, out)))
    for p in procs:
        p.start()
    try:
        results = [out.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(10)
    finally:
        for p in procs:
            if p.is_alive():
                p.kill()
                p.join()
    assert [p.exitcode for p in procs] == [0] * len(procs)
    (n_written,) = [r[1] for r in results if r[0] == "writer"]
    assert n_written > 1000
    for _, delivered, missed, torn, inconsistent, out_of_order in (r for r in results if r[0] == "reader"):
        assert inconsistent == 0 and out_of_order == 0
        assert delivered > 0
        assert delivered + missed == n_written  # every frame delivered or counted
        assert torn <= missed
    assert not (SHM_DIR / name).exists()  # the writer's close unlinked it


def test_a_copy_whose_pixels_changed_under_a_complete_seq_is_counted_torn(prefix):
    # What a weakly ordered CPU (AArch64) may show a reader: the slot's seq says "frame complete"
    # while some of the pixels it copies are another frame's. The seqlock cannot see it; the
    # checksum must. Simulated by changing one pixel of a complete slot behind the seq's back.
    with FrameRing.create(prefix + "weak", 4) as ring:
        view = FrameRing.attach(ring.name)
        reader = RingReader(view, start="oldest")
        for k in range(3):
            ring.write(np.full(SHAPE, k, np.uint8), k, 1.0 + k, aux=[float(k)])
        with open(SHM_DIR / ring.name, "r+b") as f, mmap.mmap(f.fileno(), 0) as mm:
            offset = _data_offset(ring.n_slots) + _slot_stride(ring.shape, ring.dtype) * 1 + 57
            mm[offset] ^= 0x01  # frame 1, one pixel, one bit
        frames = reader.poll()
        assert [f.frame_seq for f in frames] == [0, 2]
        assert (reader.delivered, reader.missed, reader.torn) == (2, 1, 1)
        view.close()


def test_slot_checksum_covers_every_field_and_the_lap() -> None:
    pixels, aux = np.arange(64, dtype=np.uint8).reshape(8, 8), np.full(AUX_LEN, np.nan)
    base = (4, pixels, 7, 1.25, 0, aux)
    changed = [
        (6, pixels, 7, 1.25, 0, aux),  # the same frame on another lap
        (4, pixels[::-1], 7, 1.25, 0, aux),
        (4, pixels, 8, 1.25, 0, aux),
        (4, pixels, 7, 1.5, 0, aux),
        (4, pixels, 7, 1.25, FLAG_R_WAVE, aux),
        (4, pixels, 7, 1.25, 0, np.where(np.arange(AUX_LEN) == 0, 1.0, np.nan)),
    ]
    assert slot_checksum(*base) == slot_checksum(4, pixels.copy(), 7, 1.25, 0, aux.copy())
    assert all(slot_checksum(*c) != slot_checksum(*base) for c in changed)


def test_clean_close_unlinks_and_readers_drain_then_see_closed(prefix):
    name = prefix + "close"
    ring = FrameRing.create(name, 4)
    view = FrameRing.attach(name)
    reader = RingReader(view)
    ring.write(np.ones(SHAPE, np.uint8), 7, 1.5)
    ring.close()
    ring.close()  # idempotent
    assert not (SHM_DIR / name).exists()
    # The reader's mapping outlives the unlink: it gets the last frame, then the end of stream.
    (last,) = reader.read(timeout=1.0)
    assert (last.frame_seq, last.t) == (7, 1.5)
    with pytest.raises(RingClosedError, match="closed by its writer"):
        reader.read(timeout=1.0)
    view.close()
    with pytest.raises(ValueError, match="handle was closed"):
        reader.poll()


@pytest.mark.parametrize("ending", ["return", "sigterm"])
def test_writer_process_exit_unlinks_its_segment(prefix, ending):
    name = prefix + ending
    created = CTX.Event()
    proc = CTX.Process(target=_writer_then, args=(name, created, ending))
    proc.start()
    assert created.wait(20)
    if ending == "sigterm":
        assert (SHM_DIR / name).exists()
        proc.terminate()
    proc.join(20)
    # SIGTERM became SystemExit(128 + 15): atexit ran and unlinked the segment.
    assert proc.exitcode == (0 if ending == "return" else 128 + signal.SIGTERM)
    assert not (SHM_DIR / name).exists()


def test_sigkilled_writer_leaves_a_segment_that_cleanup_stale_removes(prefix):
    created = CTX.Event()
    proc = CTX.Process(target=_writer_then, args=(prefix + "killed", created, "sleep"))
    proc.start()
    assert created.wait(20)
    proc.kill()
    proc.join(20)
    assert proc.exitcode == -signal.SIGKILL
    assert (SHM_DIR / (prefix + "killed")).exists()  # no cleanup code ran
    # A writer that died before writing its header: judged by the pid at the end of its name.
    for who, pid in (("half", proc.pid), ("starting", os.getpid())):
        (SHM_DIR / f"{prefix}{who}_{pid}").write_bytes(bytes(HEADER_DTYPE.itemsize))
    with FrameRing.create(prefix + "alive", 4) as alive:
        assert cleanup_stale(prefix) == sorted([prefix + "killed", f"{prefix}half_{proc.pid}"])
        assert (SHM_DIR / alive.name).exists() and (SHM_DIR / f"{prefix}starting_{os.getpid()}").exists()
        assert cleanup_stale(prefix) == []


def test_cleanup_stale_sees_through_a_reused_pid(prefix):
    """A header whose pid runs but started at another time belongs to a dead writer."""
    with FrameRing.create(prefix + "reused", 4) as ring:
        _poke_header(ring.name, "pid_start", 1)
        assert cleanup_stale(prefix) == [ring.name]
    assert not (SHM_DIR / ring.name).exists()  # the handle's close tolerated the missing file


def test_reader_process_exit_leaves_the_segment_intact(prefix):
    """An independent reader process (its own resource tracker, as a separately started service
    would have) attaches, reads and exits; the writer's segment must survive it."""
    name = prefix + "survive"
    code = (
        "import sys; from edge_agent.live.ringbuffer import FrameRing, RingReader\n"
        f"ring = FrameRing.attach({name!r})\n"
        "frames = RingReader(ring, 'oldest').poll()\n"
        "print([f.frame_seq for f in frames])\n"
        "ring.close() if sys.argv[1] == 'close' else None  # and once exiting with it still open\n"
    )
    with FrameRing.create(name, 4) as ring:
        for i in range(3):
            ring.write(np.full(SHAPE, i, np.uint8), i, float(i))
        for how in ("close", "exit"):
            done = subprocess.run(
                [sys.executable, "-c", code, how], cwd=REPO, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            assert done.stdout.strip() == "[0, 1, 2]" and done.stderr == ""  # no tracker warnings
            assert (SHM_DIR / name).exists()
        ring.write(np.full(SHAPE, 3, np.uint8), 3, 3.0)
        with FrameRing.attach(name) as view:
            assert [f.frame_seq for f in RingReader(view, "oldest").poll()] == [0, 1, 2, 3]


def test_attach_errors_name_the_segment_and_the_fix(prefix):
    with pytest.raises(FileNotFoundError, match=rf"{prefix}missing.*segment_name"):
        FrameRing.attach(prefix + "missing")
    foreign = SharedMemory(prefix + "foreign", create=True, size=4096)
    tiny = SharedMemory(prefix + "tiny", create=True, size=16)
    try:
        foreign.buf[:8] = b"NOTARING"
        with pytest.raises(RingLayoutError, match=rf"{prefix}foreign.*not an edge-agent frame ring"):
            FrameRing.attach(prefix + "foreign")
        with pytest.raises(RingLayoutError, match=rf"{prefix}tiny.*too small"):
            FrameRing.attach(prefix + "tiny")
    finally:
        for shm in (foreign, tiny):
            shm.close()
            shm.unlink()
    with FrameRing.create(prefix + "v9", 4) as ring:
        _poke_header(ring.name, "version", 9)
        with pytest.raises(
            RingLayoutError, match=f"layout version 9, this code reads version {LAYOUT_VERSION}"
        ):
            FrameRing.attach(ring.name)
    with pytest.raises(ValueError, match="segment name"):
        FrameRing.attach("../etc/passwd")


def test_write_rejects_wrong_frames_readers_and_duplicate_names(prefix):
    with FrameRing.create(prefix + "w", 4) as ring:
        with pytest.raises(ValueError, match=r"holds \(112, 112\) uint8 frames, got \(112, 112\) float32"):
            ring.write(np.zeros(SHAPE, np.float32), 0, 0.0)
        with pytest.raises(FileExistsError, match=rf"{prefix}w.*cleanup_stale"):
            FrameRing.create(prefix + "w", 4)
        with FrameRing.attach(ring.name) as view, pytest.raises(PermissionError, match="read-only"):
            view.write(np.zeros(SHAPE, np.uint8), 0, 0.0)
        assert ring.written == 0


def test_info_flags_and_aux_travel_with_the_frames(prefix):
    info = {"fps": 50.0, "demographics": {"age_years": 61.0}, "aux": ["ef", "beat"]}
    with FrameRing.create(prefix + "meta", 4, (8, 8), info=info) as ring:
        reader_ring = FrameRing.attach(ring.name)
        try:
            assert reader_ring.info == info
            reader = RingReader(reader_ring, start="oldest")
            ring.write(np.full((8, 8), 1, np.uint8), 10, 1.0, flags=FLAG_R_WAVE, aux=[55.0, 3.0])
            ring.write(np.full((8, 8), 2, np.uint8), 11, 1.02)
            a, b = reader.poll()
            assert a.flags == FLAG_R_WAVE and b.flags == 0
            assert a.aux[:2].tolist() == [55.0, 3.0] and np.isnan(a.aux[2:]).all()
            assert np.isnan(b.aux).all()  # a frame without aux does not inherit the slot's old values
        finally:
            reader_ring.close()
    with pytest.raises(ValueError, match=r"info is \d+ bytes"):
        FrameRing.create(prefix + "big", 4, (8, 8), info={"x": "y" * 5000})
