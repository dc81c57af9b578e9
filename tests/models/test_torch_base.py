"""Exact tests of models/torch_base.py: masked losses, the class-balanced sampler, device selection,
the training loop's holdout and checkpoint."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from models import registry
from models.base import SkipDetector, TrainConfig
from models.frame import LABEL, MISSING, VALUE, kpi_slices
from models.torch_base import balanced_sampler, masked_mse, resolve_device
from tests.models.conftest import CPU, ConstantNet


def test_masked_mse_ignores_masked_points():
    pred, target = torch.zeros(2, 5), torch.ones(2, 5)
    observed = torch.ones(2, 5)
    observed[1, 3] = 0
    base = masked_mse(pred, target, observed)
    for huge in (1e6, float("inf"), float("nan")):
        poisoned = target.clone()
        poisoned[1, 3] = huge
        assert masked_mse(pred, poisoned, observed).item() == base.item() == 1.0
    assert masked_mse(pred, target, torch.zeros(2, 5)).item() == 0.0


@pytest.mark.parametrize("name, net", [
    ("lstm_forecaster", ConstantNet(lambda x: torch.zeros_like(x))),
    ("dense_autoencoder", ConstantNet(lambda x: (torch.zeros_like(x), torch.zeros(len(x), 3)))),
    # logits read only the window's last point, so the poisoned point moves one window's loss term
    ("cnn_classifier", ConstantNet(lambda x: torch.stack([torch.zeros(len(x)), x[:, -1]], 1))),
])
def test_a_masked_point_with_a_huge_value_does_not_change_the_loss(name, net, splits):
    train = splits[0].iloc[:400].copy()
    row = 300
    train.loc[row, MISSING] = True
    detector = registry.create(name, None, CPU)
    base = detector._loss(net.eval(), list(detector._train_tensors(train))).item()
    train.loc[row, VALUE] = 1e6
    assert detector._loss(net.eval(), list(detector._train_tensors(train))).item() == base
    train.loc[row, MISSING] = False  # the same point, observed: now it counts
    assert detector._loss(net.eval(), list(detector._train_tensors(train))).item() != base


def test_balanced_sampler_weights():
    labels = np.array([0, 0, 0, 1, 1, 0])
    sampler = balanced_sampler(labels, num_samples=20_000, generator=torch.Generator().manual_seed(0))
    np.testing.assert_allclose(sampler.weights.numpy(), [1 / 4, 1 / 4, 1 / 4, 1 / 2, 1 / 2, 1 / 4])
    assert sampler.weights[labels == 0].sum() == pytest.approx(sampler.weights[labels == 1].sum())
    drawn = labels[np.fromiter(iter(sampler), int)]
    assert abs(drawn.mean() - 0.5) < 0.02


def test_classifier_skips_when_no_window_ends_on_a_positive(splits):
    train = splits[0].copy()
    first_rows = np.concatenate([np.arange(sl.start, sl.start + 10) for _, sl in kpi_slices(train)])
    train[LABEL] = np.int8(0)
    train.loc[first_rows, LABEL] = 1  # positives only where no full window ends
    with pytest.raises(SkipDetector, match="no train window ends on a positive"):
        registry.create("cnn_classifier", None, CPU).fit(train)


def test_device_selection_honours_cpu(splits):
    assert resolve_device("cpu") == "cpu"
    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device must be"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device("cuda:0")
    detector = registry.create("dense_autoencoder", None, CPU).fit(splits[0])
    assert detector.device == "cpu"
    assert all(p.device.type == "cpu" for p in detector.module.parameters())
    with pytest.raises(ValueError, match="device"):
        TrainConfig(device="gpu")


def test_holdout_early_stopping_and_checkpoint(splits, tmp_path):
    config = TrainConfig(device="cpu", max_epochs=30, patience=1, progress=False, checkpoint_dir=str(tmp_path))
    detector = registry.create("dense_autoencoder", None, config).fit(splits[0], None)  # val: last 10%
    losses = [h["val_loss"] for h in detector.history]
    assert all(np.isfinite(losses)) and len(losses) <= 30
    best = torch.load(tmp_path / "dense_autoencoder.best.pt", weights_only=True)
    for key, value in detector.module.state_dict().items():
        torch.testing.assert_close(best[key], value)  # the best epoch is restored and checkpointed
    if len(losses) < 30:  # stopped early (patience 1): the last epoch did not improve on the best
        assert losses[-1] >= min(losses[:-1])
