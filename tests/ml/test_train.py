"""Training end to end on a tiny synthetic set: checkpoints, resume, artefact + sidecar, hash check."""

from __future__ import annotations

import json

import pytest
import torch

from edge_agent.config import apply_overrides, load_yaml, to_mapping
from edge_agent.ml.train import parse_config, refit_ood, train
from edge_agent.model.artefact import load_model


def _sections(tmp_path, steps: int):
    data = load_yaml("configs/train_synthetic.yaml")
    apply_overrides(
        data,
        [
            "data.n_train=12",
            "data.n_val=6",
            f"data.cache={tmp_path / 'cache'}",
            "data.workers=1",
            "model.width=4",
            "model.d_model=16",
            "model.n_heads=2",
            "model.n_blocks=1",
            f"train.steps={steps}",
            "train.batch_size=4",
            "train.warmup=2",
            "train.eval_every=3",
            "train.checkpoint_every=3",
            f"train.out={tmp_path / 'run'}",
            f"train.artefact={tmp_path / 'engines' / 'tiny'}",
        ],
    )
    return parse_config(data, "test")


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def test_train_resume_and_artefact(tmp_path):
    path = train(_sections(tmp_path, steps=3))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 3 and len(ckpt["history"]) == 1
    first_weights = {k: v.clone() for k, v in ckpt["model"].items()}
    # The simulated sets were cached and are reused rather than simulated again.
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "train_n12_seed1.npz",
        "val_n6_seed2.npz",
    ]
    # Resume: a longer run continues from step 3 instead of starting again.
    path = train(_sections(tmp_path, steps=6))
    ckpt = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert ckpt["step"] == 6 and [h["step"] for h in ckpt["history"]] == [3, 6]
    assert any(not torch.equal(first_weights[k], ckpt["model"][k]) for k in first_weights)

    side = json.loads(path.with_suffix(".json").read_text())
    for key in (
        "sha256",
        "model",
        "diffusion",
        "target_transform",
        "recalibration",
        "training",
        "parameters",
    ):
        assert key in side
    assert side["diffusion"]["num_inference_steps"] == 10 and side["training"]["steps"] == 6
    assert 0.25 <= side["recalibration"]["scale"] <= 4.0
    model, _ = load_model(path)
    assert model.cfg.width == 4 and not model.training
    noise_inv = 1 / torch.tensor(side["ood"]["noise_threshold_t_y_x"])
    torch.testing.assert_close(model.ood_noise_inv_threshold, noise_inv, rtol=1e-5, atol=0)

    # Refitting the score without training: same data and seeds give the same statistics; the rest
    # of the sidecar (recalibration, history) stays, and the new weights file matches its hash.
    assert refit_ood(_sections(tmp_path, steps=6)) == path
    refit = json.loads(path.with_suffix(".json").read_text())
    assert refit["ood"]["threshold_d2"] == pytest.approx(side["ood"]["threshold_d2"], rel=1e-6)
    assert refit["ood"]["noise_threshold_t_y_x"] == side["ood"]["noise_threshold_t_y_x"]
    assert {k: v for k, v in refit.items() if k not in ("ood", "sha256")} == {
        k: v for k, v in side.items() if k not in ("ood", "sha256")
    }
    load_model(path)

    # A modified weights file no longer matches its sidecar: refuse to load it.
    blob = bytearray(path.read_bytes())
    blob[-10] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(ValueError, match="does not match its sidecar"):
        load_model(path)


def test_missing_sidecar_is_a_clear_error(tmp_path):
    (tmp_path / "m.pt").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"sidecar m\.json is missing"):
        load_model(tmp_path / "m")


def test_trains_from_a_dataset_folder_in_echonet_format(tmp_path):
    """`data.format: echonet` reads a folder through the EchoNet loader (here one the simulator wrote)."""
    from edge_agent.ml.simulate import write_dataset

    root = write_dataset(tmp_path / "echonet", n=10, seed=4, fmt="echonet", n_beats=2.2, workers=1)
    data = {k: to_mapping(v) for k, v in _sections(tmp_path, steps=2).items()}
    data["data"].update(format="echonet", root=str(root))
    path = train(parse_config(data, "test"))
    side = json.loads(path.with_suffix(".json").read_text())
    assert side["training"]["data"]["format"] == "echonet" and side["training"]["steps"] == 2
