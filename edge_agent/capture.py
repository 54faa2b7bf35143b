"""Capture stage: one process per stream, frame source → preprocessing → shared-memory ring.

Binds nothing, connects nothing: it owns one ring (``/dev/shm/edge_agent_<stream>_<supervisor pid>``)
and writes every frame into it, never blocking on its readers. Per frame it converts to grayscale,
crops the ultrasound sector (found once, or configured), resizes to the model's 112×112, numbers the
frame and stamps it with ``time.monotonic()`` when it is acquired. A file or DICOM cine is paced at
its frame rate (frame k is released at start + t_k); a live device paces itself. The ring's info
carries what readers need to know about the stream: fps, demographics, the names of the per-frame
aux values (the demographics current at that frame, simulator truth) and the source.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from edge_agent.cycles import CLIP_SIZE
from edge_agent.datasets.base import DEMOGRAPHIC_FIELDS
from edge_agent.preprocess import Preprocessor
from edge_agent.ringbuffer import AUX_LEN, FLAG_R_WAVE, FrameRing
from edge_agent.sources import FrameSource, open_source

log = logging.getLogger(__name__)

# Simulator truth and the current demographics travel with each frame in the ring's aux values, in
# this order (NaN where unknown): demographics may change mid-stream (the simulator's next patient).
TRUTH_KEYS = ("ef", "beat", "ed", "patient")
AUX_KEYS = (*TRUTH_KEYS, *DEMOGRAPHIC_FIELDS)
assert len(AUX_KEYS) <= AUX_LEN


@dataclass(frozen=True)
class StreamConfig:
    """One ultrasound feed (YAML: an item of ``streams``).

    id: stream id, 1–64 characters of [A-Za-z0-9_.-] (topic ``lvef.<id>``).
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


@dataclass(frozen=True)
class CaptureConfig:
    """Capture stage (YAML section ``capture``).

    ring_slots: frames the ring holds (256 = 5 s at 50 fps: a reader may fall that far behind).
    warmup_frames: frames used to find the sector when region is auto.
    speed: pacing factor for files (1.0 = real time; 0 = as fast as possible, for batch replay).
    """

    ring_slots: int = 256
    warmup_frames: int = 30
    speed: float = 1.0


def ring_info(source: FrameSource, stream: StreamConfig) -> dict:
    """What readers of the ring need to know about the stream (stored in the ring's header)."""
    demo = {**source.demographics, **stream.demographics}
    return {
        "stream": stream.id,
        "source": source.uri,
        "fps": float(stream.fps or source.fps),
        "live": bool(source.live),
        "demographics": demo,
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

    def start(self) -> None:
        self.source = open_source(
            self.stream.source,
            fps=self.stream.fps,
            loop=self.stream.loop,
            demographics=self.stream.demographics,
        )
        self.source.open()
        region = self.stream.region if isinstance(self.stream.region, str) else tuple(self.stream.region)
        self.pre = Preprocessor(region=region, size=CLIP_SIZE, warmup_frames=self.cfg.warmup_frames)
        info = ring_info(self.source, self.stream)
        self.fps = info["fps"]
        self.ring = FrameRing.create(self.ring_name, self.cfg.ring_slots, (CLIP_SIZE, CLIP_SIZE), info=info)
        self._t0_media: float | None = None
        self._t0_wall = 0.0
        self._pending: list[tuple[float, int, np.ndarray]] = []  # (media t, flags, aux) during warm-up
        log.info(
            "capture %s: %s at %.1f fps → ring %s", self.stream.id, self.source.uri, self.fps, self.ring_name
        )

    def process(self) -> bool:
        """Read, preprocess, pace and write one frame; False at the end of a non-looping source."""
        assert self.source is not None and self.ring is not None, "start() first"
        frame = self.source.read()
        if frame is None:
            return False
        flags = FLAG_R_WAVE if frame.r_wave else 0
        demo = self.source.demographics  # the source's current patient, config values winning
        aux = [float(frame.truth.get(k, np.nan)) for k in TRUTH_KEYS]
        aux += [float(demo.get(k, np.nan)) for k in DEMOGRAPHIC_FIELDS]
        out = self.pre.push(frame.pixels)
        if out is None:  # finding the sector: the frame waits, it is not lost
            self._pending.append((frame.t, flags, aux))
            return True
        if self._pending:
            for (t, f, a), pixels in zip(self._pending, self.pre.drain(), strict=True):
                self._write(pixels, t, f, a)
            self._pending.clear()
        self._write(out, frame.t, flags, aux)
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
        self.ring.write(pixels, self.frames, time.monotonic(), flags, aux)
        self.frames += 1

    def stop(self) -> None:
        if self.ring is not None:
            self.ring.close()
            self.ring = None
        if self.source is not None:
            self.source.close()
            self.source = None
        log.info("capture %s: %d frames, %d late", self.stream.id, self.frames, self.late)
