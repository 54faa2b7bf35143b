"""Offline evaluation: files, metrics.json contract, numbers recomputed from the saved samples, datasets."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from matplotlib.image import imread

from edge_agent.core import metrics
from edge_agent.ml.evaluate import FLAT_KEYS, EvalRequest, quality_labels, run_evaluation
from edge_agent.ml.train import DataConfig, TrainConfig, TrainState, save_artefact
from edge_agent.model.artefact import load_model
from edge_agent.model.ddim import DiffusionSchedule
from edge_agent.model.network import MCSDR, ModelConfig, TargetTransform
from edge_agent.model.posterior import recalibrate
from edge_agent.sim.clips import generate
from tests.fixtures import EchoVideo, write_echonet_dynamic

SCALE = 2.0  # recalibration scale written into the sidecar, so the recalibrated posterior must differ
EVAL_SEED = 7  # not the artefact's train_seed 1 / val_seed 2
PLOTS = ("pred_vs_true.png", "reliability.png", "pit.png", "std_by_quality.png")


@pytest.fixture(scope="module")
def artefact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-init artefact (.pt + sidecar) saved by train.save_artefact; returns the stem."""
    root = tmp_path_factory.mktemp("engines")
    torch.manual_seed(0)
    # An untrained ε_θ leaves DDIM's x0 prediction at |y| ~ 100s (it divides by √ᾱ_T ≈ 0.006); with the
    # default sigma 0.6 float64 sigmoid then rounds EF to exactly 100. A narrow transform keeps this
    # random model's EF inside (0, 100), as a trained model's (|y| ≲ 5) is.
    transform = TargetTransform(mu=0.25, sigma=0.02)
    model = MCSDR(ModelConfig(width=4, d_model=16, n_heads=2, n_blocks=1), transform, DiffusionSchedule())
    state = TrainState(model, model, torch.optim.SGD(model.parameters(), lr=0.1), step=3)
    sections = {
        "data": DataConfig(n_train=6, n_val=6, cache=None, workers=1),
        "model": model.cfg,
        "diffusion": model.schedule,
        "train": TrainConfig(steps=3, artefact=str(root / "tiny"), ood_n_fit=4),
    }
    beats = generate(3, seed=5, workers=1)
    path = save_artefact(state, sections, beats, beats, seconds=1.0)
    # The fitted scale of an untrained model is arbitrary; pin it (the sidecar is not hashed).
    side_path = path.with_suffix(".json")
    side = json.loads(side_path.read_text())
    side["recalibration"]["scale"] = SCALE
    side_path.write_text(json.dumps(side))
    return root / "tiny"


@pytest.fixture(scope="module")
def synthetic_run(artefact: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, Path, Path]:
    """One synthetic evaluation with baselines: (returned dict, out folder, extra JSON path)."""
    root = tmp_path_factory.mktemp("eval")
    req = EvalRequest(
        model=str(artefact),
        n=6,
        seed=EVAL_SEED,
        k=8,
        baselines=True,
        out=str(root / "out"),
        json_path=str(root / "extra" / "m.json"),
        workers=1,
        record=True,
    )
    return run_evaluation(req), root / "out", root / "extra" / "m.json"


def test_record_stores_figures_in_the_sidecar_and_keeps_the_hash_valid(synthetic_run, artefact):
    result, _, _ = synthetic_run
    side = json.loads(artefact.with_suffix(".json").read_text())
    entry = side["metrics"][f"synthetic_seed{EVAL_SEED}_n6"]
    assert entry["raw"] == result["raw"] and entry["gaussian"] == result["gaussian"]
    assert entry["data"]["source"] == "synthetic"
    load_model(artefact)  # the weights' hash still matches


def test_writes_every_file_and_valid_plots(synthetic_run):
    _, out, extra = synthetic_run
    for name in ("metrics.json", "report.md", "samples.npz", *PLOTS):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    assert extra.is_file()
    for name in PLOTS:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
        img = imread(out / name)
        assert img.ndim == 3 and min(img.shape[:2]) > 200, (name, img.shape)
        assert img[..., :3].std() > 0.01, f"{name} is blank"


