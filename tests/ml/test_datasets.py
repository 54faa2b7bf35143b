"""Dataset loaders against tiny fixtures written in the exact published layouts (tests/fixtures.py)."""

from __future__ import annotations

import csv
import tempfile
from pathlib import Path

import numpy as np
import pytest
from fixtures import (
    DARK_THRESHOLD,
    EchoVideo,
    PediatricVideo,
    camus_frames,
    ellipse_chords,
    ellipse_outline,
    format_cfg,
    lv_ellipse,
    render_echonet_frames,
    write_camus_patient,
    write_echonet_dynamic,
    write_echonet_pediatric,
    write_metaimage,
)
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.core.clip import beat_bounds
from edge_agent.ml.datasets import (
    Camus,
    ClipDataset,
    ClipSample,
    DatasetError,
    EchoNetDynamic,
    EchoNetPediatric,
    open_dataset,
    read_camus_sequence,
    read_video,
)
from edge_agent.ml.datasets.camus import (
    CAMUS_DEFAULT_FPS,
    mirrored_half_cycle,
    parse_cfg,
    parse_metaimage_header,
    read_metaimage,
    to_uint8,
)
from edge_agent.ml.datasets.tracings import chord_area, ed_es_from_areas, load_volume_tracings, polygon_area


def dark_area(clip: np.ndarray) -> np.ndarray:
    """(F, H, W) uint8 → (F,) count of LV-dark pixels per frame."""
    return (clip < DARK_THRESHOLD).sum(axis=(1, 2))


def rewrite_csv(path: Path, edit) -> None:
    """Apply ``edit(rows)`` to a CSV's rows (header included) in place."""
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    with path.open("w", newline="") as f:
        csv.writer(f).writerows(edit(rows))


def check_sample(sample: ClipSample) -> None:
    assert sample.clip.shape == (32, 112, 112)
    assert sample.clip.dtype == np.uint8
    assert sample.demographics.shape == (4,) and sample.demographics.dtype == np.float32
    assert sample.demo_mask.shape == (4,) and sample.demo_mask.dtype == np.bool_


# --- EchoNet-Dynamic ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def echonet_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    videos = [
        EchoVideo("traced", ef=61.0, split="TRAIN"),
        EchoVideo("untraced", ef=35.0, split="VAL", traced=False, ed_frame=25),
        EchoVideo("other", ef=70.0, split="TEST"),
    ]
    return write_echonet_dynamic(tmp_path_factory.mktemp("echonet"), videos)


def test_echonet_clip_starts_at_largest_traced_frame(echonet_root: Path) -> None:
    ds = EchoNetDynamic(echonet_root, split="TRAIN")
    sample = ds[0]
    check_sample(sample)
    assert (sample.name, sample.ef, sample.quality) == ("traced", 61.0, None)
    assert not sample.demo_mask.any() and not sample.demographics.any()
    assert ds.ed_es_frames == {"traced": (10, 40)}
    area = dark_area(sample.clip)
    # The beat starts at ED (the largest LV) and reaches ES (the smallest) half way through.
    assert area[0] == area.max()
    assert abs(int(np.argmin(area)) - 16) <= 1
    assert area[16] < 0.6 * area[0]


def test_echonet_uses_filelist_fps_not_the_avi_header(echonet_root: Path) -> None:
    ds = EchoNetDynamic(echonet_root, split="TRAIN")
    frames, header_fps = read_video(ds.files[0])
    assert header_fps == pytest.approx(30.0) and ds.fps[0] == 50.0
    # At the header's 30 fps a 60-frame period is a 30 bpm heart, outside the search: the beat would
    # fall back to a fixed 1 s (30 frames, half a cycle, ending near ES).
    assert beat_bounds(frames, header_fps, ed_frame=10)[2] == "ed_fixed"
    sample = ds[0]
    assert sample.beat_how == "ed_period"
    area = dark_area(sample.clip)
    # At FileList's 50 fps the beat is one full 60-frame cycle: it ends back near ED size.
    assert area[-1] > 0.9 * area[0]


