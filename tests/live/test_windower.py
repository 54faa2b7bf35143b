"""The windowing stage: beat signatures, view epochs, and the stage itself on a real ring and socket."""

from __future__ import annotations

import numpy as np
import zmq
from fixtures import write_avi

from edge_agent.core.clip import make_clip
from edge_agent.live.capture import AUX_KEYS, StreamConfig, frame_flags, ring_info
from edge_agent.live.cycles import CycleConfig
from edge_agent.live.ringbuffer import FrameRing, segment_name
from edge_agent.live.sources import open_source
from edge_agent.live.windower import ViewTracker, WindowConfig, Windower, beat_signature
from edge_agent.protocol import wire
from edge_agent.protocol.transport import TransportConfig
from edge_agent.sim.simulator import draw_case, simulate_clip


def _beats(seed: int) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    clip = simulate_clip(draw_case(rng), rng, n_beats=3.2)
    ed = clip.ed_frames
    return [make_clip(clip.frames, ed[k], ed[k + 1]) for k in range(len(ed) - 1)]


def test_view_epoch_changes_with_the_patient_not_with_the_beat() -> None:
    tracker = ViewTracker(WindowConfig().view_change_corr)
    first, second, third = _beats(1), _beats(2), _beats(3)
    assert [tracker.update(c) for c in first] == [0] * len(first)
    assert [tracker.update(c) for c in second] == [1] * len(second)
    assert [tracker.update(c) for c in third] == [2] * len(third)


def test_beat_signature_is_a_unit_vector_and_ignores_gain() -> None:
    clip = _beats(4)[0]
    sig = beat_signature(clip)
    assert sig.shape == (32 * 32,) and abs(float(np.linalg.norm(sig)) - 1.0) < 1e-5
    brighter = np.clip(clip.astype(np.int16) * 1.2 + 5, 0, 255).astype(np.uint8)
    assert float(sig @ beat_signature(brighter)) > 0.99


def test_windower_cuts_beats_from_a_ring_with_truth_and_current_demographics(tmp_path) -> None:
    """The windowing stage in-process, on a real ring and a real socket: a simulated feed whose
    patient changes every 4 s; every window must carry that patient's demographics and truth."""
    source = open_source("synthetic://?ef=40&hr=75&quality=good&seed=3&patient_s=4")
    source.open()
    endpoint = f"ipc://{tmp_path}/windows"
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(endpoint)
    source.hr_bpm = 75.0  # as a DICOM cine's Heart Rate tag would state it
    info = ring_info(source, StreamConfig(id="wtest", source=source.uri))
    ring = FrameRing.create(segment_name("wtest"), 512, (112, 112), info=info)
    stage = Windower(
        "wtest", ring.name, CycleConfig(), WindowConfig(), TransportConfig(linger_ms=0), endpoint
    )
    demographics_by_patient: dict[float, dict] = {}
    try:
        stage.start()
        assert stage.detector.hr_prior_bpm == 75.0  # the stated heart rate reached the detector
        for k in range(450):  # 9 s at 50 fps
            frame = source.read()
            assert frame is not None
            demographics_by_patient[frame.truth["patient"]] = dict(source.demographics)
            aux = [frame.truth.get(key, np.nan) for key in AUX_KEYS[:4]]
            aux += [source.demographics.get(key, np.nan) for key in AUX_KEYS[4:]]
            ring.write(frame.pixels, k, frame.t, 0, aux)
            if k % 10 == 9:
                stage.process()
        windows, statuses = [], []
        while pull.poll(200):
            parts = pull.recv_multipart()
            if parts[0].startswith(b"status."):
                statuses.append(wire.decode_status(parts))
            else:
                windows.append(wire.decode_window(parts))
    finally:
        stage.stop()
        ring.close()
        source.close()
        ctx.destroy(linger=0)
    assert len(demographics_by_patient) == 3 and len(windows) >= 6  # patients at 0, 4 and 8 s
    assert [w.seq for w in windows] == list(range(len(windows)))
    with_truth = [w for w in windows if w.truth]
    assert len(with_truth) >= len(windows) - 2  # at most one window across each change lacks it
    for w in with_truth:
        assert w.demo == demographics_by_patient[w.truth["patient"]]
        assert abs(w.truth["ef"] - 40.0) < 8.0 and w.frames.shape == (32, 112, 112)
    assert {0.0, 1.0} <= {w.truth["patient"] for w in with_truth}
    assert windows[-1].view >= 1  # the new patient started a new view epoch
    assert statuses and statuses[-1]["signal"] == "ok" and statuses[-1]["frames_dropped"] == 0


def test_a_looped_file_starts_a_new_view_at_each_seam_and_no_window_spans_one(tmp_path) -> None:
    """A 4 s file played three times: the restart is a jump in the image, not a beat. Every window
    lies within one pass, each pass gives beats again, and each pass is a view epoch of its own."""
    path = tmp_path / "loop.avi"
    with open_source("synthetic://?ef=55&hr=80&quality=good&seed=8") as sim:
        write_avi(path, np.stack([sim.read().pixels for _ in range(200)]), 50.0)
    endpoint = f"ipc://{tmp_path}/windows"
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(endpoint)
    ring = FrameRing.create(segment_name("wloop"), 512, (112, 112), info={"fps": 50.0})
    stage = Windower(
        "wloop", ring.name, CycleConfig(), WindowConfig(), TransportConfig(linger_ms=0), endpoint
    )
    seams, windows, statuses = [], [], []
    try:
        stage.start()
        with open_source(str(path), loop=True) as src:
            for k in range(600):
                frame = src.read()
                if frame.seam:
                    seams.append(k)
                ring.write(frame.pixels, k, frame.t, frame_flags(frame))
                if k % 10 == 9:
                    stage.process()
        ring.close()  # the feed ends: the windower drains the ring and reports once more
        while stage.process():
            pass
        while pull.poll(200):
            parts = pull.recv_multipart()
            if parts[0].startswith(b"status."):
                statuses.append(wire.decode_status(parts))
            else:
                windows.append(wire.decode_window(parts))
    finally:
        stage.stop()
        ring.close()
        ctx.destroy(linger=0)
    assert seams == [200, 400] and stage.seams == 2
    passes = [np.searchsorted(seams, w.frame_seq[0], side="right") for w in windows]
    for w, lap in zip(windows, passes, strict=True):
        assert not any(w.frame_seq[0] < s <= w.frame_seq[1] for s in seams), w.frame_seq
        assert w.view == lap
    # Beats are found again after each seam.
    assert {lap for w, lap in zip(windows, passes, strict=True) if w.beat == "ed_ed"} == {0, 1, 2}
    # The status says how the windows were timed: each seam reset the detector.
    final = statuses[-1]
    assert final["detector_resets"] == 2 and final["beat_source"] == windows[-1].beat.replace("ed_ed", "area")
    assert final["beats_detected"] == sum(w.beat == "ed_ed" for w in windows)
    assert final["windows_fixed"] == sum(w.beat == "fixed" for w in windows)
