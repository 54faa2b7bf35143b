"""Dataset loaders for the public echo datasets, in their published layouts.

Every loader meets :class:`ClipDataset`: ``ds[i]`` is a :class:`ClipSample` whose clip is one beat
made by :func:`edge_agent.core.clip.make_clip`, and ``names``/``efs``/``quality`` come from the label
files without decoding any video.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS, demographics_vector
from edge_agent.core.sample import ClipSample, DatasetError
from edge_agent.ml.datasets.base import ClipDataset, read_video
from edge_agent.ml.datasets.camus import Camus, read_camus_sequence
from edge_agent.ml.datasets.echonet import EchoNetDynamic
from edge_agent.ml.datasets.pediatric import EchoNetPediatric

__all__ = [
    "DEMOGRAPHIC_FIELDS",
    "Camus",
    "ClipDataset",
    "ClipSample",
    "DatasetError",
    "EchoNetDynamic",
    "EchoNetPediatric",
    "demographics_vector",
    "open_dataset",
    "read_camus_sequence",
    "read_video",
]

DatasetFormat = Literal["echonet", "pediatric", "camus"]


def open_dataset(
    root: str | Path,
    format: DatasetFormat,
    split: str | Sequence[Any] = "ALL",
    **options: Any,
) -> ClipDataset:
    """Open a dataset by format name.

    root: the dataset folder (for pediatric, one view folder such as ``A4C/``).
    format: ``"echonet"`` (EchoNet-Dynamic), ``"pediatric"`` (EchoNet-Pediatric) or ``"camus"``.
    split: ``"TRAIN"``/``"VAL"``/``"TEST"``/``"ALL"`` or the loader's list form (split names,
        fold numbers, patient ids).
    options: passed to the loader: ``fps=`` for pediatric, ``view=``/``default_fps=`` for CAMUS.
    """
    loaders = {"echonet": EchoNetDynamic, "pediatric": EchoNetPediatric, "camus": Camus}
    loader = loaders.get(format)
    if loader is None:
        raise DatasetError(f"{root}: dataset format {format!r} is not one of {list(loaders)}")
    return loader(root, split=split, **options)
