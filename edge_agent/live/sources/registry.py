"""URI → source: the one place that knows every concrete source (they know only :mod:`.base`)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from urllib.parse import urlsplit

from edge_agent.live.sources.base import (
    DICOM_SUFFIXES,
    SOURCE_VIDEO_SUFFIXES,
    VALID_URIS,
    FrameSource,
    SourceError,
    uri_path,
)
from edge_agent.live.sources.device import DeviceSource, is_device_uri
from edge_agent.live.sources.dicom import DicomSource
from edge_agent.live.sources.synthetic import SyntheticSource
from edge_agent.live.sources.video import VideoSource


def open_source(
    uri: str,
    *,
    fps: float | None = None,
    loop: bool = False,
    demographics: Mapping[str, float] | None = None,
) -> FrameSource:
    """The source a URI names (see the module docstring), not yet opened.

    fps: overrides the file's/URI's frame rate (the caller then paces at it; a live device is asked
    for it). loop: restart files at their end with t still increasing (synthetic and live sources
    never end, so it does not apply to them). demographics: override the source's, field by field.
    """
    uri = uri.strip()
    scheme = "" if re.fullmatch(r"\d+", uri) else urlsplit(uri).scheme.lower()
    if scheme == "synthetic":
        return SyntheticSource(uri, fps=fps, demographics=demographics)
    if is_device_uri(uri):
        return DeviceSource(uri, fps=fps, demographics=demographics)
    if scheme == "dicom":
        return DicomSource(uri, fps=fps, loop=loop, demographics=demographics)
    if scheme in ("", "file"):
        suffix = uri_path(uri).suffix.lower()
        if suffix in SOURCE_VIDEO_SUFFIXES:
            return VideoSource(uri, fps=fps, loop=loop, demographics=demographics)
        if suffix in DICOM_SUFFIXES:
            return DicomSource(uri, fps=fps, loop=loop, demographics=demographics)
        raise SourceError(
            f"{uri}: cannot tell the file type from the suffix {suffix!r}; use a video ending in "
            f"{'/'.join(SOURCE_VIDEO_SUFFIXES)}, a .dcm file, or dicom://<path> for a DICOM without "
            "the suffix"
        )
    raise SourceError(f"{uri}: unknown source scheme {scheme!r}; valid sources are: " + "; ".join(VALID_URIS))
