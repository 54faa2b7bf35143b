"""Shared-memory frame ring: one writer process, many reader processes, no lock.

A capture process writes each preprocessed frame (by default 112×112 uint8) into a fixed ring of
slots, overwriting the oldest; windowing processes read it without ever blocking the writer::

    # the capture process: the one writer
    with FrameRing.create(segment_name("a4c"), n_slots=256) as ring:
        ring.write(frame, frame_seq, time.monotonic())        # per frame, never blocks

    # any number of reader processes
    with FrameRing.attach(name) as ring:
        reader = RingReader(ring, start="latest")
        frames = reader.read(timeout=1.0)                      # [Frame(frame_seq, t, pixels), ...]

Segment layout (native byte order: a ring is shared only by processes of one machine)::

    header  HEADER_DTYPE: magic, layout version, creator pid and start time, slot count,
            frame shape and dtype, closed flag, write counter (frames written so far), and the
            stream's info (JSON: fps, demographics, names of the aux values)
    meta    n_slots × META_DTYPE: seq (int64), frame_seq (int64), t (float64, s), flags (int64:
            FLAG_R_WAVE, FLAG_SEAM), aux (AUX_LEN float64: per-frame values such as simulator truth),
            check (uint64: the slot's CRC-32, :func:`slot_checksum`)
    data    n_slots × one frame, each slot starting on a 64-byte cache line

Protocol, a seqlock per slot with a checksum. Frame i (the i-th frame written, from 0) goes to slot
i % n_slots, on lap L = i // n_slots. The writer stores seq = 2L + 1 (odd: being written), then the
pixels, frame_seq, t, flags and aux, then check = CRC-32 of (2L + 2, pixels, frame_seq, t, flags, aux),
then seq = 2L + 2 (even: complete), then the write counter = i + 1. Because only one process writes,
the slot's seq once frame i is complete is exactly 2(L + 1): a reader checks that the slot holds
frame i itself, not merely some complete frame. A reader of frame i loads seq, copies frame_seq, t,
flags, aux, check and pixels, loads seq again and re-reads the counter; it delivers the copy only if
both seq loads equal 2(L + 1), the counter shows frame i + n_slots not yet complete, and the copy's
CRC-32 (with 2(L + 1)) equals the copied check. Otherwise the writer has lapped it: the frame is
counted in ``missed`` (and in ``torn`` when the overwrite began during the copy) and the reader
moves on, jumping to the oldest frame still in the ring when the counter shows it is more than a
lap behind. Every frame position passes a reader exactly once, delivered or counted.

Memory ordering, and why the checksum. Neither Python nor numpy exposes atomics or fences.
Assigning or reading one element of an aligned int64 array is a single 8-byte machine access, which
x86-64 and AArch64 make single-copy atomic, so seq and the counter are never seen half-written. On
x86-64 (TSO) stores become visible in program order and loads are not reordered with older loads,
so the seqlock alone is correct there. AArch64 (Jetson) is weakly ordered and numpy issues no
barriers: a reader may see the even seq before some pixel stores, or have its loads satisfied out
of order, so the seqlock alone gives no guarantee. The checksum does: whatever order the stores
become visible in, a copy mixing two frames (or a previous lap's frame with this lap's seq: the lap
is inside the CRC) fails the comparison, except for a CRC-32 collision (2⁻³² per torn copy). Cost:
one CRC-32 of the frame in the writer and in each reader (≈ 7 µs at 112×112; ``edge-agent bench``
reports it against the capture stage).

Lifecycle and cleanup. Segments live in /dev/shm (mode 0600: writer and readers run as one user)
under a recognisable name, :func:`segment_name` ``edge_agent_<stream>_<pid>``. The writer owns
its segment: ``close`` marks the ring closed (readers drain it, then :meth:`RingReader.read`
raises :class:`RingClosedError`) and unlinks it; an atexit hook does the same at a normal
interpreter exit, and SIGTERM is turned into SystemExit (unless the process handles SIGTERM
itself) so ``with`` blocks and atexit run. Children started by multiprocessing's "fork" or
"forkserver" leave through ``os._exit``, which skips atexit: close the ring (or use ``with``)
there. A writer killed by SIGKILL, the OOM killer or a crash leaves its segment behind:
:func:`cleanup_stale` unlinks segments whose creator is gone. Readers never unlink.

Why mmap and not ``multiprocessing.shared_memory.SharedMemory``: on Python < 3.13 SharedMemory
registers every segment it opens with a resource tracker, which unlinks it when the attaching
process's tracker shuts down, so a reader process exiting would destroy the writer's ring (the
``track=False`` fix exists only from 3.13; this package supports 3.10+). Mapping the file under
/dev/shm directly keeps ownership explicit, and readers map it read-only (PROT_READ), so a buggy
reader cannot corrupt the frames other readers see.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import mmap
import os
import re
import signal
import struct
import threading
import time
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import numpy as np
import numpy.typing as npt

SHM_DIR = Path("/dev/shm")
DEFAULT_PREFIX = "edge_agent_"
MAGIC = b"EDGERING"
LAYOUT_VERSION = 4
MAX_DIMS = 4
AUX_LEN = 8  # per-frame auxiliary values (demographics, simulator truth), named by the ring's info
MAX_INFO_BYTES = 4096
FLAG_R_WAVE = 1  # bit of Frame.flags: an ECG R wave (end-diastole) falls on this frame
FLAG_SEAM = 2  # bit of Frame.flags: the scene jumps here (a looped file restarts): no beat spans it
STATE_OK, STATE_NO_SECTOR = 0, 1  # FrameRing.state: the writer's frames flow / find no ultrasound sector
_ALIGN = 64  # cache line: a slot's writes never share a line with its neighbours'
_NAME_RE = re.compile(r"[A-Za-z0-9_.-]{1,200}")
_META_PACK = struct.Struct("=qqdq")  # seq, frame_seq, t, flags, as slot_checksum hashes them

HEADER_DTYPE = np.dtype(
    [
        # magic, version, pid and pid_start keep these offsets in every layout version, so
        # cleanup_stale can judge a segment written by any version.
        ("magic", "S8"),
        ("version", np.uint32),
        ("ndim", np.uint32),
        ("pid", np.int64),
        # Creator's start time (clock ticks since boot, /proc/<pid>/stat field 22; 0 if
        # unknown): tells the creator apart from a later process that reuses its pid.
        ("pid_start", np.int64),
        ("n_slots", np.int64),
        ("shape", np.int64, (MAX_DIMS,)),
        ("dtype", "S8"),
        ("closed", np.int64),
        ("written", np.int64),
        # What the writer is doing when it writes no frames (STATE_*): readers report it.
        ("state", np.int64),
        # Stream description written once at creation (JSON, e.g. fps, demographics, aux names):
        # readers learn what the writer knows without a side channel.
        ("info_len", np.int64),
        ("info", f"S{MAX_INFO_BYTES}"),
    ]
)
META_DTYPE = np.dtype(
    [
        ("seq", np.int64),
        ("frame_seq", np.int64),
        ("t", np.float64),
        ("flags", np.int64),
        ("aux", np.float64, (AUX_LEN,)),
        ("check", np.uint64),  # slot_checksum of the frame as written (verified by every reader)
    ]
)


class RingLayoutError(ValueError):
    """A shared-memory segment exists but is not a frame ring this code can read."""


class RingClosedError(EOFError):
    """The writer closed the ring and every frame it wrote was delivered or counted missed."""


class Frame(NamedTuple):
    """One frame read from the ring.

    frame_seq: the capture's sequence number; t: capture time in s (``time.monotonic()`` of the
    capture process, comparable across processes of one machine); pixels: a private copy of the
    frame, the ring's shape and dtype (default (112, 112) uint8); flags: bit set (FLAG_R_WAVE);
    aux: (AUX_LEN,) float64 per-frame values named by ``FrameRing.info["aux"]``, NaN where unknown.
    """

    frame_seq: int
    t: float
    pixels: np.ndarray
    flags: int = 0
    aux: np.ndarray | None = None


def segment_name(stream: str, pid: int | None = None) -> str:
    """Segment name for a stream's ring: ``edge_agent_<stream>_<pid>`` (pid defaults to this one)."""
    name = f"{DEFAULT_PREFIX}{stream}_{os.getpid() if pid is None else pid}"
    _check_name(name)
    return name


