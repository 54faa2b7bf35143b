"""The MCSDR network: shapes, parameter budget, bounded targets, encode-once sampling, learning."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from edge_agent.ml.train import _batch, drop_demographics, losses, sample_arrays
from edge_agent.model.ddim import DiffusionSchedule, ddim_sample
from edge_agent.model.network import MCSDR, ModelConfig, TargetTransform, noise_share
from edge_agent.sim.clips import ClipArrays

TINY = ModelConfig(width=4, d_model=16, n_heads=2, n_blocks=1)


def _inputs(b: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    video = torch.randint(0, 256, (b, 32, 112, 112), dtype=torch.uint8, generator=g)
    demo = torch.tensor([[60.0, 1.0, 80.0, 175.0]]).repeat(b, 1)
    mask = torch.ones(b, 4, dtype=torch.bool)
    return video, demo, mask


def test_default_model_fits_the_edge_budget():
    model = MCSDR(ModelConfig(), TargetTransform(), DiffusionSchedule())
    n = model.diffusion_parameters()
    assert 100_000 < n <= 1_000_000  # the budget: ≤ 1.0 M parameters in total
    total = sum(p.numel() for p in model.parameters())
    assert total - n < 150_000  # the two baseline heads stay small next to the shared encoder


def test_shapes_and_encode_once():
    torch.manual_seed(0)
    model = MCSDR(TINY, TargetTransform(), DiffusionSchedule()).eval()
    video, demo, mask = _inputs(2)
    tok = model.tokens(video, demo, mask)
    assert tok.shape == (2, 1 + 8 * 7 * 7 + 4, 16)
    noise = torch.randn(2, 40)
    with torch.no_grad():
        y = model.sample(video, demo, mask, noise)
        # The fused path (condition once, K trajectories as the batch) equals the textbook sampler
        # that calls the network once per trajectory step with the window's condition.
        kv, _ood = model.condition(video[:1], demo[:1], mask[:1])

        def eps_fn(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
            return model.eps(x.T, t[None, :], kv).T

        ref = ddim_sample(eps_fn, noise[0][:, None], model.schedule)
    assert y.shape == (2, 40)
    torch.testing.assert_close(y[0], ref[:, 0], rtol=1e-5, atol=1e-5)


def test_phase_free_model_does_not_see_where_the_beat_was_cut():
    """A cyclic shift of the window by a multiple of the encoder's temporal stride (4 frames) leaves
    the phase-free model's posterior, baseline and OOD score unchanged; the ED-aligned model's moves."""
    video, demo, mask = _inputs(2)
    shifted = torch.roll(video, 8, dims=1)
    noise = torch.randn(2, 40)
    for phase_free in (True, False):
        torch.manual_seed(0)
        cfg = ModelConfig(width=4, d_model=16, n_heads=2, n_blocks=1, phase_free=phase_free, area_token=True)
        model = MCSDR(cfg, TargetTransform(), DiffusionSchedule()).eval()
        model.ood_inv_threshold.fill_(1.0)
        model.ood_precision.copy_(torch.eye(len(model.ood_mean)))
        model.refresh_ood()
        with torch.no_grad():
            a, b = (model.sample(v, demo, mask, noise) for v in (video, shifted))
            ood_a, ood_b = (model.condition(v, demo, mask)[1] for v in (video, shifted))
            reg_a, reg_b = (model.baselines(model.tokens(v, demo, mask))[0] for v in (video, shifted))
        if phase_free:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(reg_a, reg_b, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(ood_a, ood_b, rtol=1e-4, atol=1e-4)
        else:
            assert (a - b).abs().max() > 1e-2
    assert (
        model.pos_t is not None
        and MCSDR(ModelConfig(phase_free=True), TargetTransform(), DiffusionSchedule()).pos_t is None
    )


def test_ood_score_is_the_mahalanobis_distance_over_its_threshold():
    torch.manual_seed(0)
    model = MCSDR(TINY, TargetTransform(), DiffusionSchedule()).eval()
    video, demo, mask = _inputs(3)
    with torch.no_grad():
        assert torch.isnan(model.condition(video, demo, mask)[1]).all()  # not fitted: unknown
        emb = model.embedding(model.stage_maps(video)).double()
        e = emb.shape[1]
        a = torch.randn(e, e, dtype=torch.float64)
        precision = a @ a.T / e + torch.eye(e, dtype=torch.float64)
        mean = emb.mean(0)
        model.ood_mean.copy_(mean.float())
        model.ood_precision.copy_(precision.float())
        model.ood_inv_threshold.fill_(0.25)
        model.refresh_ood()
        _kv, score = model.condition(video, demo, mask)
        # The statistics travel in the state dict; the whitening is derived again on loading.
        other = MCSDR(TINY, TargetTransform(), DiffusionSchedule()).eval()
        other.load_state_dict(model.state_dict())
        torch.testing.assert_close(other.condition(video, demo, mask)[1], score)
    z = emb - mean
    expected = 0.25 * torch.einsum("ne,ef,nf->n", z, precision, z)
    torch.testing.assert_close(score.double(), expected, rtol=1e-4, atol=1e-5)


def test_noise_share_grows_with_white_noise_and_is_one_on_a_blank_window():
    rng = np.random.default_rng(0)
    # A smooth moving texture: correlated from pixel to pixel and frame to frame.
    field = cv2.GaussianBlur(rng.normal(0, 1, (160, 160)).astype(np.float32), (0, 0), 3.0)
    clean = np.stack([field[i : i + 112, i : i + 112] for i in range(32)])
    clean = (clean - clean.mean()) / clean.std()
    shares = []
    for eta in (0.0, 0.25, 0.5):  # share of the variance that is white noise
        x = np.sqrt(1 - eta) * clean + np.sqrt(eta) * rng.normal(0, 1, clean.shape)
        video = np.clip(128 + 30 * x, 0, 255).astype(np.uint8)[None]
        shares.append(noise_share(torch.from_numpy(video))[0].numpy())
    shares = np.array(shares)  # (3 levels, 3 axes)
    assert (shares[0] < 0.1).all() and (np.diff(shares, axis=0) > 0.15).all()
    # ρ₁ falls by the factor 1 − η: share ≈ 1 − (1 − share_clean)(1 − η).
    np.testing.assert_allclose(shares[2], 1 - (1 - shares[0]) * 0.5, atol=0.02)
    blank = torch.zeros(1, 32, 112, 112, dtype=torch.uint8)
    torch.testing.assert_close(noise_share(blank), torch.ones(1, 3))


def test_ood_score_is_the_larger_of_the_distance_and_the_noise_gate():
    torch.manual_seed(0)
    model = MCSDR(TINY, TargetTransform(), DiffusionSchedule()).eval()
    video, demo, mask = _inputs(3)
    with torch.no_grad():
        model.ood_precision.copy_(torch.eye(len(model.ood_mean)))
        model.ood_inv_threshold.fill_(1e-9)  # the distance part ≈ 0 for any window
        model.refresh_ood()
        model.ood_noise_inv_threshold.copy_(torch.tensor([2.0, 3.0, 4.0]))
        score = model.condition(video, demo, mask)[1]
    expected = (noise_share(video) * torch.tensor([2.0, 3.0, 4.0])).amax(dim=1)
    torch.testing.assert_close(score, expected, rtol=1e-4, atol=1e-4)


def test_target_transform_is_bounded_and_invertible():
    tr = TargetTransform.fit(np.array([20.0, 45.0, 60.0, 70.0]))
    ef = torch.tensor([5.0, 35.0, 55.0, 85.0])
    torch.testing.assert_close(tr.inverse(tr.forward(ef)), ef, rtol=1e-4, atol=1e-4)
    extreme = np.array([-1e3, -40.0, 0.0, 40.0, 1e3])
    out = tr.inverse_np(extreme)
    assert np.all(out >= 0) and np.all(out <= 100)
    assert np.all((out[1:-1] > 0) & (out[1:-1] < 100))


def test_missing_demographics_change_the_condition_and_dropout_hides_fields():
    torch.manual_seed(0)
    model = MCSDR(TINY, TargetTransform(), DiffusionSchedule()).eval()
    video, demo, mask = _inputs(1)
    with torch.no_grad():
        full = model.tokens(video, demo, mask)
        none = model.tokens(video, demo, torch.zeros_like(mask))
        other_values = model.tokens(video, demo * 2, torch.zeros_like(mask))
    assert not torch.allclose(full[:, -4:], none[:, -4:])
    # Masked fields are replaced by the learned missing token: their values cannot leak in.
    torch.testing.assert_close(none, other_values)
    gen = torch.Generator().manual_seed(0)
    kept = drop_demographics(torch.ones(4000, 4, dtype=torch.bool), ModelConfig(), gen)
    share = kept.float().mean().item()
    assert abs(share - 0.75 * 0.7) < 0.02  # 25 % per field, 30 % all at once


def _toy_arrays(n: int, seed: int) -> ClipArrays:
    """Clips whose brightness encodes EF: a disc of grey level g ↔ EF = 15 + 70·g/255."""
    rng = np.random.default_rng(seed)
    level = rng.uniform(0, 255, n)
    clips = np.zeros((n, 32, 112, 112), np.uint8)
    yy, xx = np.mgrid[:112, :112]
    disc = (yy - 56) ** 2 + (xx - 56) ** 2 < 30**2
    for i in range(n):
        clips[i][:, disc] = level[i]
    ef = (15 + 70 * level / 255).astype(np.float32)
    no_area = np.full((n, 32), np.nan, np.float32)  # like real data: no area curve, no auxiliary loss
    return ClipArrays(
        clips, ef, np.zeros((n, 4), np.float32), np.zeros((n, 4), bool), np.zeros(n, np.int8), no_area
    )


def test_tiny_model_learns_a_simple_mapping():
    torch.manual_seed(0)
    train, test = _toy_arrays(256, 0), _toy_arrays(32, 1)
    model = MCSDR(TINY, TargetTransform.fit(train.ef), DiffusionSchedule())
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    rng = np.random.default_rng(0)
    for _ in range(300):
        idx = rng.choice(len(train), 16, replace=False)
        batch = _batch(train, idx, gen, augment=False)
        parts = losses(model, batch, draws=8, gen=gen)
        assert parts["area"].item() == 0.0  # no area curve known: the auxiliary term is inert
        loss = parts["eps"] + parts["reg"] + parts["nll"] + parts["area"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    res = sample_arrays(model, test, k=16)
    mae = np.abs(res["samples"].mean(1) - test.ef).mean()
    reg_mae = np.abs(model.transform.inverse_np(res["reg"]) - test.ef).mean()
    assert mae < 6.0, mae  # untrained: ≈ 17 EF points (spread of the labels)
    assert reg_mae < 6.0, reg_mae
    assert np.all((res["samples"] > 0) & (res["samples"] < 100))


@pytest.mark.parametrize("spacing", ["leading", "trailing"])
def test_sampler_uses_schedule_steps(spacing):
    sched = DiffusionSchedule(spacing=spacing)
    model = MCSDR(TINY, TargetTransform(), sched).eval()
    calls = []
    original = model.eps

    def spy(y, t, kv):
        calls.append(int(t.flatten()[0]))
        return original(y, t, kv)

    model.eps = spy
    video, demo, mask = _inputs(1)
    with torch.no_grad():
        model.sample(video, demo, mask, torch.randn(1, 4))
    assert calls == sched.timesteps().tolist()


def test_r2plus1d_option_builds_or_names_the_fix():
    cfg = ModelConfig(encoder="r2plus1d_18", d_model=16, n_heads=2, n_blocks=1)
    try:
        import torchvision.models.video  # noqa: F401
    except (ImportError, RuntimeError):
        with pytest.raises(ImportError, match="pip install torchvision"):
            MCSDR(cfg, TargetTransform(), DiffusionSchedule())
        return
    model = MCSDR(cfg, TargetTransform(), DiffusionSchedule()).eval()
    video, demo, mask = _inputs(1)
    with torch.no_grad():
        assert model.tokens(video, demo, mask).shape == (1, 1 + 4 * 7 * 7 + 4, 16)
