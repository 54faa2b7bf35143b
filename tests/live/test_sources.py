"""Frame sources on real media: simulator feeds, AVI/MP4 written with OpenCV, DICOM cines written
with pydicom and the pydicom-data ultrasound cine, and the device URIs that need no hardware."""

from __future__ import annotations

import math
import re
from pathlib import Path
from urllib.parse import urlencode

import cv2
import numpy as np
import pytest
from fixtures import dicom_cine
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file

from edge_agent.core.demographics import DEMOGRAPHIC_FIELDS
from edge_agent.live.preprocess import to_gray
from edge_agent.live.sources import SourceError, SourceFrame, open_source, synthetic
from edge_agent.live.sources.device import DeviceSource, has_gstreamer, parse_device_uri
from edge_agent.live.sources.dicom import DicomSource, parse_patient_age
from edge_agent.live.sources.synthetic import SyntheticParams, SyntheticSource, parse_synthetic_uri
from edge_agent.live.sources.video import VideoSource
from edge_agent.sim.phantom import QUALITIES

CINE = get_testdata_file("color3d_jpeg_baseline.dcm")


def _read(uri: str, n: int, **kwargs) -> list[SourceFrame]:
    with open_source(uri, **kwargs) as src:
        return [src.read() for _ in range(n)]


# --------------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_per_seed_and_in_model_format() -> None:
    uri = "synthetic://?ef=35&hr=72&quality=poor&fps=25&seed=3"
    a, b = _read(uri, 12), _read(uri, 12)
    other = _read(uri.replace("seed=3", "seed=4"), 12)
    for fa, fb in zip(a, b, strict=True):
        assert np.array_equal(fa.pixels, fb.pixels) and fa.truth == fb.truth and fa.t == fb.t
    assert not np.array_equal(a[5].pixels, other[5].pixels)
    for k, f in enumerate(a):
        assert f.pixels.shape == (112, 112) and f.pixels.dtype == np.uint8
        assert set(f.truth) == {"ef", "beat", "ed", "patient"}
        assert f.t == pytest.approx(k / 25) and f.r_wave is False  # no ECG: truth ED must not leak


def test_synthetic_ed_flags_one_per_beat_at_the_heart_rate_and_ef_near_requested() -> None:
    fps, hr = 25.0, 72.0
    frames = _read(f"synthetic://?ef=35&hr={hr:g}&fps={fps:g}&seed=1&hrv=0.03", 110)
    ed = [k for k, f in enumerate(frames) if f.truth["ed"] == 1.0]
    beats = np.array([f.truth["beat"] for f in frames])
    assert ed[0] == 0 and len(ed) >= 4
    # A new beat starts exactly on each ED frame, and only there.
    assert [k for k in range(1, len(frames)) if beats[k] != beats[k - 1]] == ed[1:]
    assert np.all(np.diff(beats) >= 0) and beats[-1] == len(ed) - 1
    spacing = np.diff(ed) / (fps * 60 / hr)  # in expected RR periods: hrv 3 % plus ±1 frame rounding
    assert np.all(np.abs(spacing - 1) < 0.15)
    # Simpson EF per beat ≈ requested: beat jitter (≤ 2 % abs) plus the disc method's ~1 % bias.
    efs = np.array([frames[k].truth["ef"] for k in ed])
    assert np.all(np.abs(efs - 35) < 6) and abs(efs.mean() - 35) < 3
    assert all(f.truth["ef"] == frames[ed[int(f.truth["beat"])]].truth["ef"] for f in frames)


def test_synthetic_gen_2_renders_the_second_generation_and_gen_1_is_the_default() -> None:
    assert parse_synthetic_uri("synthetic://?seed=2").generation == 1
    assert parse_synthetic_uri("synthetic://?gen=2").generation == 2
    with pytest.raises(SourceError, match="gen='3' must be 1 or 2"):
        parse_synthetic_uri("synthetic://?gen=3")
    gen1 = _read("synthetic://?ef=35&fps=25&seed=3", 30)
    gen2 = _read("synthetic://?ef=35&fps=25&seed=3&gen=2", 30)
    assert gen2[0].pixels.shape == (112, 112) and gen2[0].pixels.dtype == np.uint8
    assert not np.array_equal(gen1[0].pixels, gen2[0].pixels)
    # Truth is Simpson EF of generation 2's rendered contour: the requested EF within the beat jitter.
    efs = np.array([f.truth["ef"] for f in gen2 if f.truth["ed"] == 1.0])
    assert efs.size >= 1 and np.all(np.abs(efs - 35) < 6)