def _check_name(name: str) -> None:
    if not _NAME_RE.fullmatch(name):
        raise ValueError(
            f"shared-memory segment name {name!r}: use 1–200 characters from A-Z a-z 0-9 _ . - "
            "(it becomes a file name under /dev/shm)"
        )


def _round_up(n: int, align: int = _ALIGN) -> int:
    return -(-n // align) * align


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks since boot) of a process, None if unreadable."""
    try:
        # Split after the last ")": the command name before it may contain spaces and ")".
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return fields[0], int(fields[19])  # fields 3 and 22 of proc(5)
    except (OSError, IndexError, ValueError):
        return None


def _process_alive(pid: int, start_ticks: int) -> bool:
    """Whether ``pid`` runs, is not a zombie, and (if start_ticks != 0) is the process that
    started at ``start_ticks``. Assumes the caller shares the pid namespace of the process."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by another user
    stat = _proc_stat(pid)
    if stat is None:
        return True  # no /proc to refine the answer: trust kill()
    state, started = stat
    return state != "Z" and start_ticks in (0, started)


def _exit_on_sigterm(signum: int, _frame: object) -> None:
    raise SystemExit(128 + signum)


def _exit_cleanly_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so ``with`` blocks, ``finally`` and atexit run and the writer
    unlinks its segment. Leaves alone a process that handles SIGTERM itself (or is not in its main
    thread, where Python cannot install handlers)."""
    in_main_thread = threading.current_thread() is threading.main_thread()
    if in_main_thread and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


class FrameRing:
    """Handle on one frame ring: the writer's (:meth:`create`) or a reader's (:meth:`attach`).

    Read it through :class:`RingReader`; a handle may serve several readers of one process.
    """

    def __init__(self, name: str, mm: mmap.mmap, *, writer: bool) -> None:
        """Private: use :meth:`create` or :meth:`attach`. Builds numpy views on a mapped segment
        whose header is already valid."""
        self.name = name
        self._mm: mmap.mmap | None = mm
        self._writer = writer
        self._owner_pid = os.getpid()  # a forked child inherits the handle but must not unlink
        hdr = np.ndarray((), HEADER_DTYPE, buffer=mm)
        self.writer_pid = int(hdr["pid"])
        self.n_slots = int(hdr["n_slots"])
        self.shape: tuple[int, ...] = tuple(int(s) for s in hdr["shape"][: int(hdr["ndim"])])
        self.dtype = np.dtype(hdr["dtype"].item().decode("ascii"))
        self.info: dict = json.loads(hdr["info"].item()[: int(hdr["info_len"])] or b"{}")
        del hdr  # only the views below may keep the mapping exported (see close)

        def word(field: str) -> np.ndarray:  # one aligned int64 of the header, as a 1-element view
            return np.ndarray((1,), np.int64, buffer=mm, offset=HEADER_DTYPE.fields[field][1])

        self._written = word("written")
        self._closed = word("closed")
        self._state = word("state")
        meta_offset = _round_up(HEADER_DTYPE.itemsize)
        meta = np.ndarray((self.n_slots,), META_DTYPE, buffer=mm, offset=meta_offset)
        self._seq, self._frame_seq, self._t = meta["seq"], meta["frame_seq"], meta["t"]
        self._flags, self._aux, self._check = meta["flags"], meta["aux"], meta["check"]
        del meta
        itemsize = self.dtype.itemsize
        frame_strides = tuple(itemsize * int(np.prod(self.shape[k + 1 :])) for k in range(len(self.shape)))
        self._data = np.ndarray(
            (self.n_slots, *self.shape),
            self.dtype,
            buffer=mm,
            offset=_data_offset(self.n_slots),
            strides=(_slot_stride(self.shape, self.dtype), *frame_strides),
        )
        self._count = int(self._written[0])  # writer's own copy of the counter

    @classmethod
    def create(
        cls,
        name: str,
        n_slots: int,
        shape: tuple[int, ...] = (112, 112),
        dtype: npt.DTypeLike = np.uint8,
        info: Mapping[str, Any] | None = None,
    ) -> FrameRing:
        """Create the segment ``/dev/shm/<name>`` and return the writer's handle.

        n_slots: frames the ring holds (a reader more than n_slots frames behind is lapped);
        shape, dtype: of every frame; info: JSON-serialisable stream description readers get as
        ``ring.info`` (at most MAX_INFO_BYTES encoded). The segment is allocated up front, so a
        full /dev/shm fails here rather than killing the writer with SIGBUS mid-stream.
        """
        _check_name(name)
        shape = tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        if n_slots < 1:
            raise ValueError(f"ring {name!r}: n_slots must be >= 1, got {n_slots}")
        if not 1 <= len(shape) <= MAX_DIMS or min(shape) < 1:
            raise ValueError(f"ring {name!r}: frame shape must have 1–{MAX_DIMS} positive sizes, got {shape}")
        if dtype.hasobject or dtype.fields is not None or dtype.subdtype is not None or not dtype.isnative:
            raise ValueError(f"ring {name!r}: frame dtype must be a plain native numeric dtype, got {dtype}")
        info_bytes = json.dumps(dict(info or {}), allow_nan=False).encode()
        if len(info_bytes) > MAX_INFO_BYTES:
            raise ValueError(
                f"ring {name!r}: info is {len(info_bytes)} bytes encoded, at most {MAX_INFO_BYTES}"
            )
        size = _segment_size(n_slots, shape, dtype)
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            raise FileExistsError(
                f"shared-memory segment {name!r} already exists: another writer owns it, or a dead "
                "writer left it behind (remove leftovers with ringbuffer.cleanup_stale())"
            ) from None
        try:
            try:
                os.posix_fallocate(fd, 0, size)
            except OSError as e:
                raise OSError(
                    e.errno,
                    f"cannot allocate {size} bytes for shared-memory segment {name!r} in {SHM_DIR}: "
                    f"{e.strerror}; enlarge /dev/shm (docker: --shm-size) or use fewer slots",
                ) from None
            mm = mmap.mmap(fd, size)
        except BaseException:
            os.unlink(path)
            raise
        finally:
            os.close(fd)
        hdr = np.ndarray((), HEADER_DTYPE, buffer=mm)
        hdr["version"] = LAYOUT_VERSION
        hdr["ndim"] = len(shape)
        hdr["pid"] = os.getpid()
        stat = _proc_stat(os.getpid())
        hdr["pid_start"] = stat[1] if stat else 0
        hdr["n_slots"] = n_slots
        hdr["shape"] = (*shape, *[0] * (MAX_DIMS - len(shape)))
        hdr["dtype"] = dtype.str.encode("ascii")
        hdr["info_len"] = len(info_bytes)
        hdr["info"] = info_bytes
        hdr["magic"] = MAGIC  # last: a segment with the magic has a complete header
        del hdr
        ring = cls(name, mm, writer=True)
        atexit.register(ring.close)
        _exit_cleanly_on_sigterm()
        return ring

    @classmethod
    def attach(cls, name: str) -> FrameRing:
        """Map an existing ring read-only and return a reader's handle (never unlinks the segment).

        Raises FileNotFoundError if no segment has this name and :class:`RingLayoutError` if the
        segment is not a ring of this layout version.
        """
        _check_name(name)
        path = SHM_DIR / name
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"no shared-memory segment {name!r} in {SHM_DIR}: its writer has not created it yet, "
                "has closed it, or the name is wrong (writers name rings with segment_name(stream))"
            ) from None
        try:
            size = os.fstat(fd).st_size
            if size < HEADER_DTYPE.itemsize:
                raise RingLayoutError(
                    f"shared-memory segment {name!r} ({size} bytes) is too small to hold a ring header: "
                    "it is not an edge-agent frame ring; check the name"
                )
            mm = mmap.mmap(fd, size, prot=mmap.PROT_READ)
        finally:
            os.close(fd)
        try:
            _validate_header(name, mm, size)
        except BaseException:
            mm.close()
            raise
        return cls(name, mm, writer=False)

    @property
    def written(self) -> int:
        """Frames written since the ring was created (frame i lives in slot i % n_slots)."""
        self._check_open()
        return int(self._written[0])

    @property
    def closed(self) -> bool:
        """Whether the writer has closed the ring (no frame will follow)."""
        self._check_open()
        return bool(self._closed[0])

    def write(
        self, frame: np.ndarray, frame_seq: int, t: float, flags: int = 0, aux: Sequence[float] | None = None
    ) -> None:
        """Publish one frame, overwriting the oldest slot; never blocks.

        frame: array of the ring's shape and dtype (copied in); frame_seq: the capture's sequence
        number; t: capture time in s from ``time.monotonic()``; flags: FLAG_* bits; aux: up to
        AUX_LEN floats (the rest NaN).
        """
        self._check_open()
        if not self._writer:
            raise PermissionError(
                f"ring {self.name!r} is attached read-only: only the process that created it writes"
            )
        if frame.shape != self.shape or frame.dtype != self.dtype:
            raise ValueError(
                f"ring {self.name!r} holds {self.shape} {self.dtype} frames, got {frame.shape} "
                f"{frame.dtype}: convert the frame first (the ring never casts silently)"
            )
        i = self._count
        slot = i % self.n_slots
        lap_seq = 2 * (i // self.n_slots)
        self._seq[slot] = lap_seq + 1  # odd: readers of this slot must discard what they copy
        self._data[slot] = frame
        self._frame_seq[slot] = frame_seq
        self._t[slot] = t
        self._flags[slot] = flags
        values = self._aux[slot]
        values[:] = np.nan
        if aux is not None:
            values[: len(aux)] = aux
        self._check[slot] = slot_checksum(lap_seq + 2, frame, frame_seq, t, flags, values)
        self._seq[slot] = lap_seq + 2  # even, = 2 (lap + 1): frame i is complete
        self._count = i + 1
        self._written[0] = self._count  # published only after the slot is complete

    @property
    def state(self) -> int:
        """The writer's state (STATE_OK, STATE_NO_SECTOR): why no frames come, when none do."""
        self._check_open()
        return int(self._state[0])

    def set_state(self, state: int) -> None:
        """The writer says what it is doing (STATE_*), for readers to report; one aligned store."""
        self._check_open()
        if not self._writer:
            raise PermissionError(f"ring {self.name!r} is attached read-only: only its writer sets the state")
        self._state[0] = state

    def close(self) -> None:
        """Release the handle; the writer also marks the ring closed and unlinks the segment.

        Idempotent. Readers still attached keep their mapping and drain the frames left.
        """
        if self._mm is None:
            return
        if self._writer and os.getpid() == self._owner_pid:
            self._closed[0] = 1
            # FileNotFoundError: already removed by cleanup_stale or by hand; nothing can leak.
            with contextlib.suppress(FileNotFoundError):
                os.unlink(SHM_DIR / self.name)
            atexit.unregister(self.close)
        # Drop every numpy view first: an mmap with exported buffers refuses to close.
        del (
            self._written,
            self._closed,
            self._state,
            self._seq,
            self._frame_seq,
            self._t,
            self._flags,
            self._aux,
        )
        del self._check
        del self._data
        mm, self._mm = self._mm, None
        mm.close()

    def _check_open(self) -> None:
        if self._mm is None:
            raise ValueError(f"ring {self.name!r}: this handle was closed (attach again to read)")

    def __enter__(self) -> FrameRing:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def slot_checksum(seq: int, pixels: np.ndarray, frame_seq: int, t: float, flags: int, aux: np.ndarray) -> int:
    """CRC-32 of one complete slot: its even seq (binds the lap), the pixels, frame_seq, t, flags and
    the (AUX_LEN,) float64 aux values. ≈ 7 µs for a 112×112 uint8 frame."""
    crc = zlib.crc32(_META_PACK.pack(seq, frame_seq, t, flags))
    return zlib.crc32(aux.tobytes(), zlib.crc32(np.ascontiguousarray(pixels), crc))


