"""The online cycle detector on simulator streams, R waves, fallbacks, gaps and a real DICOM cine."""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json

import cv2
import numpy as np
import pytest

from edge_agent.core.clip import estimate_period, make_clip
from edge_agent.core.metrics import pearson
from edge_agent.live.cycles import (
    SIGNAL_GRID,
    SIGNAL_INPUT,
    SIGNAL_WEIGHTS,
    CycleConfig,
    CycleDetector,
    LVAreaNet,
    principal_projection,
    signal_layers,
    swing_snr,
)
from edge_agent.ml.cycles_eval import (
    coverage_targets,
    detector_accuracy,
    net_weights,
    score_beats,
    signal_net_torch,
    stream_case,
    write_signal_weights,
)
from edge_agent.sim.phantom import EchoPhantom
from edge_agent.sim.simulator import draw_case

FPS = 50.0


def _phantom(seed: int, quality: str = "good", fps: float = FPS, hr: float | None = None) -> EchoPhantom:
    rng = np.random.default_rng(seed)
    case = dataclasses.replace(draw_case(rng, quality=quality, fps=fps, hr_bpm=hr), hrv=0.1)
    return EchoPhantom(case, rng, duration_s=40.0)


# Issues 3 and 13: ≥ 95 % of beats within 2 frames at every quality level, HRV ±10 %, at 50 and 30 fps,
# on both simulator generations. The known gap: generation-1 dilated low-EF hearts (EF ≤ 30 %) at
# 50 fps, where the signal net's area lags the contour by 1-3 frames at the start of ejection, so
# the hysteresis path's ED (the knee of the fall) comes late (README "Cycle detector"); here one
# patient of the good pair (EF 14 %) and of the poor pair, in streams too short for the early match.
# (The poor pair's passed with principal_gain 1 — the component at any SNR ≥ 8 — and fails at the
# shipped 1.5.) Strict: the day one passes, its marker must go.
GEN1_LOW_EF_50 = pytest.mark.xfail(strict=True, reason="known gap: generation-1 low-EF hearts at 50 fps")


@pytest.mark.parametrize("generation", [1, 2])
@pytest.mark.parametrize("fps", [50.0, 30.0])
@pytest.mark.parametrize("quality", ["good", "medium", "poor"])
def test_ed_boundaries_within_two_frames(quality, fps, generation, request):
    """Both EDs of a beat within 2 frames of the simulator's; misses and extras count as failures."""
    if (generation, fps) == (1, 50.0) and quality in ("good", "poor"):
        request.applymarker(GEN1_LOW_EF_50)
    r = detector_accuracy(
        n_cases=2, seconds=12.0, quality=quality, hrv=0.1, fps=fps, seed=7, generation=generation
    )
    assert r["true_beats"] >= 12
    assert r["accuracy"] >= 0.95, r


def test_windows_are_model_clips_and_consistent():
    phantom = _phantom(3)
    det = CycleDetector(CycleConfig(), FPS)
    emitted, _ = stream_case(det, phantom, 1.0, 400)
    beats = [w for _, w in emitted if w.how == "ed_ed"]
    assert len(beats) >= 3 and det.counters.beats_emitted == len(beats)
    for w in beats:
        n = w.frame_seq[1] - w.frame_seq[0] + 1
        assert w.frames.shape == (n, 112, 112) and w.frames.dtype == np.uint8
        assert 0 <= w.start < 1 and n - 2 < w.end <= n - 1  # first frame ≤ ED, last frame ≥ next ED
        assert w.t == pytest.approx((1.0 + w.frame_seq[0] / FPS, 1.0 + w.frame_seq[1] / FPS))
        assert w.hr_bpm == pytest.approx(60 * FPS / (w.end - w.start))
        assert make_clip(w.frames, w.start, w.end).shape == (32, 112, 112)
    # Consecutive beats share their ED: the stream is tiled without gaps.
    for a, b in itertools.pairwise(beats):
        assert a.frame_seq[0] + a.end == pytest.approx(b.frame_seq[0] + b.start)
    assert 35 < det.hr_bpm < 200