def test_echonet_untraced_video_falls_back_to_periodicity(echonet_root: Path) -> None:
    ds = EchoNetDynamic(echonet_root, split="VAL")
    assert ds.names == ["untraced"] and ds.ed_es_frames == {}
    sample = ds[0]
    check_sample(sample)
    assert sample.beat_how == "period"


@pytest.mark.parametrize("with_avi", [True, False])
def test_echonet_filelist_names_with_and_without_avi(tmp_path: Path, with_avi: bool) -> None:
    videos = [EchoVideo("a", ef=50.0), EchoVideo("b", ef=20.0, ed_frame=5)]
    write_echonet_dynamic(tmp_path, videos, filelist_with_avi=with_avi, write_videos=False)
    ds = EchoNetDynamic(tmp_path, split="ALL")
    assert ds.names == ["a", "b"]
    assert [p.name for p in ds.files] == ["a.avi", "b.avi"]
    # VolumeTracings names carry .avi either way: the join is by stem.
    assert ds.ed_es_frames == {"a": (10, 40), "b": (5, 35)}
    np.testing.assert_array_equal(ds.efs, [50.0, 20.0])
    np.testing.assert_array_equal(ds.esv, [40.0, 40.0])
    np.testing.assert_array_equal(ds.edv, [90.0, 90.0])
    assert isinstance(ds, ClipDataset)


def test_echonet_splits(tmp_path: Path) -> None:
    videos = [EchoVideo("t1"), EchoVideo("v1", split="VAL"), EchoVideo("s1", split="TEST"), EchoVideo("t2")]
    write_echonet_dynamic(tmp_path, videos, write_videos=False)
    assert EchoNetDynamic(tmp_path, "TRAIN").names == ["t1", "t2"]
    assert EchoNetDynamic(tmp_path, "test").names == ["s1"]
    assert EchoNetDynamic(tmp_path, ["VAL", "TEST"]).names == ["v1", "s1"]
    assert len(EchoNetDynamic(tmp_path, "ALL")) == 4
    with pytest.raises(DatasetError, match="split 'HOLDOUT'"):
        EchoNetDynamic(tmp_path, "HOLDOUT")


def test_echonet_blank_volumes_are_nan(tmp_path: Path) -> None:
    write_echonet_dynamic(tmp_path, [EchoVideo("a")], write_videos=False)
    rewrite_csv(tmp_path / "FileList.csv", lambda rows: [rows[0], [*rows[1][:2], "", *rows[1][3:]]])
    ds = EchoNetDynamic(tmp_path, "ALL")
    assert np.isnan(ds.esv[0]) and ds.edv[0] == 90.0


def test_echonet_missing_column_names_column_and_file(tmp_path: Path) -> None:
    write_echonet_dynamic(tmp_path, [EchoVideo("a")], write_videos=False)
    rewrite_csv(tmp_path / "FileList.csv", lambda rows: [r[:6] + r[7:] for r in rows])  # drop FPS
    with pytest.raises(DatasetError, match=r"FileList\.csv: missing column 'FPS'"):
        EchoNetDynamic(tmp_path)


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (1, "130", r"line 3: EF=130.0 is outside \[0, 100\]"),
        (1, "0.5x", r"line 3: EF='0.5x' is not a number"),
        (8, "HOLDOUT", r"line 3: Split='HOLDOUT' is not one of"),
        (6, "0", r"line 3: FPS=0.0 must be positive"),
    ],
)
def test_echonet_bad_filelist_values_name_line_and_value(
    tmp_path: Path, column: int, value: str, message: str
) -> None:
    write_echonet_dynamic(tmp_path, [EchoVideo("a"), EchoVideo("b")], write_videos=False)

    def edit(rows: list[list[str]]) -> list[list[str]]:
        rows[2][column] = value
        return rows

    rewrite_csv(tmp_path / "FileList.csv", edit)
    with pytest.raises(DatasetError, match=message) as err:
        EchoNetDynamic(tmp_path, "ALL")
    assert "FileList.csv" in str(err.value)