def test_metrics_json_sections_and_flat_keys(synthetic_run, artefact):
    result, out, extra = synthetic_run
    written = json.loads((out / "metrics.json").read_text())
    assert written == result
    assert json.loads(extra.read_text()) == result
    for key in ("model", "data", "k", "raw", "recalibrated", "regression", "gaussian", "timing"):
        assert key in result, key
    required_flat = set(FLAT_KEYS) - {"mean_std"}
    assert required_flat <= set(result)
    for key in FLAT_KEYS:
        assert result[key] == result["raw"][key], key
    side = json.loads(artefact.with_suffix(".json").read_text())
    assert result["model"] == {
        "path": str(artefact.with_suffix(".pt")),
        "sha256": side["sha256"],
        "recalibration_scale": SCALE,
    }
    assert result["data"] == {
        "source": "synthetic",
        "n": 6,
        "seed": EVAL_SEED,
        "generation": 1,  # the tiny artefact's training data's
        "pediatric": False,
        "balanced_quality": True,
    }
    assert result["reliability"]["n"] == 6 and result["reliability"]["confidently_wrong"] >= 0
    assert result["k"] == 8 and result["raw"]["k"] == 8 and result["noise_seed"] == EVAL_SEED
    assert result["timing"]["sampling_seconds"] > 0 and result["timing"]["clips_per_second"] > 0
    assert set(result["std_by_quality"]) == {"good", "medium", "poor"}


def test_metrics_recomputed_from_saved_samples(synthetic_run):
    result, out, _ = synthetic_run
    with np.load(out / "samples.npz") as z:
        s, y, q = z["samples"], z["truth"], z["quality"]
        recal, reg, gauss = z["samples_recalibrated"], z["regression"], z["gauss_samples"]
    assert s.shape == (6, 8) and y.shape == (6,) and gauss.shape == (6, 8)
    assert q.tolist() == [0, 1, 2, 0, 1, 2]  # balanced good/medium/poor
    assert result["raw"]["mae"] == pytest.approx(np.abs(s.mean(1) - y).mean(), rel=1e-12)
    assert result["raw"]["crps"] == pytest.approx(metrics.crps(s, y).mean(), rel=1e-12)
    assert result["gaussian"]["mae"] == pytest.approx(np.abs(gauss.mean(1) - y).mean(), rel=1e-12)
    # Recalibration: the saved array is recalibrate(raw, scale) and its numbers differ from raw.
    np.testing.assert_allclose(recal, recalibrate(s, SCALE))
    assert result["recalibrated"]["crps"] == pytest.approx(metrics.crps(recal, y).mean(), rel=1e-12)
    assert result["recalibrated"]["mean_std"] > result["raw"]["mean_std"]
    assert result["recalibrated"]["crps"] != result["raw"]["crps"]
    # Regression: a point mass, CRPS = MAE, no interval coverage, AUROC by the negative prediction.
    regression = result["regression"]
    assert regression["crps"] == pytest.approx(regression["mae"], rel=1e-12)
    assert regression["mae"] == pytest.approx(np.abs(reg - y).mean(), rel=1e-12)
    assert regression["picp90"] == 0.0 and regression["mean_std"] == 0.0
    below = y < 50
    expected = metrics.auroc(-reg, below) if below.any() and not below.all() else None
    assert regression["auroc_ef50"] == expected
    # Bounded target space: every sample in (0, 100) without clipping.
    for method in ("raw", "recalibrated", "gaussian"):
        assert result[method]["frac_out_of_range"] == 0.0, method


def test_report_tables(synthetic_run):
    result, out, _ = synthetic_run
    report = (out / "report.md").read_text()
    assert "| metric | MCSDR raw | MCSDR recalibrated | regression | Gaussian |" in report
    mae_row = next(line for line in report.splitlines() if line.startswith("| MAE"))
    cells = [c.strip() for c in mae_row.strip("|").split("|")]
    expected = [f"{result[m]['mae']:.2f}" for m in ("raw", "recalibrated", "regression", "gaussian")]
    assert cells[1:] == expected
    for q in ("good", "medium", "poor"):
        row = next(line for line in report.splitlines() if line.startswith(f"| {q} |"))
        assert f"| {result['raw']['std_by_quality'][q]:.2f} |" in row