def test_emission_is_causal_and_prompt():
    """A beat is emitted from frames up to now, within ~0.4 s of its closing ED — most of them early,
    early_s (0.1 s) after it (the template match) — except the stream's first beat, which waits for
    the second to check its length and goes out with it."""
    phantom = _phantom(4)
    emitted, _ = stream_case(CycleDetector(CycleConfig(), FPS), phantom, 1.0, 500)
    beats = [(pushed, w) for pushed, w in emitted if w.how == "ed_ed"]
    delays = [pushed - (w.frame_seq[0] + w.end) for pushed, w in beats]
    assert len(beats) >= 8 and beats[0][0] == beats[1][0]  # the first goes out with the second
    assert all(w.frame_seq[1] <= pushed for pushed, w in beats)
    assert max(delays[1:]) < 0.4 * FPS
    # Confirmed at the first frame early_s past the (fractional) ED: early_s + 0–1 frame after it.
    assert np.median(delays) <= CycleConfig().early_s * FPS + 1


def test_a_stated_heart_rate_lets_the_first_beat_out_at_once():
    """With the source's heart rate (a DICOM Heart Rate tag) the first beat is checked against it
    and goes out without waiting for the second; a stated rate it disagrees with changes nothing."""
    phantom = _phantom(4)
    hr = phantom.case.hr_bpm

    def first_two(prior: float | None) -> list[tuple[int, tuple[int, int]]]:
        emitted, _ = stream_case(CycleDetector(CycleConfig(), FPS, hr_prior_bpm=prior), phantom, 1.0, 500)
        return [(pushed, w.frame_seq) for pushed, w in emitted if w.how == "ed_ed"][:2]

    plain, stated, wrong = first_two(None), first_two(hr), first_two(hr / 2)
    assert plain[0][0] == plain[1][0] and wrong == plain  # held for the second beat
    # The same beats (the second ED may now come from the template match: within a frame) ...
    assert np.abs(np.array([b[1] for b in stated]) - [b[1] for b in plain]).max() <= 1
    assert stated[0][0] < stated[1][0] and stated[0][0] < plain[0][0] - 0.3 * FPS  # ... the first sooner
    assert CycleDetector(CycleConfig(hr_max_bpm=100), FPS, hr_prior_bpm=150).hr_prior_bpm is None


def test_r_waves_give_exact_boundaries_and_take_precedence():
    phantom = _phantom(5)
    n = 400
    ed = np.round((np.array([b.t_ed for b in phantom.beats]) - 1.0) * FPS).astype(int)
    frames, _ = phantom.render(1.0 + np.arange(n) / FPS)
    det = CycleDetector(CycleConfig(), FPS)
    out = [w for i in range(n) for w in det.push(i, 1.0 + i / FPS, frames[i], r_wave=bool(np.isin(i, ed)))]
    assert {w.how for w in out} == {"r_wave"}
    got = [(w.frame_seq[0] + w.start, w.frame_seq[0] + w.end) for w in out]
    inside = ed[(ed >= 0) & (ed < n)]
    assert got == list(zip(inside[:-1].tolist(), inside[1:].tolist(), strict=True))
    # use_r_wave=False ignores the markers: the image signal finds the same beats within 2 frames.
    det = CycleDetector(CycleConfig(use_r_wave=False), FPS)
    out = [w for i in range(n) for w in det.push(i, 1.0 + i / FPS, frames[i], r_wave=bool(np.isin(i, ed)))]
    score = score_beats(out, (np.array([b.t_ed for b in phantom.beats]) - 1.0) * FPS, n, FPS, warmup_s=3.0)
    assert {w.how for w in out} == {"ed_ed"} and score["correct"] == score["true"] > 0


