"""Frame sources: one URI → a stream of native-resolution frames (see :mod:`edge_agent.live.sources.base`).

with open_source("synthetic://?ef=35&hr=72&quality=poor", fps=None) as src:
    while (frame := src.read()) is not None:
        ...  # frame.pixels, frame.t (s), frame.r_wave, frame.truth
"""

from edge_agent.live.sources.base import FrameSource, SourceError, SourceFrame
from edge_agent.live.sources.registry import open_source

__all__ = ["FrameSource", "SourceError", "SourceFrame", "open_source"]