def test_both_data_and_synthetic_is_an_error():
    with pytest.raises(ValueError, match="both data="):
        EvalRequest(model="engines/x", data="some/folder", synthetic=True)


def test_training_seed_warns(artefact, tmp_path):
    req = EvalRequest(model=str(artefact), n=1, seed=1, k=2, out=str(tmp_path), workers=1)
    with pytest.warns(UserWarning, match="train_seed"):
        result = run_evaluation(req)
    assert result["r2"] is None  # one clip: R² undefined, reported as null rather than failing


def test_seeds_warn_per_generation_of_the_training_data(artefact, tmp_path, recwarn):
    """A generation-2 model with a generation-1 mix: seed 3 is training data in generation 1 only."""
    for suffix in (".pt", ".json"):
        shutil.copy(artefact.with_suffix(suffix), tmp_path / f"m{suffix}")
    side = json.loads((tmp_path / "m.json").read_text())
    side["training"]["data"].update(generation=2, mix_generation1=10, mix_seed=3)
    (tmp_path / "m.json").write_text(json.dumps(side))
    req = EvalRequest(model=str(tmp_path / "m"), n=1, seed=3, k=2, out=str(tmp_path / "a"), workers=1)
    with pytest.warns(UserWarning, match="mix_seed"):
        run_evaluation(dataclasses.replace(req, generation=1))
    recwarn.clear()
    result = run_evaluation(req)  # generation 2 by default: the model's; seed 3 was never drawn there
    assert not [w for w in recwarn if "seen in training" in str(w.message)]
    assert result["data"]["generation"] == 2


def test_quality_labels():
    assert quality_labels(np.array([-1, 0, 2], np.int8)) == ["unknown", "good", "poor"]
    assert quality_labels(np.array([-1, -1], np.int8)) is None


@pytest.fixture
def echonet_root(tmp_path: Path) -> Path:
    videos = [
        EchoVideo("t1", ef=62.0, split="TEST"),
        EchoVideo("t2", ef=35.0, split="TEST", period=50.0, ed_frame=5),
        EchoVideo("tr", ef=55.0, split="TRAIN"),
    ]
    return write_echonet_dynamic(tmp_path / "echonet", videos)


def test_evaluates_an_echonet_split(artefact, echonet_root, tmp_path):
    req = EvalRequest(
        model=str(artefact),
        data=str(echonet_root),
        format="echonet",
        split="TEST",
        k=4,
        out=str(tmp_path / "out"),
    )
    result = run_evaluation(req)
    assert result["data"] == {
        "source": "dataset",
        "path": str(echonet_root),
        "format": "echonet",
        "split": "TEST",
        "n": 2,
    }
    assert result["n"] == 2 and "regression" not in result and "gaussian" not in result
    assert result["std_by_quality"] is None and "std_by_quality" not in result["raw"]
    with np.load(tmp_path / "out" / "samples.npz") as z:
        np.testing.assert_allclose(z["truth"], [62.0, 35.0])
        assert z["quality"].tolist() == [-1, -1]
        assert z["samples"].shape == (2, 4)
        assert result["mae"] == pytest.approx(np.abs(z["samples"].mean(1) - z["truth"]).mean(), rel=1e-12)
    assert "no image-quality grades" in (tmp_path / "out" / "report.md").read_text()
    for name in PLOTS:
        assert (tmp_path / "out" / name).stat().st_size > 0, name


def test_empty_split_names_the_split(artefact, echonet_root, tmp_path):
    req = EvalRequest(model=str(artefact), data=str(echonet_root), split="VAL", out=str(tmp_path))
    with pytest.raises(ValueError, match=r"split 'VAL'.*holds no clips"):
        run_evaluation(req)