def test_echonet_duplicate_file_name(tmp_path: Path) -> None:
    write_echonet_dynamic(tmp_path, [EchoVideo("a"), EchoVideo("a", split="VAL")], write_videos=False)
    with pytest.raises(DatasetError, match="'a' repeats line 2"):
        EchoNetDynamic(tmp_path, "ALL")


def test_echonet_missing_and_corrupt_videos_fail_at_getitem(tmp_path: Path) -> None:
    write_echonet_dynamic(tmp_path, [EchoVideo("gone"), EchoVideo("junk")], write_videos=False)
    (tmp_path / "Videos").mkdir()
    (tmp_path / "Videos" / "junk.avi").write_bytes(b"RIFF not really an AVI" * 50)
    ds = EchoNetDynamic(tmp_path, "ALL")  # labels are fine: building succeeds
    with pytest.raises(DatasetError, match=r"gone\.avi: video file not found"):
        ds[0]
    with pytest.raises(DatasetError, match=r"junk\.avi: (cannot be opened|the video has 0)"):
        ds[1]


def test_echonet_ed_past_end_of_video(tmp_path: Path) -> None:
    write_echonet_dynamic(tmp_path, [EchoVideo("a", n_frames=30, ed_frame=40)])
    with pytest.raises(DatasetError, match="traced ED frame 40 is past the video's last frame"):
        EchoNetDynamic(tmp_path)[0]


# --- tracings -----------------------------------------------------------------------------------------


def test_polygon_and_chord_areas_match_geometry() -> None:
    assert polygon_area(np.array([0.0, 2, 2, 0]), np.array([0.0, 0, 3, 3])) == pytest.approx(6.0)
    cx, cy, rx, ry = 50.0, 60.0, 12.0, 30.0
    exact = np.pi * rx * ry
    assert chord_area(ellipse_chords(cx, cy, rx, ry, n_chords=40)) == pytest.approx(exact, rel=0.03)
    outline = ellipse_outline(cx, cy, rx, ry, n_points=80)
    assert polygon_area(outline[:, 0], outline[:, 1]) == pytest.approx(exact, rel=0.01)
    # Including the long axis in the outline would change the area: it must be left out.
    chords = ellipse_chords(cx, cy, rx, ry)
    assert chord_area(chords) != pytest.approx(chord_area(chords[[1, 0, *range(2, len(chords))]]))


def test_ed_es_from_areas() -> None:
    assert ed_es_from_areas({40: 100.0, 10: 300.0}) == (10, 40)
    assert ed_es_from_areas({3: 5.0, 9: 7.0, 20: 6.0}) == (9, 3)
    assert ed_es_from_areas({3: 5.0}) is None


def test_tracings_too_few_rows_and_unknown_layout(tmp_path: Path) -> None:
    path = tmp_path / "VolumeTracings.csv"
    path.write_text("FileName,X1,Y1,X2,Y2,Frame\na.avi,1,1,1,9,4\na.avi,0,2,2,2,4\n")
    with pytest.raises(DatasetError, match="a frame 4 has 2 tracing rows"):
        load_volume_tracings(path)
    path.write_text("FileName,Xa,Ya,Frame\n")
    with pytest.raises(DatasetError, match="match neither tracing layout"):
        load_volume_tracings(path)


def test_read_video_returns_gray_frames_and_header_fps(echonet_root: Path) -> None:
    frames, fps = read_video(echonet_root / "Videos" / "traced.avi")
    assert frames.shape == (120, 112, 112) and frames.dtype == np.uint8
    assert fps == pytest.approx(30.0)
    # MJPG is lossy, but the LV must be where the fixture drew it.
    truth = render_echonet_frames(EchoVideo("traced"))
    assert np.abs(frames.astype(int) - truth).mean() < 4


# --- EchoNet-Pediatric --------------------------------------------------------------------------------


