"""train.budget: the demo's caps on neural training reach the detectors; kpiguard bench drops them."""
from __future__ import annotations

from pathlib import Path

import torch

from models.torch_base import evenly_spaced
from pipeline.params import load_params
from pipeline.stages.train import train_config
from pipeline.tools.bench import bench_params

REPO = Path(__file__).resolve().parents[1]


def test_the_budget_caps_epochs_and_windows_of_the_train_config():
    params = load_params(REPO / "params.yaml", ["train.max_epochs=20", "train.budget.max_epochs=6",
                                                "train.budget.max_train_windows=4096", "train.budget.max_val_windows=100"])
    tc = train_config(params, progress=False)
    assert (tc.max_epochs, tc.max_train_windows, tc.max_val_windows) == (6, 4096, 100)
    free = load_params(REPO / "params.yaml", ["train.budget.max_epochs=null", "train.budget.max_train_windows=null",
                                              "train.budget.max_val_windows=null"])
    tc = train_config(free, progress=False)
    assert (tc.max_epochs, tc.max_train_windows, tc.max_val_windows) == (free.train.max_epochs, None, None)


def test_bench_trains_at_the_full_budget(tmp_path):
    params = load_params(REPO / "params.yaml", ["train.budget.max_epochs=2"])
    bench = bench_params(params, "synthetic:", None, tmp_path, "split")
    assert bench.train.budget.model_dump() == {"max_epochs": None, "max_train_windows": None, "max_val_windows": None}


def test_evenly_spaced_keeps_the_ends_and_every_part():
    x = (torch.arange(10), torch.arange(10) * 2)
    a, b = evenly_spaced(x, 4)
    assert a.tolist() == [0, 3, 6, 9] and b.tolist() == [0, 6, 12, 18]
    assert evenly_spaced(x, None) is x and evenly_spaced(x, 10) is x
