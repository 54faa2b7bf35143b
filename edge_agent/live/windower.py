"""Windowing stage: one process per stream, ring → cardiac-cycle detector → one window per beat → hub.

Attaches the stream's ring read-only and connects a PUSH socket to the hub's ``windows`` endpoint.
Each beat the detector closes (ED→ED) becomes a 32×112×112 window through
:func:`edge_agent.live.beats.cut` (the function the model was trained with), and goes to the hub
as a wire ``window`` message. Once a second it reports the stream's status (measured fps, heart
rate, frames lost in the ring, windows dropped here) on the same socket.

Loop seams: a replayed file that starts again flags its first frame (FLAG_SEAM); the detector drops
its history there, so no beat spans the jump, and a new view epoch starts.

View changes: the mean image of each beat is compared with the previous beat's; a correlation
below ``view_change_corr`` (the probe moved to another view or another patient) starts a new view
epoch, so the hub restarts the running estimate instead of mixing two views.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass

import cv2
import numpy as np
import zmq

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS
from edge_agent.live.beats import beat_demographics, cut, forget_old_frames, middle_frame
from edge_agent.live.cycles import BeatWindow, CycleConfig, CycleDetector
from edge_agent.live.frame_checks import FrameQuality
from edge_agent.live.ringbuffer import (
    FLAG_R_WAVE,
    FLAG_SEAM,
    STATE_NO_SECTOR,
    FrameRing,
    RingClosedError,
    RingReader,
)
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig, socket

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WindowConfig:
    """Windowing stage (YAML section ``windows``).

    view_change_corr: correlation of consecutive beats' mean images (32×32) below which a new
        view epoch starts. On the simulator one patient's consecutive beats correlate ≥ 0.999 and
        two patients' median 0.65, at most 0.89 (16 random cases).
    status_period_s: s between status reports to the hub.
    lost_after_s: s without a frame before the signal counts as lost.
    attach_timeout_s: s to wait for the capture's ring to appear.
    """

    view_change_corr: float = 0.9
    status_period_s: float = 0.5
    lost_after_s: float = 1.0  # reported at once, so a stopped feed is shown lost within 2 s
    attach_timeout_s: float = 60.0


def detector_status(detector: CycleDetector) -> dict[str, int | str | None]:
    """The cycle detector's part of a status report: ``beat_source`` and wire.DETECTOR_COUNTERS."""
    c = detector.counters
    return {
        "beat_source": detector.beat_source,
        "beats_detected": c.beats_emitted,
        "windows_fixed": c.fallback_windows,
        "eds_rejected": c.rejected_candidates,
        "eds_corrected": c.early_corrected,
        "signal_switches": c.principal_switches,
        "detector_resets": c.resets,
    }


def beat_signature(frames: np.ndarray) -> np.ndarray:
    """A beat's mean image, 32×32, zero-mean unit-norm: its dot product with another beat's is
    their correlation (frames (F, H, W) uint8)."""
    small = cv2.resize(frames.mean(axis=0, dtype=np.float32), (32, 32), interpolation=cv2.INTER_AREA)
    small = small - small.mean()
    return small.ravel() / max(float(np.linalg.norm(small)), 1e-6)


class ViewTracker:
    """View epochs from consecutive beats' signatures (pure; see the module docstring)."""

    def __init__(self, threshold: float) -> None:
        self.threshold = threshold
        self.view = 0
        self._last: np.ndarray | None = None

    def update(self, clip: np.ndarray) -> int:
        """clip (32, 112, 112) uint8 → the view epoch it belongs to."""
        sig = beat_signature(clip)
        if self._last is not None and float(sig @ self._last) < self.threshold:
            self.view += 1
        self._last = sig
        return self.view

    def restart(self) -> None:
        """The scene jumped (a looped file started again): what follows is a new view epoch."""
        self.view += 1
        self._last = None