def pediatric_videos() -> list[PediatricVideo]:
    return [
        PediatricVideo("kid_a", ef=58.0, sex="Male", age="4.5", weight="", height="104", fold=3),
        PediatricVideo("kid_b", ef=62.0, sex="", age="12", weight="40", height="0", fold=8, traced=False),
        PediatricVideo("kid_c", ef=45.0, sex="F", age="0", weight="3.4", height="50", fold=9),
    ]


@pytest.mark.parametrize("tracing_form", ["points", "chords"])
def test_pediatric_demographics_masks_and_folds(tmp_path: Path, tracing_form: str) -> None:
    write_echonet_pediatric(tmp_path, pediatric_videos(), tracing_form=tracing_form)
    ds = EchoNetPediatric(tmp_path, split="ALL")
    assert ds.names == ["kid_a", "kid_b", "kid_c"]
    np.testing.assert_array_equal(ds.folds, [3, 8, 9])
    assert ds.ed_es_frames == {"kid_a": (10, 40), "kid_c": (10, 40)}
    values = np.stack([d[0] for d in ds.demographics])
    masks = np.stack([d[1] for d in ds.demographics])
    np.testing.assert_array_equal(
        masks, [[True, True, False, True], [True, False, True, False], [True, True, True, True]]
    )
    np.testing.assert_allclose(values, [[4.5, 1, 0, 104], [12, 0, 40, 0], [0, 0, 3.4, 50]], rtol=1e-6)
    assert EchoNetPediatric(tmp_path, "TRAIN").names == ["kid_a"]
    assert EchoNetPediatric(tmp_path, "VAL").names == ["kid_b"]
    assert EchoNetPediatric(tmp_path, "TEST").names == ["kid_c"]
    assert EchoNetPediatric(tmp_path, [8, 9]).names == ["kid_b", "kid_c"]


def test_pediatric_sample_and_fps_override(tmp_path: Path) -> None:
    write_echonet_pediatric(tmp_path, pediatric_videos()[:1])
    header = EchoNetPediatric(tmp_path, "ALL")[0]
    check_sample(header)
    # The AVI header says 30 fps: the 60-frame cycle is out of the heart-rate search range.
    assert header.beat_how == "ed_fixed"
    sample = EchoNetPediatric(tmp_path, "ALL", fps=50.0)[0]
    assert sample.beat_how == "ed_period"
    np.testing.assert_array_equal(sample.demo_mask, [True, True, False, True])
    assert sample.demographics[0] == pytest.approx(4.5) and sample.ef == 58.0
    area = dark_area(sample.clip)
    assert area[0] == area.max()


@pytest.mark.parametrize(
    ("column", "value", "message"),
    [
        (2, "X", r"line 2: Sex='X' is not M, F"),
        (6, "10", r"line 2: Split='10' must be a fold number 0–9"),
        (4, "-3", r"line 2: Weight=-3.0 is negative"),
        (1, "-1", r"line 2: EF=-1.0 is outside"),
    ],
)
def test_pediatric_bad_values(tmp_path: Path, column: int, value: str, message: str) -> None:
    write_echonet_pediatric(tmp_path, pediatric_videos()[:1])

    def edit(rows: list[list[str]]) -> list[list[str]]:
        rows[1][column] = value
        return rows

    rewrite_csv(tmp_path / "FileList.csv", edit)
    with pytest.raises(DatasetError, match=message):
        EchoNetPediatric(tmp_path, "ALL")


def test_pediatric_missing_column_and_bad_split(tmp_path: Path) -> None:
    write_echonet_pediatric(tmp_path, pediatric_videos()[:1])
    with pytest.raises(DatasetError, match="folds"):
        EchoNetPediatric(tmp_path, [10])
    rewrite_csv(tmp_path / "FileList.csv", lambda rows: [r[:5] + r[6:] for r in rows])
    with pytest.raises(DatasetError, match=r"missing column 'Height'"):
        EchoNetPediatric(tmp_path, "ALL")


# --- CAMUS --------------------------------------------------------------------------------------------


