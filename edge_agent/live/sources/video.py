"""Video files (AVI, MP4, MOV, MKV) through OpenCV, decoded to grayscale as the dataset loaders do.

A damaged file never surfaces as a raw OpenCV error: an empty file, one OpenCV cannot open (garbage
with a video suffix, an MP4 cut off before its index) or one with no decodable frame is a
SourceError naming the file and the fix; a file cut off mid-stream (an AVI copy interrupted) plays
the frames before the damage and then ends — or loops — with a warning naming the file and how many
of the header's frames were missing.
"""

from __future__ import annotations

import logging
from typing import Any

import cv2

from edge_agent.live.sources.base import FileSource, SourceError, SourceFrame, check_fps

log = logging.getLogger(__name__)


class VideoSource(FileSource):
    """Frames of a video file, (H, W) uint8 grayscale (BGR→gray exactly as datasets.base.read_video).

    fps: the container's (CAP_PROP_FPS) unless ``fps`` is given; t = frame index / fps, counting on
    across restarts when ``loop`` is set. The caller paces frames at their t (``live`` is False).
    """

    def __init__(self, uri: str, **kwargs: Any) -> None:
        super().__init__(uri, **kwargs)
        self._cap: cv2.VideoCapture | None = None

    def _capture(self) -> cv2.VideoCapture:
        cap = cv2.VideoCapture(str(self.path))
        if not cap.isOpened():
            cap.release()
            raise SourceError(
                f"{self.path}: cannot be opened as a video (corrupt, truncated or an unsupported codec); "
                "re-encode it with `ffmpeg -i IN -c:v mjpeg OUT.avi`"
            )
        return cap

    def open(self) -> None:
        if not self.path.is_file():
            raise SourceError(f"{self.path}: video file not found; check the source path")
        if self.path.stat().st_size == 0:
            raise SourceError(f"{self.path}: the video file is empty (0 bytes); copy or record it again")
        self._cap = self._capture()
        # The header's frame count (0 or negative when the container does not say): a pass that ends
        # short of it met a cut-off or damaged file.
        self._expected = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        self.missing_frames = 0  # frames the header promised but the last pass could not decode
        if self._fps_override is not None:
            self.fps = check_fps(self._fps_override, self.uri, "fix the fps setting")
        else:
            header = float(self._cap.get(cv2.CAP_PROP_FPS))
            self.fps = check_fps(
                header, str(self.path), "the header has no usable rate: set fps for this source"
            )
        self._k = 0  # frames delivered so far, across loops
        self._in_pass = 0  # frames delivered since the last restart
        self._pass_ended = False

    def read(self) -> SourceFrame | None:
        if self._cap is None:
            raise SourceError(f"{self.uri}: read() before open(); use `with open_source(uri) as src:`")
        ok, frame = self._grab()
        if not ok:
            self._check_complete()
        seam = False
        if not ok and self.loop and self._in_pass > 0:
            # Reopening is more reliable than seeking to frame 0 across containers and codecs.
            self._cap.release()
            self._cap = self._capture()
            self._in_pass = 0
            self._pass_ended = False
            ok, frame = self._grab()
            seam = True
        if not ok:
            if self._k == 0:
                raise SourceError(
                    f"{self.path}: the video has 0 decodable frames; re-download or re-encode it"
                )
            return None
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        out = SourceFrame(pixels=gray, t=self._k / self.fps, seam=seam)
        self._k += 1
        self._in_pass += 1
        return out

    def _grab(self) -> tuple[bool, Any]:
        """The next decoded frame, (ok, BGR or gray array); a decoder exception is a SourceError."""
        assert self._cap is not None
        try:
            return self._cap.read()
        except cv2.error as e:
            raise SourceError(
                f"{self.path}: frame {self._in_pass + 1} cannot be decoded ({str(e).strip()}); the file is "
                "damaged: re-encode it with `ffmpeg -i IN -c:v mjpeg OUT.avi`"
            ) from None

    def _check_complete(self) -> None:
        """At the end of a pass: warn (once per pass) when the file held fewer frames than its header says."""
        if self._pass_ended:
            return
        self._pass_ended = True
        missing = self._expected - self._in_pass
        if self._in_pass > 0 and missing > 0:
            self.missing_frames = missing
            log.warning(
                "%s: the stream ends after %d of the %d frames in its header: the file is cut off or damaged "
                "there; copy or record it again",
                self.path,
                self._in_pass,
                self._expected,
            )

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
