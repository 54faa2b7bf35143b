"""Live devices through OpenCV: camera / V4L2 frame grabber index, RTSP stream, GStreamer pipeline.

URIs: ``device://0`` or a bare ``0`` (index), ``rtsp://host:554/path``, ``gst://<pipeline>`` where
the pipeline ends in ``appsink`` (it needs an OpenCV built with GStreamer; the pip wheels are not).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from urllib.parse import urlsplit

import cv2

from edge_agent.live.sources.base import MAX_FPS, FrameSource, SourceError, SourceFrame, check_fps

# Devices that do not report a rate (many USB grabbers say 0) are assumed to run at 30 fps: the
# common rate of video outputs. The true rate shows in the arrival times t.
DEFAULT_DEVICE_FPS = 30.0
DEVICE_SCHEMES = ("device", "rtsp", "rtsps", "gst")


def is_device_uri(uri: str) -> bool:
    """True for a bare index, device://, rtsp(s):// and gst:// URIs."""
    uri = uri.strip()
    return bool(re.fullmatch(r"\d+", uri)) or urlsplit(uri).scheme.lower() in DEVICE_SCHEMES


def parse_device_uri(uri: str) -> tuple[int | str, int]:
    """A device URI → (cv2.VideoCapture target, API preference); SourceError for a malformed one."""
    uri = uri.strip()
    if re.fullmatch(r"\d+", uri):
        return int(uri), cv2.CAP_ANY
    scheme, _, rest = uri.partition("://")
    scheme = scheme.lower()
    if scheme == "device":
        if not re.fullmatch(r"\d+", rest):
            raise SourceError(f"{uri}: device:// takes a camera index, e.g. device://0 (/dev/video0)")
        return int(rest), cv2.CAP_ANY
    if scheme in ("rtsp", "rtsps"):
        if not urlsplit(uri).hostname:
            raise SourceError(f"{uri}: an RTSP URI needs a host, e.g. rtsp://192.168.1.20:554/stream")
        return uri, cv2.CAP_FFMPEG
    if scheme == "gst":
        if "appsink" not in rest:
            raise SourceError(
                f"{uri}: a GStreamer pipeline for OpenCV must end in appsink, e.g. "
                "gst://v4l2src device=/dev/video0 ! videoconvert ! appsink"
            )
        return rest, cv2.CAP_GSTREAMER
    raise SourceError(f"{uri}: not a device URI; use device://<index>, <index>, rtsp://... or gst://...")


def has_gstreamer() -> bool:
    """True when this OpenCV build can open GStreamer pipelines."""
    return bool(re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()))


class DeviceSource(FrameSource):
    """A live capture: ``read()`` blocks until the device delivers the next frame (``live`` is True).

    pixels: (H, W) uint8 grayscale (BGR→gray, as video files); t: arrival on time.monotonic() minus
    the first arrival. fps: the device's CAP_PROP_FPS, or DEFAULT_DEVICE_FPS (30) when it reports
    none; ``fps`` given is requested from the device and reported as the rate.
    A failed read returns None when the capture has closed (a stream that ended); otherwise it is
    retried ``retries`` times ``retry_wait_s`` apart, then raises SourceError.
    """

    live = True
    retries = 5
    retry_wait_s = 0.2

    def __init__(
        self, uri: str, *, fps: float | None = None, demographics: Mapping[str, float] | None = None
    ) -> None:
        super().__init__(uri, demographics)
        self.target, self.api = parse_device_uri(uri)
        self._fps_request = None if fps is None else check_fps(fps, uri, "fix the fps setting")
        self.fps = self._fps_request or DEFAULT_DEVICE_FPS
        self._cap: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self.api == cv2.CAP_GSTREAMER and not has_gstreamer():
            raise SourceError(
                f"{self.uri}: this OpenCV is built without GStreamer (the opencv-python wheels are); "
                "install an OpenCV built with it (e.g. the distribution's python3-opencv) or use "
                "device://<index> / rtsp://"
            )
        cap = cv2.VideoCapture(self.target, self.api)
        if not cap.isOpened():
            cap.release()
            hint = (
                "check the grabber is plugged in and which index it has (`v4l2-ctl --list-devices`; "
                "device://N is /dev/videoN)"
                if isinstance(self.target, int)
                else "check the address/pipeline and that the sender is running"
            )
            raise SourceError(f"{self.uri}: cannot open the capture device; {hint}")
        if self._fps_request is not None:
            cap.set(cv2.CAP_PROP_FPS, self._fps_request)
        else:
            reported = float(cap.get(cv2.CAP_PROP_FPS))
            self.fps = reported if 0 < reported <= MAX_FPS else DEFAULT_DEVICE_FPS
        self._cap = cap
        self._t0: float | None = None

    def read(self) -> SourceFrame | None:
        if self._cap is None:
            raise SourceError(f"{self.uri}: read() before open(); use `with open_source(uri) as src:`")
        for attempt in range(self.retries + 1):
            ok, frame = self._cap.read()
            if ok:
                now = time.monotonic()
                if self._t0 is None:
                    self._t0 = now
                gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
                return SourceFrame(pixels=gray, t=now - self._t0)
            if not self._cap.isOpened():
                return None
            if attempt < self.retries:
                time.sleep(self.retry_wait_s)
        raise SourceError(
            f"{self.uri}: no frame after {self.retries + 1} tries {self.retry_wait_s:g} s apart; "
            "check the cable/stream and that no other program holds the device"
        )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