def test_synthetic_ecg_marks_r_waves_on_the_ed_frames_only_when_asked() -> None:
    uri = "synthetic://?hr=90&fps=50&seed=4"
    with_ecg, without = _read(uri + "&ecg=1", 120), _read(uri, 120)
    assert [f.r_wave for f in with_ecg] == [f.truth["ed"] == 1.0 for f in with_ecg]
    assert sum(f.r_wave for f in with_ecg) >= 3 and not any(f.r_wave for f in without)
    assert all(np.array_equal(a.pixels, b.pixels) for a, b in zip(with_ecg, without, strict=True))


def test_synthetic_loop_replays_whole_beats_with_truth_and_counting_beats() -> None:
    uri = "synthetic://?hr=80&fps=25&seed=6&ecg=1&loop_s=2"
    live, looped = _read(uri.replace("&loop_s=2", ""), 200), _read(uri, 200)
    n = next(k for k in range(50, 200) if live[k].truth["ed"] == 1.0)  # first ED at or after 2 s
    assert live[0].truth["ed"] == 1.0 and n >= 50
    beats = int(live[n].truth["beat"])
    for k, f in enumerate(looped):  # lap j replays frames 0..n-1, its beats numbered j·beats on
        lap, i = divmod(k, n)
        assert np.array_equal(f.pixels, live[i].pixels) and f.t == pytest.approx(k / 25)
        assert f.r_wave == live[i].r_wave and f.truth["ef"] == live[i].truth["ef"]
        assert f.truth["beat"] == live[i].truth["beat"] + lap * beats


def test_synthetic_patient_change_draws_a_new_patient_and_keeps_counting_beats() -> None:
    with open_source("synthetic://?fps=20&seed=5&patient_s=2", demographics={"weight_kg": 80.0}) as src:
        first = [src.read() for _ in range(40)]
        demo_first = dict(src.demographics)
        second = [src.read() for _ in range(10)]
        demo_second = dict(src.demographics)
    assert {f.truth["patient"] for f in first} == {0.0}
    assert {f.truth["patient"] for f in second} == {1.0}
    assert second[0].truth["ed"] == 1.0 and second[0].truth["beat"] == first[-1].truth["beat"] + 1
    assert second[0].t == pytest.approx(2.0)  # t keeps running across patients
    assert set(demo_first) == set(DEMOGRAPHIC_FIELDS) and demo_first != demo_second
    assert demo_first["weight_kg"] == demo_second["weight_kg"] == 80.0  # the config wins per field


def test_synthetic_same_patient_continues_on_a_fresh_phantom(monkeypatch: pytest.MonkeyPatch) -> None:
    # Phantoms are renewed every SEGMENT_S (an hour); shorten it to see the hand-over.
    monkeypatch.setattr(synthetic, "SEGMENT_S", 1.5)
    with open_source("synthetic://?fps=20&seed=6&hr=80") as src:
        frames = [src.read() for _ in range(40)]
        demo = dict(src.demographics)
    assert {f.truth["patient"] for f in frames} == {0.0}
    assert frames[30].truth["ed"] == 1.0 and frames[30].truth["beat"] == frames[29].truth["beat"] + 1
    assert abs(frames[30].truth["ef"] - frames[0].truth["ef"]) < 6  # the same case: EF within beat jitter
    assert demo == src.demographics


def test_synthetic_fps_argument_overrides_the_uri() -> None:
    src = open_source("synthetic://?fps=50", fps=30.0)
    assert isinstance(src, SyntheticSource) and src.fps == 30.0 and src.live is False


_ef = st.one_of(st.none(), st.floats(5, 90))
_hr = st.one_of(st.none(), st.floats(40, 170))


@settings(max_examples=200, deadline=None)
@given(
    ef=_ef,
    hr=_hr,
    quality=st.sampled_from([None, *QUALITIES]),
    fps=st.floats(1, 1000),
    seed=st.integers(0, 2**63),
    hrv=st.one_of(st.none(), st.floats(0, 0.3)),
    pediatric=st.booleans(),
    patient_s=st.one_of(st.just(0.0), st.floats(1, 1e6)),
    ecg=st.booleans(),
    loop_s=st.one_of(st.just(0.0), st.floats(1, 1e6)),
)
def test_synthetic_uri_round_trips(
    ef, hr, quality, fps, seed, hrv, pediatric, patient_s, ecg, loop_s
) -> None:
    assume(patient_s == 0 or loop_s == 0)  # exclusive (tested below)
    query = {
        "ef": "random" if ef is None else repr(ef),
        "hr": "random" if hr is None else repr(hr),
        "quality": quality or "random",
        "fps": repr(fps),
        "seed": str(seed),
        "pediatric": str(int(pediatric)),
        "patient_s": repr(patient_s),
        "ecg": str(int(ecg)),
        "loop_s": repr(loop_s),
    }
    if hrv is not None:
        query["hrv"] = repr(hrv)
    uri = "synthetic://?" + urlencode(query)
    assert parse_synthetic_uri(uri) == SyntheticParams(
        ef, hr, quality, fps, seed, hrv, pediatric, patient_s, ecg, loop_s
    )


