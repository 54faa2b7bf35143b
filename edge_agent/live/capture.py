"""Capture stage: one process per stream, frame source → preprocessing → shared-memory ring.

Binds nothing, connects nothing: it owns one ring (``/dev/shm/edge_agent_<stream>_<supervisor pid>``)
and writes every frame into it, never blocking on its readers. Per frame it converts to grayscale,
crops the ultrasound sector (found once, or configured), resizes to the model's 112×112, numbers the
frame and stamps it with ``time.monotonic()`` when it is acquired. A file or DICOM cine is paced at
its frame rate (frame k is released at start + t_k); a live device paces itself. The ring's info
carries what readers need to know about the stream: fps, demographics, the names of the per-frame
aux values (the demographics current at that frame, simulator truth) and the source.

Signal loss: a source that fails (SourceError: a cable pulled, a stream that stalls) or a live
source that ends is closed and reopened with exponential backoff (``reconnect_initial_s`` doubling
up to ``reconnect_max_s``), in this process, on the same ring: readers stay attached, and the
windower reports the signal lost until frames return. The first frame after a reconnect is numbered
as if the frames of the outage had been captured (``frame_seq`` jumps by outage × fps): readers see
a gap, and no beat is ever cut across an outage. A file that ends without ``loop`` ends the stage.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.core.clip import CLIP_SIZE
from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS
from edge_agent.core.ratelimit import RateLimitedLog
from edge_agent.live.beats import WarmUp
from edge_agent.live.preprocess import Preprocessor
from edge_agent.live.ringbuffer import AUX_LEN, FLAG_R_WAVE, FLAG_SEAM, STATE_NO_SECTOR, STATE_OK, FrameRing
from edge_agent.live.sources import FrameSource, SourceError, SourceFrame, open_source
from edge_agent.protocol import wire

log = logging.getLogger(__name__)
peer_log = RateLimitedLog(log)  # what a source can make us say every second

# Simulator truth and the current demographics travel with each frame in the ring's aux values, in
# this order (NaN where unknown): demographics may change mid-stream (the simulator's next patient).
TRUTH_KEYS = ("ef", "beat", "ed", "patient")
AUX_KEYS = (*TRUTH_KEYS, *DEMOGRAPHIC_FIELDS)
assert len(AUX_KEYS) <= AUX_LEN


@dataclass(frozen=True)
class StreamConfig:
    """One ultrasound feed (YAML: an item of ``streams``).

    id: stream id, 1–64 characters of [A-Za-z0-9_-] (topics ``lvef.<id>.``, ``status.<id>.``).
    source: URI — ``synthetic://?ef=55&hr=70&quality=medium&fps=50``, a video file (.avi, .mp4),
        a DICOM cine (.dcm), ``device://0``, ``rtsp://...``, ``gst://<pipeline>``.
    fps: frames/s to pace a file at (None: the file's own rate).
    loop: restart a file at its end (a demo feed); False ends the stream at the end of the file.
    region: ``auto`` (find the sector; identity for frames already 112×112), ``full``, or
        [x, y, w, h] in source pixels.
    demographics: any of age_years, sex_male (1/0), weight_kg, height_cm; wins over the source's.
    """

    id: str = "bed1"
    source: str = "synthetic://?seed=1"
    fps: float | None = None
    loop: bool = True
    region: str | list[int] = "auto"
    demographics: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not re.fullmatch(wire.STREAM_PATTERN, self.id):
            raise ValueError(
                f"id {self.id!r}: a stream id is 1-64 characters of A-Z a-z 0-9 _ - (no dot: it ends the "
                "stream's topics), e.g. bed1"
            )


@dataclass(frozen=True)
class CaptureConfig:
    """Capture stage (YAML section ``capture``).

    ring_slots: frames the ring holds (256 = 5 s at 50 fps: a reader may fall that far behind).
    warmup_frames: frames used to find the sector when region is auto.
    speed: pacing factor for files (1.0 = real time; 0 = as fast as possible, for batch replay).
    reconnect_initial_s, reconnect_max_s: backoff between attempts to reopen a lost source: the
        first wait, doubled after every failed attempt up to the second (s).
    """

    ring_slots: int = 256
    warmup_frames: int = 30
    speed: float = 1.0
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.reconnect_initial_s <= self.reconnect_max_s:
            raise ValueError(
                "reconnect_initial_s and reconnect_max_s: need 0 < initial <= max, got "
                f"{self.reconnect_initial_s} and {self.reconnect_max_s}"
            )


def frame_flags(frame: SourceFrame) -> int:
    """The ring's flag bits for a source frame (FLAG_R_WAVE, FLAG_SEAM)."""
    return (FLAG_R_WAVE if frame.r_wave else 0) | (FLAG_SEAM if frame.seam else 0)


def ring_info(source: FrameSource, stream: StreamConfig) -> dict:
    """What readers of the ring need to know about the stream (stored in the ring's header)."""
    demo = {**source.demographics, **stream.demographics}
    return {
        "stream": stream.id,
        "source": source.uri,
        "fps": float(stream.fps or source.fps),
        "live": bool(source.live),
        "demographics": demo,
        "hr_bpm": source.hr_bpm,  # the source's stated heart rate: the detector's period prior
        "aux": list(AUX_KEYS),
    }


class Capture:
    """The capture stage's lifecycle: ``start`` opens the source and creates the ring, ``process``
    moves one frame, ``stop`` closes both (unlinking the ring)."""

    def __init__(self, stream: StreamConfig, cfg: CaptureConfig, ring_name: str) -> None:
        self.stream, self.cfg, self.ring_name = stream, cfg, ring_name
        self.source: FrameSource | None = None
        self.ring: FrameRing | None = None
        self.frames = 0
        self.late = 0  # frames released more than one frame interval after their due time
        self.disconnects = 0  # times the source was lost
        self.reconnects = 0  # times it came back
        self._lost = False  # the source failed and is being reopened
        self._no_sector_said: str | None = None  # the last 'no sector' reason logged
        self._frames_at_reconnect = -1  # frame count at the last reconnect
        self._last_seq, self._t_last_write = -1, time.monotonic()  # the last frame in the ring

    def _source(self) -> FrameSource:
        return open_source(
            self.stream.source,
            fps=self.stream.fps,
            loop=self.stream.loop,
            demographics=self.stream.demographics,
        )

    def _new_preprocessor(self) -> WarmUp[tuple[float, int, list[float]]]:
        """Preprocessing from scratch; a frame's meta is (media t, flags, aux)."""
        region = self.stream.region if isinstance(self.stream.region, str) else tuple(self.stream.region)
        return WarmUp(Preprocessor(region=region, size=CLIP_SIZE, warmup_frames=self.cfg.warmup_frames))

    def start(self) -> None:
        """Open the source and create the ring. A live device that cannot be opened yet (a probe
        plugged in after the agent started) is retried with the reconnect backoff for up to
        3 × reconnect_max_s; anything else that fails to open fails the start at once."""
        self.source = self._source()
        deadline, wait = time.monotonic() + 3 * self.cfg.reconnect_max_s, self.cfg.reconnect_initial_s
        while True:
            try:
                self.source.open()
                break
            except SourceError as e:
                if not self.source.live or time.monotonic() + wait > deadline:
                    # Its message names the file, the problem and the fix: one line, no traceback.
                    log.error("capture %s: %s", self.stream.id, e)
                    raise SystemExit(1) from None
                log.warning(
                    "capture %s: cannot open the source yet (%s); retry in %.1f s", self.stream.id, e, wait
                )
                time.sleep(wait)
                wait = min(2 * wait, self.cfg.reconnect_max_s)
        self.pre = self._new_preprocessor()
        info = ring_info(self.source, self.stream)
        self.fps = info["fps"]
        self.ring = FrameRing.create(self.ring_name, self.cfg.ring_slots, (CLIP_SIZE, CLIP_SIZE), info=info)
        self._t0_media: float | None = None
        self._t0_wall = 0.0
        log.info(
            "capture %s: %s at %.1f fps → ring %s", self.stream.id, self.source.uri, self.fps, self.ring_name
        )

    def process(self) -> bool:
        """Read, preprocess, pace and write one frame (or try to reconnect a lost source); False at
        the end of a file that does not loop."""
        assert self.ring is not None, "start() first"
        if self._lost:
            return self._reconnect()
        assert self.source is not None
        try:
            frame = self.source.read()
        except SourceError as e:
            self._lose(str(e))
            return True
        if frame is None:
            if self.source.live:  # a live stream that ends was cut: wait for it to come back
                self._lose(f"{self.source.uri}: the stream ended")
                return True
            return False
        flags = frame_flags(frame)
        demo = self.source.demographics  # the source's current patient, config values winning
        aux = [float(frame.truth.get(k, np.nan)) for k in TRUTH_KEYS]
        aux += [float(demo.get(k, np.nan)) for k in DEMOGRAPHIC_FIELDS]
        # While the sector is being found the frame waits in self.pre, it is not lost.
        for (t, f, a), pixels in self.pre.push(frame.pixels, (frame.t, flags, aux)):
            self._write(pixels, t, f, a)
        self._say_no_sector(self.pre.pre.no_sector)
        return True

    def _say_no_sector(self, why: str | None) -> None:
        """A warm-up that found no ultrasound sector is logged (once per second of trying, rate-
        limited) and told to the readers through the ring's state, which their status reports."""
        assert self.ring is not None
        state = STATE_OK if why is None else STATE_NO_SECTOR
        if state != self.ring.state:
            self.ring.set_state(state)
        if why is not None and why != self._no_sector_said:
            peer_log.warning(f"no-sector-{self.stream.id}", "capture %s: %s", self.stream.id, why)
        self._no_sector_said = why

    def _lose(self, why: str) -> None:
        """The source failed: close it and try to reopen it after the backoff, which starts afresh
        only when frames came since the last reconnect (a source that opens but never delivers
        backs off like one that does not open)."""
        assert self.source is not None
        with contextlib.suppress(Exception):  # a failed source may fail to close too; it is dropped
            self.source.close()
        self.source = None
        self._lost = True
        if self.frames > self._frames_at_reconnect:
            self.disconnects += 1
            self._wait = self.cfg.reconnect_initial_s
            log.warning("capture %s: signal lost (%s); reconnecting", self.stream.id, why)
        else:  # still lost: it reopened but gave no frame
            self._wait = min(2 * self._wait, self.cfg.reconnect_max_s)
            log.warning("capture %s: still lost (%s); next try in %.1f s", self.stream.id, why, self._wait)
        self._next_try = time.monotonic() + self._wait

    def _reconnect(self) -> bool:
        """One reconnection attempt when due (waits at most 0.1 s otherwise); always True."""
        now = time.monotonic()
        if now < self._next_try:
            time.sleep(min(0.1, self._next_try - now))
            return True
        source = self._source()
        try:
            source.open()
        except SourceError as e:
            self._wait = min(2 * self._wait, self.cfg.reconnect_max_s)
            self._next_try = time.monotonic() + self._wait
            log.warning("capture %s: still lost (%s); next try in %.1f s", self.stream.id, e, self._wait)
            return True
        outage = time.monotonic() - self._t_last_write  # since the last frame: what readers missed
        # Number the next frame as if the outage's frames had come: readers see the gap.
        self.frames = max(self.frames, self._last_seq + max(2, round(outage * self.fps)))
        self._frames_at_reconnect = self.frames
        self.source, self._lost, self._t0_media = source, False, None
        self.pre = self._new_preprocessor()  # the sector may have moved (another probe, a new stream)
        self.reconnects += 1
        log.info("capture %s: source reopened after %.1f s", self.stream.id, outage)
        return True

    def _write(self, pixels: np.ndarray, t_media: float, flags: int, aux: list[float]) -> None:
        assert self.source is not None and self.ring is not None
        if not self.source.live and self.cfg.speed > 0:
            if self._t0_media is None:
                self._t0_media, self._t0_wall = t_media, time.monotonic()
            due = self._t0_wall + (t_media - self._t0_media) / self.cfg.speed
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif -wait > 1.0 / self.fps:
                self.late += 1
        if self.frames == self._frames_at_reconnect:  # the first frame since the signal came back
            log.warning(
                "capture %s: signal back after %.1f s", self.stream.id, time.monotonic() - self._t_last_write
            )
        self._t_last_write = time.monotonic()
        self.ring.write(pixels, self.frames, self._t_last_write, flags, aux)
        self._last_seq = self.frames
        self.frames += 1

    def stop(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.source is not None:
            self.source.close()
            self.source = None
        log.info(
            "capture %s: %d frames, %d late, %d disconnects, %d reconnects",
            self.stream.id,
            self.frames,
            self.late,
            self.disconnects,
            self.reconnects,
        )
