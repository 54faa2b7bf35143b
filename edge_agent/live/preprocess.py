"""Capture preprocessing: native frames → the model's square grayscale frames, cheaply, per frame.

A scanner's video output (frame grabber, DICOM export) shows the ultrasound sector among text,
an ECG trace and UI overlays. The sector is found once from the first ~1 s of frames (the image
moves inside it; overlays are static or small), padded to a square with the apex at the top
centre (as EchoNet's 112×112 crops), and every later frame is cropped and resized with it::

    pre = Preprocessor("auto")
    while (frame := source.read()) is not None:
        out = pre.push(frame.pixels)
        if out is None:
            continue  # warming up: the frame is buffered, keep its t
        for early in pre.drain():  # the warm-up frames, once, in push order
            ...
        ...  # out: (112, 112) uint8

Frames that already have the model's size pass through untouched (the synthetic source and
EchoNet AVIs are in the trained format; cropping them would change what the model sees).
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import cv2
import numpy as np


class Box(NamedTuple):
    """A pixel rectangle: x0, y0 inclusive, x1, y1 exclusive. May extend beyond the frame."""

    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def w(self) -> int:
        return self.x1 - self.x0

    @property
    def h(self) -> int:
        return self.y1 - self.y0


class SectorError(ValueError):
    """No moving ultrasound sector in the frames (a frozen or blank screen)."""


def to_gray(pixels: np.ndarray) -> np.ndarray:
    """(H, W) uint8 grayscale or (H, W, 3) uint8 RGB → (H, W) uint8 grayscale."""
    if pixels.dtype != np.uint8:
        raise ValueError(f"frames must be uint8, got {pixels.dtype}; convert the source to 8-bit")
    if pixels.ndim == 2:
        return pixels
    if pixels.ndim == 3 and pixels.shape[2] == 3:
        return cv2.cvtColor(pixels, cv2.COLOR_RGB2GRAY)
    raise ValueError(f"frames must be (H, W) gray or (H, W, 3) RGB, got shape {pixels.shape}")


def find_sector(gray_frames: np.ndarray) -> Box:
    """Bounding box of the ultrasound sector from (N, H, W) uint8 frames (N ≥ 2, ≈1 s of video).

    The temporal standard deviation is high where the image moves (speckle, the heart) and at the
    capture noise level on static overlays. Blurred, it is thresholded twice: a strong level finds
    the moving heart, a weak level just above the noise floor (the quiet far field at the sector's
    edges) grows it; the weak component holding most of the heart, opened to cut thin bridges to
    flickering overlays, gives the box. Raises SectorError when nothing moves.
    """
    if gray_frames.ndim != 3 or len(gray_frames) < 2:
        raise ValueError(f"find_sector needs (N >= 2, H, W) gray frames, got shape {gray_frames.shape}")
    _n, h, w = gray_frames.shape
    x = gray_frames.astype(np.float32)
    mean = x.mean(axis=0)
    std = np.sqrt(np.maximum((x * x).mean(axis=0) - mean * mean, 0.0))
    k = max(3, min(h, w) // 40) | 1  # ~12 px at 480 lines: averages speckle, keeps the sector's outline
    smooth = cv2.blur(std, (k, k))
    p2, p5, p20, p99 = np.percentile(smooth, [2, 5, 20, 99])
    floor = p5  # static background: at least a few % of any screen lies outside the sector
    if p99 - floor < 2.0:  # under 2 grey levels of motion anywhere: a frozen or blank screen
        raise SectorError(
            f"no moving sector in {len(gray_frames)} frames (motion {p99 - floor:.2f} grey levels); "
            "the image is frozen or blank: unfreeze the scanner, or set region to 'full' or x,y,w,h"
        )
    strong = smooth > floor + 0.25 * (p99 - floor)
    # 0.1 grey level above the floor plus its own spread: the far field moves only a little.
    weak = (smooth > floor + 0.1 + 4.0 * (p20 - p2)).astype(np.uint8)
    weak = cv2.morphologyEx(weak, cv2.MORPH_OPEN, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (k, k)))
    n_labels, labels, stats, _ = cv2.connectedComponentsWithStats(weak, connectivity=8)
    if n_labels < 2:
        raise SectorError("no sector-sized moving region; set region to 'full' or x,y,w,h")
    heart = np.bincount(labels[strong], minlength=n_labels)
    heart[0] = 0  # label 0 is the background
    best = int(np.argmax(heart)) if heart.max() > 0 else 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    x0, y0, bw, bh = (int(v) for v in stats[best, :4])
    # The box blur spread the mask by k // 2 beyond the moving pixels; take it back.
    r = k // 2
    return Box(x0 + r, y0 + r, max(x0 + r + 1, x0 + bw - r), max(y0 + r + 1, y0 + bh - r))


def crop_square(box: Box, frame_shape: tuple[int, ...]) -> Box:
    """The sector box padded to a square: centred horizontally on it, top aligned (apex at the top).

    The square's side is the box's larger side, so the fan spans the width when it is wider than
    deep, as in EchoNet's crops. It may extend beyond the frame (``frame_shape`` (H, W, ...)):
    :class:`Preprocessor` fills all of it outside the sector box with black.
    """
    h, w = frame_shape[:2]
    if box.w < 1 or box.h < 1 or box.x1 <= 0 or box.y1 <= 0 or box.x0 >= w or box.y0 >= h:
        raise ValueError(f"sector box {tuple(box)} is empty or outside the {w}×{h} frame")
    side = max(box.w, box.h)
    x0 = (box.x0 + box.x1 - side) // 2
    return Box(x0, box.y0, x0 + side, box.y0 + side)


class _Crop:
    """Crop ``box`` of (H, W) frames, resized to size × size; only pixels inside ``keep`` and the
    frame are copied, the rest of the box (padding, overlays below the sector) is black."""

    def __init__(self, box: Box, keep: Box, shape: tuple[int, int], size: int) -> None:
        h, w = shape
        self.size = size
        sx, sy = size / box.w, size / box.h
        # The part of the box kept, and where it lands in the output.
        ix0, iy0 = max(box.x0, keep.x0, 0), max(box.y0, keep.y0, 0)
        ix1, iy1 = min(box.x1, keep.x1, w), min(box.y1, keep.y1, h)
        if ix1 <= ix0 or iy1 <= iy0:
            raise ValueError(f"region {tuple(box)} (x0, y0, x1, y1) lies outside the {w}×{h} frame")
        self.src = (slice(iy0, iy1), slice(ix0, ix1))
        dx0, dy0 = round((ix0 - box.x0) * sx), round((iy0 - box.y0) * sy)
        dx1, dy1 = max(dx0 + 1, round((ix1 - box.x0) * sx)), max(dy0 + 1, round((iy1 - box.y0) * sy))
        self.dst = (slice(dy0, dy1), slice(dx0, dx1))
        self.full = (dx0, dy0, dx1, dy1) == (0, 0, size, size)

    def __call__(self, gray: np.ndarray) -> np.ndarray:
        part = gray[self.src]
        dst_h, dst_w = self.dst[0].stop - self.dst[0].start, self.dst[1].stop - self.dst[1].start
        # INTER_AREA averages the pixels a target pixel covers: no aliasing of speckle when shrinking.
        resized = cv2.resize(part, (dst_w, dst_h), interpolation=cv2.INTER_AREA)
        if self.full:
            return resized
        out = np.zeros((self.size, self.size), np.uint8)
        out[self.dst] = resized
        return out


Region = Literal["auto", "full"] | tuple[int, int, int, int]


class Preprocessor:
    """Per-frame preprocessing of one stream: push native frames, get (size, size) uint8 frames.

    region: ``"auto"`` finds the sector from the first ``warmup_frames`` frames (buffered: push
    returns None for them, :meth:`drain` hands them back once the sector is known; frames already
    size × size pass through untouched); ``"full"`` resizes the whole frame; ``(x, y, w, h)`` crops
    that rectangle (choose a square one to keep the aspect ratio; outside the frame is black).
    box: the crop in source pixels (x0, y0, x1, y1); None while warming up. sector: the part of
    it copied (auto: the sector found; the rest of the square, overlays included, is black).
    dropped: warm-up frames discarded because nothing moved in them (frozen screen) or because
    the frame size changed before the sector was found; auto mode then warms up again.
    no_sector: why the last warm-up found no sector (None once one is found, or before a try).
    """

    def __init__(self, region: Region = "auto", size: int = 112, warmup_frames: int = 30) -> None:
        if size < 1 or warmup_frames < 2:
            raise ValueError(f"size must be >= 1 and warmup_frames >= 2, got {size}, {warmup_frames}")
        if isinstance(region, str):
            if region not in ("auto", "full"):
                raise ValueError(f"region {region!r} must be 'auto', 'full' or (x, y, w, h)")
        elif len(region) != 4 or region[2] < 1 or region[3] < 1:
            raise ValueError(f"region {region!r} must be (x, y, w, h) with w, h >= 1, or 'auto' / 'full'")
        self.region = region
        self.size = size
        self.warmup_frames = warmup_frames
        self.box: Box | None = None
        self.sector: Box | None = None
        self.dropped = 0
        self.no_sector: str | None = None
        self._shape: tuple[int, int] | None = None
        self._crop: _Crop | None = None
        self._warmup: list[np.ndarray] = []
        self._ready: list[np.ndarray] = []

    def _set_box(self, box: Box, shape: tuple[int, int], sector: Box | None = None) -> None:
        self.box = box
        self.sector = box if sector is None else sector
        # A frame already size × size taken whole needs no work at all.
        identity = shape == (self.size, self.size) and box == Box(0, 0, self.size, self.size)
        self._crop = None if identity else _Crop(box, self.sector, shape, self.size)

    def _new_shape(self, shape: tuple[int, int]) -> None:
        """First frame, or the source changed resolution: choose the crop for this frame size."""
        self.dropped += len(self._warmup)
        self._warmup = []
        self._shape = shape
        self.box = self.sector = self._crop = None
        h, w = shape
        if self.region == "full" or (self.region == "auto" and shape == (self.size, self.size)):
            self._set_box(Box(0, 0, w, h), shape)
        elif self.region != "auto":
            x, y, bw, bh = (int(v) for v in self.region)
            self._set_box(Box(x, y, x + bw, y + bh), shape)

    def _apply(self, gray: np.ndarray) -> np.ndarray:
        return gray if self._crop is None else self._crop(gray)

    def push(self, pixels: np.ndarray) -> np.ndarray | None:
        """One native frame ((H, W) gray or (H, W, 3) RGB uint8) → (size, size) uint8, or None while
        the sector is being found (the frame is kept for :meth:`drain`)."""
        gray = to_gray(pixels)
        if gray.shape != self._shape:
            self._new_shape(gray.shape)
        if self.box is not None:
            return self._apply(gray)
        self._warmup.append(gray)
        if len(self._warmup) < self.warmup_frames:
            return None
        try:
            sector = find_sector(np.stack(self._warmup))
        except SectorError as e:
            # Frozen screen, or no sector at all: those frames carry nothing; warm up again on the
            # next ones, and say why (the capture logs it and tells the readers).
            self.dropped += len(self._warmup)
            self._warmup = []
            self.no_sector = str(e)
            return None
        self.no_sector = None
        self._set_box(crop_square(sector, gray.shape), gray.shape, sector)
        self._ready = [self._apply(g) for g in self._warmup[:-1]]
        self._warmup = []
        return self._apply(gray)

    def drain(self) -> list[np.ndarray]:
        """The (size, size) frames of the warm-up, in push order, once the sector is known (else []).

        They are the last ``len(result)`` frames for which push returned None, in order, just
        before the frame whose push returned a result; earlier None frames were ``dropped``.
        """
        ready, self._ready = self._ready, []
        return ready
