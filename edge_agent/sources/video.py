"""Video files (AVI, MP4, MOV, MKV) through OpenCV, decoded to grayscale as the dataset loaders do."""

from __future__ import annotations

from typing import Any

import cv2

from edge_agent.sources.base import FileSource, SourceError, SourceFrame, check_fps


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
        self._cap = self._capture()
        if self._fps_override is not None:
            self.fps = check_fps(self._fps_override, self.uri, "fix the fps setting")
        else:
            header = float(self._cap.get(cv2.CAP_PROP_FPS))
            self.fps = check_fps(
                header, str(self.path), "the header has no usable rate: set fps for this source"
            )
        self._k = 0  # frames delivered so far, across loops
        self._in_pass = 0  # frames delivered since the last restart

    def read(self) -> SourceFrame | None:
        if self._cap is None:
            raise SourceError(f"{self.uri}: read() before open(); use `with open_source(uri) as src:`")
        ok, frame = self._cap.read()
        if not ok and self.loop and self._in_pass > 0:
            # Reopening is more reliable than seeking to frame 0 across containers and codecs.
            self._cap.release()
            self._cap = self._capture()
            self._in_pass = 0
            ok, frame = self._cap.read()
        if not ok:
            if self._k == 0:
                raise SourceError(
                    f"{self.path}: the video has 0 decodable frames; re-download or re-encode it"
                )
            return None
        gray = cv2.cvtColor(frame, cv2.COLOR_BGR2GRAY) if frame.ndim == 3 else frame
        out = SourceFrame(pixels=gray, t=self._k / self.fps)
        self._k += 1
        self._in_pass += 1
        return out

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None