@given(
    key=st.sampled_from(["ef", "hr", "fps", "seed", "hrv", "pediatric", "patient_s", "quality", "ecg"]),
    value=st.sampled_from(["-1", "nan", "inf", "abc", "", "1e9", "0.5", "2", "excellent"]),
)
def test_synthetic_uri_rejects_bad_values_by_name(key: str, value: str) -> None:
    ok = {("fps", "2"), ("fps", "0.5"), ("seed", "2"), ("patient_s", "2"), ("patient_s", "1e9")}
    uri = f"synthetic://?{key}={value}"
    if (key, value) in ok:
        parse_synthetic_uri(uri)
        return
    with pytest.raises(SourceError, match=key):
        parse_synthetic_uri(uri)


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("synthetic://?ef=35&colour=red", "valid are"),
        ("synthetic://?ef=35&ef=40", "more than once"),
        ("synthetic://host?ef=35", "only query parameters"),
        ("synthetic://?quality=great", "good"),
        ("synthetic://?loop_s=5&patient_s=10", "exclude each other"),
    ],
)
def test_synthetic_uri_errors(uri: str, message: str) -> None:
    with pytest.raises(SourceError, match=message):
        parse_synthetic_uri(uri)


# --------------------------------------------------------------------------------- video files


def _write_video(path: Path, fourcc: str, n: int = 10, fps: float = 25.0) -> None:
    """Frames k = 0..n-1 of uniform grey 20 + 20 k with a moving bar: the level identifies the frame."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), fps, (64, 48))
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    for k in range(n):
        frame = np.full((48, 64, 3), 20 + 20 * k, np.uint8)
        frame[:, 4 * k : 4 * k + 4] = 255
        writer.write(frame)
    writer.release()


@pytest.mark.parametrize(("name", "fourcc"), [("clip.avi", "MJPG"), ("clip.mp4", "mp4v")])
def test_video_reads_every_frame_with_header_fps_then_ends(tmp_path: Path, name: str, fourcc: str) -> None:
    path = tmp_path / name
    _write_video(path, fourcc)
    with open_source(str(path)) as src:
        assert isinstance(src, VideoSource) and src.fps == pytest.approx(25.0) and src.live is False
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 10
    for k, f in enumerate(frames):
        assert f.pixels.shape == (48, 64) and f.pixels.dtype == np.uint8  # grayscale
        assert f.t == pytest.approx(k / 25.0)
        assert abs(float(np.median(f.pixels)) - (20 + 20 * k)) < 6  # lossy codecs: a few levels
        assert f.r_wave is False and f.truth == {}


def test_video_loop_restarts_with_time_increasing_and_fps_override(tmp_path: Path) -> None:
    path = tmp_path / "clip.avi"
    _write_video(path, "MJPG", n=6)
    frames = _read(f"file://{path}", 15, loop=True, fps=50.0)
    assert all(f is not None for f in frames)
    assert [f.t for f in frames] == pytest.approx([k / 50.0 for k in range(15)])
    assert np.array_equal(frames[0].pixels, frames[6].pixels) and np.array_equal(
        frames[2].pixels, frames[14].pixels
    )
    assert [k for k, f in enumerate(frames) if f.seam] == [6, 12]  # each restart is a seam


def test_video_errors_name_the_file_and_fix(tmp_path: Path) -> None:
    with pytest.raises(SourceError, match="not found"):
        open_source(str(tmp_path / "missing.avi")).open()
    junk = tmp_path / "junk.avi"
    junk.write_bytes(b"this is not a video" * 100)
    with pytest.raises(SourceError, match=r"junk\.avi.*ffmpeg"):
        open_source(str(junk)).open()


# --------------------------------------------------------------------------------- DICOM


def test_dicom_pydicom_data_cine() -> None:
    with open_source(CINE) as src:
        assert isinstance(src, DicomSource) and src.fps == pytest.approx(30.0, abs=1e-3)
        assert src.demographics == {}  # sex '' and no age/weight/size: all absent
        frames = []
        while (f := src.read()) is not None:
            frames.append(f)
    assert len(frames) == 120
    f0 = frames[0].pixels
    assert f0.shape == (480, 640, 3) and f0.dtype == np.uint8 and to_gray(f0).shape == (480, 640)
    # YBR_FULL_422 came out as RGB: a grey-scale echo has R ≈ G ≈ B (in YBR, Cb/Cr sit near 128).
    assert np.abs(f0[..., 0].astype(int) - f0[..., 1]).mean() < 2
    assert frames[119].t == pytest.approx(119 * 0.033333)
    assert not any(f.r_wave for f in frames)  # no R Wave Pointer in the file


def test_dicom_cine_loops_with_time_increasing() -> None:
    frames = _read(f"dicom://{CINE}", 122, loop=True)
    assert [f.t for f in frames[118:]] == pytest.approx([k * 0.033333 for k in range(118, 122)])
    assert np.array_equal(frames[120].pixels, frames[0].pixels)
    assert [k for k, f in enumerate(frames) if f.seam] == [120]


def _write_dicom(path: Path, frames: np.ndarray, **tags) -> None:
    """A multi-frame MONOCHROME2 8-bit ultrasound DICOM with the given extra tags (keyword=value)."""
    dicom_cine(frames, **tags).save_as(path, enforce_file_format=True)


def _cine(n: int = 6) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 48), dtype=np.uint8)


def test_dicom_written_with_pydicom_gives_r_waves_timing_and_demographics(tmp_path: Path) -> None:
    path = tmp_path / "cine.dcm"
    frames = _cine()
    _write_dicom(
        path,
        frames,
        FrameTime=20.0,
        RWavePointer=[1, 4],
        PatientAge="045Y",
        PatientSex="F",
        PatientWeight=61.5,
        PatientSize=1.68,
    )
    with open_source(str(path), demographics={"weight_kg": 70.0}) as src:
        assert src.fps == pytest.approx(50.0)
        assert src.hr_bpm is None  # no Heart Rate tag
        assert src.demographics == {"age_years": 45.0, "sex_male": 0.0, "weight_kg": 70.0, "height_cm": 168.0}
        got = [src.read() for _ in range(6)]
        assert src.read() is None
    assert [f.r_wave for f in got] == [True, False, False, True, False, False]  # 1-based frame numbers
    assert [f.t for f in got] == pytest.approx([k * 0.020 for k in range(6)])
    for f, want in zip(got, frames, strict=True):
        assert np.array_equal(f.pixels, want)


@pytest.mark.parametrize(("value", "want"), [(72, 72.0), ("64", 64.0), (0, None), (500, None), ("", None)])
def test_dicom_heart_rate_tag_is_a_prior_when_plausible(
    tmp_path: Path, value: object, want: float | None
) -> None:
    path = tmp_path / "hr.dcm"
    _write_dicom(path, _cine(3), FrameTime=20.0, HeartRate=value)
    with open_source(str(path)) as src:
        assert src.hr_bpm == want  # 0 ("not recorded") and out-of-range values are no prior


def test_dicom_frame_time_vector_and_missing_timing(tmp_path: Path) -> None:
    vector = tmp_path / "vector.dcm"
    _write_dicom(vector, _cine(4), FrameTimeVector=[0, 20, 30, 20])
    times = [f.t for f in _read(str(vector), 4)]
    assert times == pytest.approx([0.0, 0.020, 0.050, 0.070])
    bare = tmp_path / "bare.dcm"
    _write_dicom(bare, _cine(4))
    with pytest.raises(SourceError, match=r"bare\.dcm.*Frame Time \(0018,1063\).*Cine Rate.*set fps"):
        open_source(str(bare)).open()
    assert [f.t for f in _read(str(bare), 2, fps=10.0)] == pytest.approx([0.0, 0.1])


def test_dicom_rejects_stills_bad_tags_and_non_dicom(tmp_path: Path) -> None:
    still = tmp_path / "still.dcm"
    _write_dicom(still, _cine(1)[0], FrameTime=20.0)
    with pytest.raises(SourceError, match="multi-frame cine"):
        open_source(str(still)).open()
    r_wave = tmp_path / "rwave.dcm"
    _write_dicom(r_wave, _cine(4), FrameTime=20.0, RWavePointer=[0, 2])
    with pytest.raises(SourceError, match=r"R Wave Pointer.*\[0\].*1-based"):
        open_source(str(r_wave)).open()
    cm = tmp_path / "cm.dcm"
    with pytest.warns(UserWarning, match="Invalid value for VR AS"):  # pydicom also objects to it
        _write_dicom(cm, _cine(4), FrameTime=20.0, PatientSize=170, PatientAge="4 5Y")
    with pytest.raises(SourceError, match="PatientAge"):
        open_source(str(cm)).open()
    with pytest.raises(SourceError, match="PatientSize=170 is not in metres"):
        open_source(str(cm), demographics={"age_years": 45.0}).open()
    with open_source(str(cm), demographics={"age_years": 45.0, "height_cm": 170.0}) as src:
        assert src.demographics == {"age_years": 45.0, "height_cm": 170.0}  # the config skips bad tags
    text = tmp_path / "text.dcm"
    text.write_text("not dicom")
    with pytest.raises(SourceError, match="not a DICOM file"):
        open_source(str(text)).open()


_UNITS = {"D": 1 / 365.25, "W": 7 / 365.25, "M": 1 / 12, "Y": 1.0}


@given(n=st.integers(0, 999), unit=st.sampled_from(sorted(_UNITS)), zero_pad=st.booleans(), pad=st.booleans())
def test_patient_age_parses_every_as_value(n: int, unit: str, zero_pad: bool, pad: bool) -> None:
    text = f"{n:03d}{unit}" if zero_pad else f"{n}{unit}"
    text = f" {text.lower()} " if pad else text
    want = n * _UNITS[unit]
    got = parse_patient_age(text)
    assert (got is None) if n == 0 else math.isclose(got, want)


@given(st.text(max_size=6))
def test_patient_age_rejects_anything_else(text: str) -> None:
    valid = re.fullmatch(r"\s*\d{1,3}[DWMYdwmy]\s*", text) or not text.strip()
    if valid:
        return
    with pytest.raises(ValueError, match="PatientAge"):
        parse_patient_age(text)


# --------------------------------------------------------------------------------- devices and dispatch


def test_device_uri_parsing() -> None:
    assert parse_device_uri("0") == (0, cv2.CAP_ANY)
    assert parse_device_uri("device://2") == (2, cv2.CAP_ANY)
    assert parse_device_uri("rtsp://10.0.0.5:554/live") == ("rtsp://10.0.0.5:554/live", cv2.CAP_FFMPEG)
    pipeline = "v4l2src device=/dev/video0 ! videoconvert ! appsink"
    assert parse_device_uri(f"gst://{pipeline}") == (pipeline, cv2.CAP_GSTREAMER)
    for bad, message in [
        ("device://cam", "camera index"),
        ("rtsp:///live", "needs a host"),
        ("gst://videotestsrc ! autovideosink", "appsink"),
    ]:
        with pytest.raises(SourceError, match=message):
            parse_device_uri(bad)


def test_missing_device_fails_on_open_with_the_fix() -> None:
    src = open_source("99")
    assert isinstance(src, DeviceSource) and src.live is True and src.fps == 30.0
    with pytest.raises(SourceError, match=r"99: cannot open.*v4l2-ctl"):
        src.open()


@pytest.mark.skipif(has_gstreamer(), reason="this OpenCV has GStreamer: the error does not apply")
def test_gstreamer_without_support_says_so() -> None:
    with pytest.raises(SourceError, match="without GStreamer"):
        open_source("gst://videotestsrc ! videoconvert ! appsink").open()


def test_dispatch_and_uri_errors(tmp_path: Path) -> None:
    assert isinstance(open_source("file:///data/a4c.MP4"), VideoSource)
    assert open_source("file:///data/a4c.MP4").path == Path("/data/a4c.MP4")
    assert isinstance(open_source("dicom:///data/exam/IM0001"), DicomSource)
    assert isinstance(open_source("/data/CINE.DCM"), DicomSource)
    assert isinstance(open_source("synthetic://"), SyntheticSource)
    with pytest.raises(SourceError, match=r"synthetic://.*rtsp://.*gst://"):
        open_source("http://example.org/a4c")
    with pytest.raises(SourceError, match=r"suffix '\.txt'"):
        open_source(str(tmp_path / "notes.txt"))
    with pytest.raises(SourceError, match="unknown demographic"):
        open_source("synthetic://", demographics={"bmi": 25.0})
    with pytest.raises(SourceError, match=r"read\(\) before open"):
        open_source("synthetic://").read()