def test_camus_nifti_clip_is_mirrored_half_cycle(tmp_path: Path) -> None:
    write_camus_patient(tmp_path, 1)
    ds = Camus(tmp_path, view="4CH", split="ALL")
    assert ds.names == ["patient0001_4CH"] and ds.quality == ["medium"] and ds.fps[0] == 40.0
    sample = ds[0]
    check_sample(sample)
    assert (sample.beat_how, sample.ef, sample.quality) == ("camus_mirrored", 48.5, "medium")
    np.testing.assert_array_equal(sample.demographics, [61, 1, 0, 0])
    np.testing.assert_array_equal(sample.demo_mask, [True, True, False, False])
    area = dark_area(sample.clip).astype(float)
    # ED (frame 2) first, ES (frame 9) at the middle, then systole mirrored back towards ED.
    assert area[0] == area.max() and int(np.argmin(area)) == 16
    np.testing.assert_allclose(area[1:16], area[31:16:-1], rtol=0.05)


def test_camus_sector_apex_is_at_the_top_in_every_storage_order(tmp_path: Path) -> None:
    write_camus_patient(tmp_path / "whf", 1, nii_layout="WHF")
    write_camus_patient(tmp_path / "hwf", 1, nii_layout="HWF")
    write_camus_patient(tmp_path / "mhd", 1, fmt="mhd")
    clips = [Camus(tmp_path / sub)[0].clip for sub in ("whf", "hwf", "mhd")]
    np.testing.assert_array_equal(clips[0], clips[1])
    np.testing.assert_array_equal(clips[0], clips[2])
    occupied = (clips[0][0] > 0).sum(axis=1)
    assert occupied[:20].mean() < 0.5 * occupied[-20:].mean()


def test_camus_float_intensities_are_scaled_to_uint8(tmp_path: Path) -> None:
    frames = camus_frames()
    folder = write_camus_patient(tmp_path, 1, frames=frames.astype(np.float32) / 255.0)
    seq = read_camus_sequence(folder / "patient0001_4CH_half_sequence.nii.gz")
    assert seq.dtype == np.uint8 and seq.shape == frames.shape
    # Min-max stretching: 0 stays 0, the brightest voxel becomes 255, the rest scale linearly.
    np.testing.assert_allclose(seq, frames * (255.0 / frames.max()), atol=0.51)
    assert Camus(tmp_path)[0].clip.max() >= 250
    np.testing.assert_array_equal(to_uint8(np.array([0, 7, 255], np.int32)), [0, 7, 255])
    np.testing.assert_array_equal(to_uint8(np.array([-1.0, 1.0])), [0, 255])
    np.testing.assert_array_equal(to_uint8(np.full(3, 9.5)), [0, 0, 0])


def test_mirrored_half_cycle_orders_frames() -> None:
    frames = np.arange(10, dtype=np.uint8)[:, None, None] * np.ones((1, 2, 2), np.uint8)
    seq = mirrored_half_cycle(frames, ed=2, es=9)
    np.testing.assert_array_equal(seq[:, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8, 7, 6, 5, 4, 3, 2, 1])


def test_camus_splits_and_patient_lists(tmp_path: Path) -> None:
    small = camus_frames(n_frames=4, ed=1, es=4, height=20, width=16)
    for number in (1, 400, 401, 451):
        write_camus_patient(tmp_path / "training", number, frames=small, cfg={"ED": 1, "ES": 4, "EF": 60})
    # The 2019 release nests patients one level down (training/): root may be its parent.
    assert Camus(tmp_path, split="TRAIN").names == ["patient0001_4CH", "patient0400_4CH"]
    assert Camus(tmp_path, split="VAL").names == ["patient0401_4CH"]
    assert Camus(tmp_path, split="TEST").names == ["patient0451_4CH"]
    assert Camus(tmp_path, split=[451, "patient0001"]).names == ["patient0001_4CH", "patient0451_4CH"]
    with pytest.raises(DatasetError, match="no folder for patients"):
        Camus(tmp_path, split=[2])
    with pytest.raises(DatasetError, match="view '3CH'"):
        Camus(tmp_path, view="3CH")
    with pytest.raises(DatasetError, match=r"Info_2CH\.cfg: not found"):
        Camus(tmp_path, view="2CH")
    with pytest.raises(DatasetError, match="no patientNNNN/ folders"):
        Camus(tmp_path / "training" / "patient0001")