@pytest.mark.parametrize("kind", ["static", "noise", "black"])
def test_no_periodicity_falls_back_to_fixed_windows(kind):
    cfg = CycleConfig()
    rng = np.random.default_rng(0)
    still = _phantom(6).render(np.array([2.0]))[0][0]
    det = CycleDetector(cfg, FPS)
    n = round(8 * FPS)
    out = []
    for i in range(n):
        px = {"static": still, "noise": rng.integers(0, 256, (112, 112), dtype=np.uint8)}.get(
            kind, np.zeros((112, 112), np.uint8)
        )
        out += [(i, w) for w in det.push(i, i / FPS, px)]
    assert out and all(w.how == "fixed" and w.hr_bpm is None for _, w in out)
    first = out[0][0]
    assert first == round(cfg.fallback_after_s * FPS)
    length = round(cfg.fallback_s * FPS)
    assert [i for i, _ in out] == list(range(first, n, length))  # back to back, every fallback_s
    for i, w in out:
        assert w.frames.shape[0] == length + 1 and (w.start, w.end) == (0.0, float(length))
        assert w.frame_seq == (i - length, i)
    assert det.counters.fallback_windows == len(out) and det.counters.beats_emitted == 0
    assert det.hr_bpm is None


def test_implausible_heart_rates_are_rejected():
    """A heart at 150 bpm with hr_max 100: every ED closing a too-short beat is rejected and counted."""
    phantom = _phantom(8, hr=150.0)
    det = CycleDetector(CycleConfig(hr_max_bpm=100.0), FPS)
    emitted, _ = stream_case(det, phantom, 1.0, 400)
    assert all(w.hr_bpm <= 100.0 for _, w in emitted if w.how == "ed_ed")
    assert det.counters.rejected_candidates >= 5


def test_frame_gap_resets_history():
    phantom = _phantom(9)
    frames, _ = phantom.render(1.0 + np.arange(500) / FPS)
    det = CycleDetector(CycleConfig(), FPS)
    out = []
    for i, fr in enumerate(frames):
        if 200 <= i < 210:  # ten frames lost
            continue
        out += det.push(i, 1.0 + i / FPS, fr)
    assert det.counters.resets == 1 and det.counters.frames_seen == 490
    beats = [w for w in out if w.how == "ed_ed"]
    assert beats and not any(w.frame_seq[0] < 210 <= w.frame_seq[1] for w in beats)  # none spans the gap
    assert any(w.frame_seq[0] >= 210 for w in beats)  # it locks again after the gap
    det.reset()
    assert det.counters.resets == 2 and det.hr_bpm is None


def test_a_frozen_then_saturated_feed_never_yields_a_beat_cut_across_the_ring():
    """A feed frozen for 6 s holds the signal flat, longer than the ring: an ED that ends it would
    close a beat whose first frames left the ring. No beat spans the freeze (such an ED is rejected,
    or forgotten with the swing), none is cut from overwritten slots, and beats come back after."""
    frames, _ = _phantom(5).render(np.arange(400) / FPS)
    feed = [*frames[:200], *[frames[199]] * 300, *frames[200:], *[np.full_like(frames[0], 255)] * 20]
    det = CycleDetector(CycleConfig(), FPS)
    with np.errstate(over="raise"):  # the saturated frames once overflowed the net's exp
        beats = [b for i, fr in enumerate(feed) for b in det.push(i, i / FPS, fr)]
    ed_ed = [b for b in beats if b.how == "ed_ed"]
    assert any(b.frame_seq[0] > 500 for b in ed_ed) and any(b.frame_seq[1] < 200 for b in ed_ed)
    for b in beats:
        first, last = b.frame_seq
        assert first < last and b.frames.shape[0] == last - first + 1
    assert not [b for b in ed_ed if b.frame_seq[0] < 500 and b.frame_seq[1] > 200]