def _slot_stride(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return _round_up(int(np.prod(shape)) * dtype.itemsize)


def _data_offset(n_slots: int) -> int:
    return _round_up(_round_up(HEADER_DTYPE.itemsize) + n_slots * META_DTYPE.itemsize)


def _segment_size(n_slots: int, shape: tuple[int, ...], dtype: np.dtype) -> int:
    """Bytes of a ring: header, per-slot metadata, slots."""
    return _data_offset(n_slots) + n_slots * _slot_stride(shape, dtype)


def _validate_header(name: str, mm: mmap.mmap, size: int) -> None:
    hdr = np.ndarray((), HEADER_DTYPE, buffer=mm)
    try:
        if hdr["magic"].item() != MAGIC:
            raise RingLayoutError(
                f"shared-memory segment {name!r} is not an edge-agent frame ring (no {MAGIC!r} magic), "
                "or its writer is still creating it: check the name, or retry after the writer is up"
            )
        if hdr["version"] != LAYOUT_VERSION:
            raise RingLayoutError(
                f"ring {name!r} has layout version {int(hdr['version'])}, this code reads version "
                f"{LAYOUT_VERSION}: run its writer and readers from the same edge-agent release"
            )
        ndim, n_slots = int(hdr["ndim"]), int(hdr["n_slots"])
        shape = tuple(int(s) for s in hdr["shape"][:ndim])
        try:
            dtype = np.dtype(hdr["dtype"].item().decode("ascii"))
        except (TypeError, UnicodeDecodeError):
            dtype = None
        if dtype is None or not 1 <= ndim <= MAX_DIMS or n_slots < 1 or min(shape) < 1:
            raise RingLayoutError(f"ring {name!r} has a corrupt header: unlink it and restart its writer")
        expected = _segment_size(n_slots, shape, dtype)
        if size != expected:
            raise RingLayoutError(
                f"ring {name!r} is {size} bytes but its header ({n_slots} slots of {shape} {dtype}) "
                f"needs {expected}: the segment is corrupt; unlink it and restart its writer"
            )
    finally:
        del hdr


class RingReader:
    """One reader's cursor on a ring: delivers each frame at most once, in write order.

    start: "latest" reads only frames written after the reader is created; "oldest" starts with
    the oldest frame still in the ring. Frames that were overwritten before this reader copied
    them are counted, never dropped silently: ``delivered + missed`` equals the frame positions
    the cursor has passed (frames written since its start, once it has caught up).
    """

    def __init__(self, ring: FrameRing, start: Literal["latest", "oldest"] = "latest") -> None:
        written = ring.written
        if start == "latest":
            self._next = written
        elif start == "oldest":
            self._next = max(0, written - ring.n_slots)
        else:
            raise ValueError(f"ring {ring.name!r}: start must be 'latest' or 'oldest', got {start!r}")
        self._ring = ring
        self._delivered = 0
        self._missed = 0
        self._torn = 0

    @property
    def delivered(self) -> int:
        """Frames returned by poll/read so far."""
        return self._delivered

    @property
    def missed(self) -> int:
        """Frames the writer overwrote before this reader could copy them (lapped, or torn)."""
        return self._missed

    @property
    def torn(self) -> int:
        """Copies discarded because the writer overwrote the slot during the copy (also in missed)."""
        return self._torn

    @property
    def position(self) -> int:
        """Ring position (count of frames written before it) of the next frame this reader wants."""
        return self._next

    def poll(self, max_frames: int | None = None) -> list[Frame]:
        """All frames written since the last call (at most max_frames), oldest first; never waits.

        When the writer has lapped the reader, resumes at the oldest frame still in the ring and
        adds the skipped frames to ``missed``.
        """
        ring = self._ring
        ring._check_open()
        n = ring.n_slots
        seq, frame_seqs, ts, data = ring._seq, ring._frame_seq, ring._t, ring._data
        flag_words, aux, checks = ring._flags, ring._aux, ring._check
        written_word = ring._written
        frames: list[Frame] = []
        while max_frames is None or len(frames) < max_frames:
            i = self._next
            written = int(written_word[0])
            if written - i > n:  # frames before written - n are overwritten: jump to the oldest left
                self._missed += written - n - i
                i = self._next = written - n
            if i >= written:
                break
            slot = i % n
            expected = 2 * (i // n + 1)  # the slot's seq once frame i is complete in it
            s1 = int(seq[slot])
            if s1 < expected:
                break  # counter seen before the slot: only on weakly ordered CPUs; next poll gets it
            if s1 == expected:
                frame_seq, t, pixels = int(frame_seqs[slot]), float(ts[slot]), data[slot].copy()
                flags, values, check = int(flag_words[slot]), aux[slot].copy(), int(checks[slot])
                # The counter re-check and the checksum are for weakly ordered CPUs (module
                # docstring): once frame i + n is complete, a copy of this slot cannot be trusted to
                # be frame i; a copy that does not match its checksum is not one frame.
                if (
                    int(seq[slot]) == expected
                    and int(written_word[0]) <= i + n
                    and check == slot_checksum(expected, pixels, frame_seq, t, flags, values)
                ):
                    frames.append(Frame(frame_seq, t, pixels, flags, values))
                    self._next = i + 1
                    continue
                self._torn += 1
            self._missed += 1  # overwritten before or during the copy
            self._next = i + 1
        self._delivered += len(frames)
        return frames

    def read(self, timeout: float | None = None, poll_interval: float = 0.002) -> list[Frame]:
        """Wait until at least one new frame is available and return all of them (see :meth:`poll`).

        timeout: s to wait (None: forever); returns [] when it passes without a frame.
        poll_interval: s between checks while waiting (the writer never signals readers).
        Raises :class:`RingClosedError` once the writer has closed the ring and every frame it
        wrote has been delivered or counted missed.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            closed = self._ring.closed  # read before polling: frames written before close still come
            frames = self.poll()
            if frames:
                return frames
            if closed and self._next >= self._ring.written:
                raise RingClosedError(
                    f"ring {self._ring.name!r} was closed by its writer (pid {self._ring.writer_pid}); "
                    f"this reader got {self._delivered} frames and missed {self._missed}"
                )
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                return []
            time.sleep(poll_interval if deadline is None else min(poll_interval, deadline - now))


def _creator(path: Path) -> tuple[int, int] | None:
    """(pid, start ticks) of a segment's creator: from a ring header, else from a name ending in
    ``_<pid>`` (a writer that died before finishing its header); None when unknown."""
    try:
        with open(path, "rb") as f:
            raw = f.read(HEADER_DTYPE.itemsize)
    except OSError:
        return None  # gone meanwhile, or another user's: not ours to judge
    if len(raw) == HEADER_DTYPE.itemsize:
        hdr = np.frombuffer(raw, HEADER_DTYPE)[0]
        if hdr["magic"] == MAGIC:
            pid, start = int(hdr["pid"]), int(hdr["pid_start"])
            return (pid, start) if pid > 0 else None  # kill(0 or negative, ...) targets groups
    match = re.search(r"_(\d+)$", path.name)
    return (int(match.group(1)), 0) if match and int(match.group(1)) > 0 else None


def cleanup_stale(prefix: str = DEFAULT_PREFIX) -> list[str]:
    """Unlink the segments ``/dev/shm/<prefix>*`` whose creator process is gone; return their names.

    For a supervisor (after reaping its dead children) or an agent at start. The creator comes
    from the ring header (pid and start time, so a reused pid does not keep a leftover alive) or,
    for a writer that died before finishing its header, from a name ending in ``_<pid>``; segments
    with neither are left alone. Needs the same pid namespace as the writers (same host or
    container). A reader still attached to a removed segment keeps its mapping until it closes.
    """
    removed = []
    for entry in sorted(os.listdir(SHM_DIR)):
        if not entry.startswith(prefix):
            continue
        path = SHM_DIR / entry
        creator = _creator(path)
        if creator is None or _process_alive(*creator):
            continue
        try:
            path.unlink()
        except FileNotFoundError:
            continue  # another cleaner got there first
        removed.append(entry)
    return removed