def test_camus_2019_cfg_and_missing_frame_rate(tmp_path: Path) -> None:
    cfg = {"ED": 2, "ES": 9, "NbFrame": 10, "Sex": "F", "Age": 70, "ImageQuality": "Poor", "LVef": 33.0}
    write_camus_patient(tmp_path, 7, fmt="mhd", cfg=cfg)
    ds = Camus(tmp_path)
    assert ds.efs[0] == 33.0 and ds.fps[0] == CAMUS_DEFAULT_FPS and ds.quality == ["poor"]
    sample = ds[0]
    np.testing.assert_array_equal(sample.demographics, [70, 0, 0, 0])


@pytest.mark.parametrize(
    ("cfg_text", "message"),
    [
        ("ES: 9\nEF: 50\n", "no 'ED:' line"),
        ("ED: 2\nES: 9\nEF: fifty\n", "EF='fifty' is not a number"),
        ("ED: 2\nES: 9\nEF: 50\nthis line has no colon\n", "line 4: 'this line has no colon'"),
        ("ED: 2\nES: 9\nEF: 50\nImageQuality: Great\n", "ImageQuality='Great'"),
        ("ED: 2\nES: 9\nImageQuality: Good\n", "no 'EF:'"),
        ("ED: 0\nES: 9\nEF: 50\n", "ED='0' must be a 1-based frame number"),
        ("ED: 2\nED: 3\nES: 9\nEF: 50\n", "key 'ED' appears twice"),
        ("ED: 2\nES: 9\nEF: 50\nFrameRate: -5\n", "FrameRate=-5.0 must be positive"),
    ],
)
def test_camus_bad_cfg(tmp_path: Path, cfg_text: str, message: str) -> None:
    folder = write_camus_patient(tmp_path, 1)
    (folder / "Info_4CH.cfg").write_text(cfg_text)
    with pytest.raises(DatasetError, match=message) as err:
        Camus(tmp_path)
    assert "Info_4CH.cfg" in str(err.value)


def test_camus_cfg_and_sequence_disagree_or_are_missing(tmp_path: Path) -> None:
    folder = write_camus_patient(tmp_path, 1)
    (folder / "Info_4CH.cfg").write_text(format_cfg({"ED": 2, "ES": 9, "NbFrame": 12, "EF": 50}))
    with pytest.raises(DatasetError, match=r"10 frames but Info_4CH\.cfg says NbFrame=12"):
        Camus(tmp_path)[0]
    (folder / "Info_4CH.cfg").write_text(format_cfg({"ED": 2, "ES": 11, "EF": 50}))
    with pytest.raises(DatasetError, match="ED=2, ES=11 must satisfy ED < ES <= 10"):
        Camus(tmp_path)[0]
    (folder / "patient0001_4CH_half_sequence.nii.gz").unlink()
    with pytest.raises(DatasetError, match="no sequence file"):
        Camus(tmp_path)[0]


def test_metaimage_truncated_raw_and_bad_type(tmp_path: Path) -> None:
    mhd = tmp_path / "x.mhd"
    write_metaimage(mhd, np.zeros((3, 4, 5), np.uint8))
    mhd.with_suffix(".raw").write_bytes(b"\0" * 10)
    with pytest.raises(DatasetError, match=r"x\.raw: 10 bytes, but .* needs 60"):
        read_metaimage(mhd)
    mhd.write_text(mhd.read_text().replace("MET_UCHAR", "MET_FANCY"))
    with pytest.raises(DatasetError, match="ElementType='MET_FANCY'"):
        read_metaimage(mhd)