def test_a_generation_2_stream_whose_swing_drops_out_after_an_early_ed_runs_on():
    """Regression: on this generation-2 poor-image patient (seed 2024, the second case) the swing
    drops below the noise right after an early-confirmed ED; the detector forgot the last ED but not
    the early one, and the next hysteresis ED raised a TypeError."""
    r = detector_accuracy(n_cases=2, seconds=25.0, quality="poor", fps=FPS, seed=2024, generation=2)
    # The shipped (generation-1) signal net finds the first patient's beats; the second's it mostly
    # misses (README: the generation-2 rows) — the point here is that the stream runs on.
    assert r["true_beats"] >= 40 and r["correct"] >= 15, r


def _smoothing_kernel(fps: float = FPS, smooth_s: float = 0.045) -> np.ndarray:
    """The detector's Gaussian smoothing (σ smooth_s, ±2.5 σ), normalised."""
    sigma = smooth_s * fps
    k = np.arange(-int(np.ceil(2.5 * sigma)), int(np.ceil(2.5 * sigma)) + 1)
    g = np.exp(-0.5 * (k / sigma) ** 2)
    return g / g.sum()


def test_swing_snr_is_the_smoothed_swing_over_the_residual_noise():
    kernel = _smoothing_kernel()
    rng = np.random.default_rng(0)
    t = np.arange(2000) / FPS
    noise = rng.normal(0.0, 0.02, t.size)
    # White noise σ leaves σ·√(1 − 2 k₀ + Σk²) after its smoothed self is taken away; a 1.2 Hz sine of
    # amplitude A keeps g = exp(−(2π·1.2·0.045)²/2) of itself through the 45 ms Gaussian, and leaves
    # A·(1 − g) sin in the residual.
    noise_resid = 0.02 * np.sqrt(1 - 2 * kernel[len(kernel) // 2] + np.sum(kernel**2))
    g = np.exp(-0.5 * (2 * np.pi * 1.2 * 0.045) ** 2)
    for amplitude in (0.5, 1.0, 2.0):
        snr = swing_snr(amplitude * np.sin(2 * np.pi * 1.2 * t) + noise, kernel)
        resid = np.sqrt(noise_resid**2 + (amplitude * (1 - g)) ** 2 / 2)
        assert snr == pytest.approx(2 * amplitude * g / resid, rel=0.06)
    assert swing_snr(np.full(500, 3.0), kernel) == 0.0  # no residual: no swing to speak of
    assert swing_snr(np.arange(len(kernel), dtype=float), kernel) == 0.0  # too short to smooth


def test_principal_projection_finds_the_cells_that_move_together():
    """30 boundary cells swing with the cycle; every cell of the 28×28 map has its own noise, which
    the area (their sum) adds up and the principal component mostly leaves out."""
    rng = np.random.default_rng(1)
    t = np.arange(125) / FPS
    cycle = np.sin(2 * np.pi * 1.3 * t)
    maps = rng.normal(0.0, 0.15, (t.size, SIGNAL_GRID * SIGNAL_GRID)).astype(np.float32)
    maps[:, :200] += 1.0  # the cavity, full
    maps[:, 300:330] += 0.5 + 0.3 * cycle[:, None]  # its moving border
    kernel = _smoothing_kernel()
    v, snr = principal_projection(maps, kernel)
    p = maps @ v
    assert v.shape == (SIGNAL_GRID * SIGNAL_GRID,) and np.linalg.norm(v) == pytest.approx(1.0, abs=1e-4)
    assert pearson(p, cycle) > 0.95 and pearson(p, maps.sum(axis=1)) > 0  # rises with the area
    assert snr > 3 * swing_snr(maps.sum(axis=1), kernel)
    # The same border filling in antiphase: the area now falls with the cycle, and so does the component.
    flipped = np.concatenate([maps[:, :300], 2.0 - maps[:, 300:]], axis=1)
    v2, _ = principal_projection(flipped, kernel)
    assert pearson(flipped @ v2, cycle) < -0.95 and pearson(flipped @ v2, flipped.sum(axis=1)) > 0
    # A frozen feed: identical maps have no component, only rounding noise, which must not pass for one.
    assert principal_projection(np.repeat(maps[:1], t.size, axis=0), kernel)[1] == 0.0


def test_a_weak_area_swing_is_timed_on_the_principal_component():
    """Seed 1357's generation-2 50-fps poor-image patient #13 (EF 31 %, a deep view where the net's
    area takes in an atrium that fills as the LV empties): the area's swing is below min_snr, so with
    the area alone every window is a fixed one; its coverage maps' first principal component times
    every beat within 2 frames (README "Cycle detector")."""
    kw = dict(n_cases=20, patients=[13], seconds=25.0, quality="poor", fps=FPS, seed=1357, generation=2)
    area_only = detector_accuracy(cfg=CycleConfig(principal_below_snr=0.0), **kw)
    principal = detector_accuracy(**kw)
    assert area_only["true_beats"] >= 25 and area_only["correct"] == 0, area_only
    assert principal["accuracy"] >= 0.95, principal


def test_a_strong_area_swing_stays_the_signal():
    phantom = _phantom(3)
    det = CycleDetector(CycleConfig(), FPS)
    emitted, _ = stream_case(det, phantom, 1.0, 600)
    assert det.signal_source == "area" and det.counters.principal_switches == 0
    assert len([w for _, w in emitted if w.how == "ed_ed"]) >= 8
    assert 20 < det.area < SIGNAL_GRID * SIGNAL_GRID


def test_principal_signal_settings_are_checked():
    bads = [{"principal_below_snr": -1.0}, {"principal_min_snr": 0.0}, {"principal_gain": 0.9}]
    for bad in [*bads, {"principal_every_s": 0.0}]:
        with pytest.raises(ValueError, match="principal"):
            CycleConfig(**bad)


def test_bounded_memory():
    """(The cost per push is measured by detector_accuracy and reported, not asserted: timings on a
    shared machine are noise.)"""
    phantom = _phantom(10)
    frames, _ = phantom.render(1.0 + np.arange(300) / FPS)
    det = CycleDetector(CycleConfig(), FPS)
    for i in range(3000):  # 60 s of stream: memory must not grow
        det.push(i, i / FPS, frames[i % 300])
    assert det._frames.nbytes < 5 * 2**20  # the ring: ≈ 3.2 s of 112×112 frames
    assert det._maps.nbytes < 2**20  # and their coverage maps (784 float32 each)


def test_signal_net_training_writes_weights_the_detector_loads(tmp_path):
    """write_signal_weights end to end, tiny: rendered patients (each earlier frame drawn as the
    detector picks it), torch training, the .npz with its lags and a sidecar that describes it."""
    pytest.importorskip("torch")
    path = tmp_path / "net.npz"
    tiny = {"n_cases": 4, "frames_per_case": 4, "steps": 3, "workers": 1, "width": 4}
    with pytest.raises(ValueError, match=r"frames_per_batch_case \(8\) must be 1 … frames_per_case \(4\)"):
        write_signal_weights(path, **tiny)
    sidecar = write_signal_weights(path, frames_per_batch_case=2, lags_s=(0.04,), **tiny)
    net = LVAreaNet.load(path)
    assert net.lags_s == (0.04,) and net.lag_frames(FPS) == (2,)
    assert sidecar == json.loads(path.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert sidecar["layers"][0] == [8, 4, 3, 1] and sidecar["params"]["lags_s"] == [0.04]
    assert sidecar["metrics"]["heldout_cases"] == 3
    frames, _ = _phantom(13).render(np.array([1.0, 1.04]))
    assert net.coverage(frames[1], (frames[0],)).shape == (SIGNAL_GRID, SIGNAL_GRID)


def test_shipped_signal_weights_match_their_sidecar():
    weights = SIGNAL_WEIGHTS
    sidecar = json.loads(weights.with_suffix(".json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()
    assert sidecar["weights"] == weights.name
    with np.load(weights) as z:
        lags = z["lags_s"].tolist() if "lags_s" in z else []
        assert sidecar["layers"] == [list(layer) for layer in signal_layers(z["w0"].shape[0], 1 + len(lags))]
    assert sidecar["params"]["lags_s"] == lags
    assert sidecar["metrics"]["within_case_corr_median"] > 0.99
    assert sidecar["metrics"]["within_case_corr_p10"] > 0.97


def test_detector_shows_the_net_the_frames_its_lags_name(tmp_path):
    """A net that sees earlier frames gets, at each push, the frames round(lag × fps) back (at least
    one), and the stream's first frame while the stream is younger than that."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = signal_net_torch(8, 3)
    arrays = {f"{n}{i}": a for i, wb in enumerate(net_weights(net)) for n, a in zip("wb", wb, strict=True)}
    np.savez(tmp_path / "seeing.npz", lags_s=np.array([0.04, 0.07]), **arrays)
    numpy_net = LVAreaNet.load(tmp_path / "seeing.npz")
    assert numpy_net.lag_frames(FPS) == (2, 4) and numpy_net.lag_frames(10.0) == (1, 1)
    frames, _ = _phantom(12).render(1.0 + np.arange(8) / FPS)
    det = CycleDetector(CycleConfig(weights=str(tmp_path / "seeing.npz")), FPS)
    for i, f in enumerate(frames):
        det.push(i, i / FPS, f)
        want = numpy_net.coverage(f, (frames[max(i - 2, 0)], frames[max(i - 4, 0)])).sum()
        assert det.area == pytest.approx(want, rel=1e-6)


def test_numpy_signal_net_equals_torch():
    """The detector's numpy forward pass computes what the torch net it was trained as does."""
    torch = pytest.importorskip("torch")

    shipped = np.load(SIGNAL_WEIGHTS)
    net = signal_net_torch()
    convs = [m for m in net if isinstance(m, torch.nn.Conv2d)]
    with torch.no_grad():
        for i, conv in enumerate(convs):
            conv.weight.copy_(torch.from_numpy(shipped[f"w{i}"]))
            conv.bias.copy_(torch.from_numpy(shipped[f"b{i}"]))
    frames, contours = _phantom(11, "medium").render(np.linspace(2.0, 3.0, 6))
    small = np.stack(
        [cv2.resize(f, (SIGNAL_INPUT, SIGNAL_INPUT), interpolation=cv2.INTER_AREA) for f in frames]
    )
    with torch.no_grad():
        want = torch.sigmoid(net(torch.from_numpy(small[:, None]).float() / 255.0))[:, 0].numpy()
    got = np.stack([LVAreaNet(net_weights(net)).coverage(f) for f in frames])
    assert got.shape == (6, 28, 28)
    np.testing.assert_allclose(got, want, atol=2e-5)
    # Any width: the numpy net reads it from the weights' shapes.
    wide = signal_net_torch(24)
    with torch.no_grad():
        wide_want = torch.sigmoid(wide(torch.from_numpy(small[:, None]).float() / 255.0))[:, 0].numpy()
    wide_got = np.stack([LVAreaNet(net_weights(wide)).coverage(f) for f in frames])
    np.testing.assert_allclose(wide_got, wide_want, atol=2e-5)
    # Any number of earlier frames: channels frame by frame, the frame now first, as torch unshuffles.
    seeing = signal_net_torch(16, 3)
    stacks = np.stack([small[2:], small[1:-1], small[:-2]], axis=1)  # now, 1 and 2 frames before
    with torch.no_grad():
        seeing_want = torch.sigmoid(seeing(torch.from_numpy(stacks).float() / 255.0))[:, 0].numpy()
    net3 = LVAreaNet(net_weights(seeing), (0.02, 0.04))
    seeing_got = np.stack([net3.coverage(frames[i], (frames[i - 1], frames[i - 2])) for i in range(2, 6)])
    np.testing.assert_allclose(seeing_got, seeing_want, atol=2e-5)
    with pytest.raises(ValueError, match="2 earlier frames, got 1"):
        net3.coverage(frames[2], (frames[1],))
    # And it segments: the predicted area follows the contour's, within a few % of the LV.
    true = coverage_targets(contours).sum(axis=(1, 2))
    assert np.abs(got.sum(axis=(1, 2)) / true - 1).max() < 0.15


def test_real_dicom_cine_gives_plausible_heart_rate():
    pydicom = pytest.importorskip("pydicom")
    from pydicom.data import get_testdata_file

    from edge_agent.live.preprocess import Preprocessor

    ds = pydicom.dcmread(get_testdata_file("color3d_jpeg_baseline.dcm"))
    fps = 1000.0 / float(ds.FrameTime)
    pre, frames = Preprocessor("auto", 112), []
    for px in ds.pixel_array:
        f = pre.push(px)
        if f is not None:
            frames += [*pre.drain(), f]
    frames = np.stack(frames)
    assert frames.shape == (120, 112, 112)
    period = estimate_period(frames, fps)
    assert period is not None and 40 < 60 * fps / period < 150
    det = CycleDetector(CycleConfig(), fps)
    out = [w for i, f in enumerate(frames) for w in det.push(i, i / fps, f)]
    beats = [w for w in out if w.how == "ed_ed"]
    assert beats and all(40 < w.hr_bpm < 150 for w in beats)
    assert abs(beats[0].hr_bpm - 60 * fps / period) < 10  # agrees with the whole-clip periodicity


def test_cycles_table_cli_scores_every_cell_names_its_worst_patients_and_fails_a_bad_detector(
    tmp_path, capsys
) -> None:
    """`edge-agent cycles-table` in two processes: one row per cell, its patients named so they
    replay (``--only K`` scores patient #K of each cell alone, as the full run did); a detector that
    can find no beat (an impossible SNR floor) fails every cell: exit 1."""
    from edge_agent.cli import main

    cell = ["--patients", "2", "--seconds", "8", "--generation", "2", "--fps", "30"]
    cell += ["--quality", "good", "poor"]
    good = main(["cycles-table", *cell, "--seed", "5", "--out", str(tmp_path / "ok")])
    cells = json.loads((tmp_path / "ok" / "cycles_table.json").read_text())
    assert [(c["generation"], c["fps"], c["quality"]) for c in cells] == [(2, 30, "good"), (2, 30, "poor")]
    assert all(c["true_beats"] >= 6 and c["per_case"][1].startswith("#1 EF ") for c in cells)
    assert good == (0 if all(c["accuracy"] >= 0.95 for c in cells) else 1)
    table = (tmp_path / "ok" / "cycles_table.md").read_text()
    assert table.count("\n| 2 | 30 | ") == 2 and "of 2 cells at ≥ 95 %" in table
    main(["cycles-table", *cell, "--seed", "5", "--only", "1", "--out", str(tmp_path / "k")])
    replayed = json.loads((tmp_path / "k" / "cycles_table.json").read_text())
    assert [c["per_case"] for c in replayed] == [c["per_case"][1:] for c in cells]
    assert main(["cycles-table", *cell, "--only", "2", "--out", str(tmp_path / "no")]) == 2  # #0–#1 only
    blind = main(["cycles-table", *cell, "--out", str(tmp_path / "blind"), "--set", "cycles.min_snr=1000"])
    assert blind == 1
    out = capsys.readouterr().out
    assert out.count("0.0 % **below**") == 2 and "0 of 2 cells" in out