def wait_for_ring(name: str, timeout: float) -> FrameRing:
    """Attach ``name`` once its writer has created it (the capture may still be opening its source)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return FrameRing.attach(name)
        except (FileNotFoundError, ValueError):  # not there yet, or header still being written
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


class Windower:
    """The windowing stage's lifecycle (start, process, stop)."""

    def __init__(
        self,
        stream: str,
        ring_name: str,
        cycles: CycleConfig,
        cfg: WindowConfig,
        transport: TransportConfig,
        windows_endpoint: str,
    ) -> None:
        self.stream, self.ring_name, self.cycles, self.cfg = stream, ring_name, cycles, cfg
        self.transport, self.windows_endpoint = transport, windows_endpoint
        self.sent = 0
        self.dropped = 0
        self.seq_gaps = 0
        self.seams = 0  # loop seams of a replayed file (each starts a new view epoch)
        self.ring: FrameRing | None = None
        self.ctx: zmq.Context | None = None

    def start(self) -> None:
        self.ring = wait_for_ring(self.ring_name, self.cfg.attach_timeout_s)
        info = self.ring.info
        self.fps = float(info["fps"])
        self.demo = {k: float(v) for k, v in info.get("demographics", {}).items()}
        self.aux_names = list(info.get("aux", []))
        self.reader = RingReader(self.ring, start="oldest")
        self.detector = CycleDetector(self.cycles, self.fps, info.get("hr_bpm"))
        self.views = ViewTracker(self.cfg.view_change_corr)
        self.quality = FrameQuality(self.fps)  # blank / frozen / saturated frames, counted
        self.malformed = 0  # windows the wire format refused (counted in windows_rejected)
        self._signal = "ok"  # the last signal state reported, to log its changes once
        self.ctx = zmq.Context()
        self.sock = socket(self.ctx, zmq.PUSH, self.transport, hwm=self.transport.window_hwm)
        self.sock.connect(self.windows_endpoint)
        self._last_seq: int | None = None
        self._last_frame_t = time.monotonic()
        self._recent: list[float] = []  # capture times of the last second of frames, for fps
        self._aux: dict[int, np.ndarray] = {}  # frame_seq → aux values, for the frames the detector holds
        self._next_status = time.monotonic()
        log.info("windower %s: ring %s at %.1f fps", self.stream, self.ring_name, self.fps)

    def process(self) -> bool:
        """Handle the frames that arrived (waits up to 0.1 s); False once the ring is closed and drained."""
        try:
            frames = self.reader.read(timeout=0.1)
        except RingClosedError:
            self._report(time.monotonic(), force=True)
            return False
        now = time.monotonic()
        for fr in frames:
            if self._last_seq is not None and fr.frame_seq != self._last_seq + 1:
                self.seq_gaps += 1
                self._break_beats()
            if fr.flags & FLAG_SEAM:
                self.seams += 1
                self._break_beats()
                self.views.restart()
                log.info(
                    "windower %s: the file starts again at frame %d: new view epoch",
                    self.stream,
                    fr.frame_seq,
                )
            self.quality.push(fr.frame_seq, fr.pixels)
            self._last_seq = fr.frame_seq
            self._last_frame_t = now
            self._recent.append(fr.t)
            if fr.aux is not None and self.aux_names:
                self._aux[fr.frame_seq] = fr.aux
            for beat in self.detector.push(fr.frame_seq, fr.t, fr.pixels, bool(fr.flags & FLAG_R_WAVE)):
                # A beat (or fixed window) of a blank, frozen or white screen has no LVEF: not sent,
                # counted in windows_rejected; the signal state on the status says why.
                bad = self.quality.withhold(beat.frame_seq)
                if bad is not None:
                    log.debug("windower %s: window %s withheld (%s)", self.stream, beat.frame_seq, bad)
                    continue
                try:
                    self._send(beat, t_ready=fr.t)
                except wire.WireError as e:  # a window the wire refuses (a detector fault): say so, go on
                    self.malformed += 1
                    log.error("windower %s: window %s not sent: %s", self.stream, beat.frame_seq, e)
        if self._aux and self._last_seq is not None:
            forget_old_frames(self._aux, self._last_seq, self.fps)
        self._report(now)
        return True

    def _break_beats(self) -> None:
        """No beat may span what comes next (a sequence gap, a file's loop seam): drop the history."""
        self.detector.reset()
        self._aux.clear()
        self.quality.reset()  # the frame before the break is not the next one's predecessor

    def _beat_meta(self, beat: BeatWindow) -> tuple[dict[str, float], dict[str, float]]:
        """(demographics, simulator truth) of a beat, from the aux values of its middle frame: the
        patient's demographics as the capture knew them then (the ring's info when no frame carries
        any: :func:`~edge_agent.live.beats.beat_demographics`), and the truth (EF of that beat). A
        window whose first and last frames show different patients has no single truth: none is given."""
        first, mid, last = (
            self._aux_of(k) for k in (beat.frame_seq[0], middle_frame(beat), beat.frame_seq[1])
        )
        demo = beat_demographics(mid, self.demo)
        truth = {k: v for k, v in mid.items() if k not in DEMOGRAPHIC_FIELDS}
        if first.get("patient") != last.get("patient"):
            truth = {}
        return demo, truth

    def _aux_of(self, frame_seq: int) -> dict[str, float]:
        aux = self._aux.get(frame_seq)
        if aux is None:
            return {}
        return {k: float(v) for k, v in zip(self.aux_names, aux, strict=False) if np.isfinite(v)}

    def _send(self, beat: BeatWindow, t_ready: float) -> None:
        clip = cut(beat)
        demo, truth = self._beat_meta(beat)
        window = wire.Window(
            stream=self.stream,
            seq=self.sent + self.dropped,
            frame_seq=beat.frame_seq,
            t=beat.t,
            t_ready=t_ready,
            t_sent=time.monotonic(),
            fps=self.fps,
            hr_bpm=beat.hr_bpm,
            beat=beat.how,
            frames=clip,
            demo=demo,
            truth=truth,
            view=self.views.update(clip),
        )
        try:
            # copy=False: the clip is a fresh array nobody writes again, ZeroMQ may read it later.
            self.sock.send_multipart(wire.encode_window(window), copy=False, flags=zmq.NOBLOCK)
            self.sent += 1
        except zmq.Again:  # the hub is not keeping up and our queue is full: drop, counted
            self.dropped += 1
            log.warning("windower %s: hub queue full, window %d dropped", self.stream, window.seq)

    def _fps(self) -> float:
        """Measured frame rate, frames/s: from the capture times of the last second's frames (not
        their count, which is too low for the first second of a stream)."""
        if len(self._recent) < 2 or self._recent[-1] <= self._recent[0]:
            return float(len(self._recent))
        return (len(self._recent) - 1) / (self._recent[-1] - self._recent[0])

    def _report(self, now: float, force: bool = False) -> None:
        lost = now - self._last_frame_t > self.cfg.lost_after_s
        # A feed that just stopped is reported at once, not at the next period: "signal lost" must
        # reach the bedside within 2 s of the last frame (lost_after_s + delivery).
        newly_lost = lost and self._signal not in ("lost", "no_sector")
        if not (force or newly_lost) and now < self._next_status:
            return
        self._next_status = now + self.cfg.status_period_s
        cutoff = now - 1.0
        self._recent = [t for t in self._recent if t >= cutoff]
        if lost:  # no frames: the capture may say why (its ring's state)
            signal = "no_sector" if self.ring is not None and self.ring.state == STATE_NO_SECTOR else "lost"
        else:
            signal = self.quality.state()
        if signal != self._signal:  # said once per change: a blank screen for hours is one line
            log.warning(
                "windower %s: signal %s (frames blank %d, frozen %d, saturated %d; windows withheld %d)",
                self.stream,
                signal,
                *(self.quality.frames[k] for k in ("blank", "frozen", "saturated")),
                self.quality.windows_rejected,
            )
            self._signal = signal
        status = wire.Status(
            stream=self.stream,
            t=now,
            fps=0.0 if lost else self._fps(),
            hr_bpm=self.detector.hr_bpm,
            signal=signal,
            windows_dropped=self.dropped,
            frames_dropped=self.reader.missed,
            seq_gaps=self.seq_gaps,
            frames_blank=self.quality.frames["blank"],
            frames_frozen=self.quality.frames["frozen"],
            frames_saturated=self.quality.frames["saturated"],
            windows_rejected=self.quality.windows_rejected + self.malformed,
            **detector_status(self.detector),
        )
        # A full queue: this status is skipped, the next second's follows (and drops show there).
        with contextlib.suppress(zmq.Again):
            self.sock.send_multipart(status.encode(), flags=zmq.NOBLOCK)

    def stop(self) -> None:
        if self.ctx is not None:
            self.ctx.destroy()  # closes the socket too
        if self.ring is not None:
            self.ring.close()
        log.info(
            "windower %s: %d windows sent, %d dropped, %d seq gaps, %d loop seams",
            self.stream,
            self.sent,
            self.dropped,
            self.seq_gaps,
            self.seams,
        )