# --- parsers (property-based) -------------------------------------------------------------------------

_keys = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Nd"), whitelist_characters="_"), min_size=1)
_values = st.text(
    st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"), blacklist_characters="\x85"), max_size=20
).map(str.strip)
_space = st.text(st.sampled_from(" \t"), max_size=3)


@settings(max_examples=60, deadline=None)
@given(entries=st.dictionaries(_keys, _values, max_size=8), data=st.data())
def test_cfg_and_mhd_parsers_round_trip(entries: dict[str, str], data: st.DataObject) -> None:
    for separator, parse in ((":", parse_cfg), ("=", parse_metaimage_header)):
        lines = []
        for key, value in entries.items():
            pad = [data.draw(_space) for _ in range(4)]
            lines.append(f"{pad[0]}{key}{pad[1]}{separator}{pad[2]}{value}{pad[3]}")
            if data.draw(st.booleans()):
                lines.append(data.draw(_space))  # blank lines are allowed anywhere
        newline = data.draw(st.sampled_from(["\n", "\r\n"]))
        assert parse(newline.join(lines)) == entries


@settings(max_examples=25, deadline=None)
@given(
    shape=st.tuples(st.integers(1, 4), st.integers(1, 5), st.integers(1, 6)),
    element_type=st.sampled_from(["MET_UCHAR", "MET_SHORT", "MET_USHORT", "MET_FLOAT", "MET_DOUBLE"]),
    msb=st.booleans(),
    spacing=st.tuples(*[st.floats(0.01, 10.0)] * 3),
    seed=st.integers(0, 2**16),
)
def test_metaimage_round_trip(
    shape: tuple[int, int, int], element_type: str, msb: bool, spacing: tuple[float, ...], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    array = (rng.random(shape) * 200).astype({"MET_UCHAR": "u1", "MET_SHORT": "i2"}.get(element_type, "f8"))
    with tempfile.TemporaryDirectory() as folder:
        mhd = Path(folder) / "image.mhd"
        write_metaimage(mhd, array, spacing, element_type, msb=msb)
        back, back_spacing = read_metaimage(mhd)
    assert back.shape == shape
    np.testing.assert_array_equal(back, array.astype(back.dtype))
    assert back_spacing == pytest.approx(spacing)


# --- open_dataset -------------------------------------------------------------------------------------


def test_open_dataset_dispatches_by_format(tmp_path: Path) -> None:
    write_echonet_dynamic(tmp_path / "dyn", [EchoVideo("a")], write_videos=False)
    write_echonet_pediatric(tmp_path / "ped", pediatric_videos()[:1])
    write_camus_patient(tmp_path / "camus", 1, view="2CH")
    dyn = open_dataset(tmp_path / "dyn", "echonet", "TRAIN")
    ped = open_dataset(tmp_path / "ped", "pediatric", [3], fps=50.0)
    cam = open_dataset(tmp_path / "camus", "camus", "ALL", view="2CH")
    assert (type(dyn), type(ped), type(cam)) == (EchoNetDynamic, EchoNetPediatric, Camus)
    assert dyn.names == ["a"] and ped.names == ["kid_a"] and cam.names == ["patient0001_2CH"]
    assert all(isinstance(ds, ClipDataset) for ds in (dyn, ped, cam))
    with pytest.raises(DatasetError, match="format 'echonet2'"):
        open_dataset(tmp_path, "echonet2", "ALL")  # type: ignore[arg-type]


def test_lv_fixture_geometry_is_consistent() -> None:
    video = EchoVideo("g")
    ed, es = lv_ellipse(video, video.ed_frame), lv_ellipse(video, video.es_frame)
    assert ed[2] * ed[3] > es[2] * es[3]
    frames = render_echonet_frames(video)
    area = dark_area(frames)
    assert int(np.argmax(area[:60])) == video.ed_frame
    # The minimum is flat over a frame or two: pixel counts cannot split it.
    assert abs(int(np.argmin(area[:60])) - video.es_frame) <= 1
