"""Exact tests of models/vae_lstm.py: masked losses, sequences, the two training phases."""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from models import registry
from models.frame import MISSING, VALUE, kpi_slices
from models.windowing import covering_starts, n_windows
from tests.models.conftest import CPU, ConstantNet


def test_vae_lstm_losses_mask_missing_targets():
    detector = registry.create("vae_lstm", {"l_seq": 3}, CPU)
    detector.module = detector._build_module().eval()
    vae = ConstantNet(lambda x: (torch.zeros_like(x), torch.zeros(len(x), 6), torch.zeros(len(x), 6)))
    x, observed = torch.ones(4, 48), torch.ones(4, 48)
    observed[2, 10] = 0
    base = detector._vae_loss(vae, [x, observed]).item()
    x[2, 10] = 1e6
    assert detector._vae_loss(vae, [x, observed]).item() == base == 1.0
    codes, full = torch.zeros(4, 3, 6), torch.ones(4, 3)
    full[1, 2] = 0
    base = detector._lstm_loss(detector.module.predictor, [codes, full]).item()
    codes[1, 2] = 1e6  # the last embedding is only ever a target
    assert detector._lstm_loss(detector.module.predictor, [codes, full]).item() == base


def test_vae_lstm_sequence_shapes(splits):
    detector = registry.create("vae_lstm", None, CPU)
    cfg = detector.config
    detector.module = detector._build_module().eval()
    assert isinstance(detector.module.predictor.lstm, nn.LSTM)
    assert (detector.module.predictor.lstm.num_layers, detector.module.predictor.lstm.hidden_size) == (3, 64)
    test = splits[0]  # the test split is shorter than one sequence (l_win * l_seq = 576 points)
    _, sl = kpi_slices(test)[0]
    n = sl.stop - sl.start
    values, observed = test[VALUE].to_numpy(np.float32)[sl], (~test[MISSING].to_numpy())[sl].astype(np.float32)
    seq_starts = covering_starts(n, cfg.span, cfg.score_stride)
    codes, full, starts = detector.sequences(values, observed, seq_starts)
    assert codes.shape == (len(seq_starts), cfg.l_seq, cfg.code_size)
    assert full.shape == starts.shape == (len(seq_starts), cfg.l_seq)
    assert (np.diff(starts, axis=1) == cfg.l_win).all() and (starts[:, 0] == seq_starts).all()
    assert starts[-1, -1] + cfg.l_win == n  # the last sequence ends on the KPI's last row
    # A window's code does not depend on the sequence it sits in.
    direct = detector.module.vae.encode(torch.from_numpy(values[starts[0, 3]:starts[0, 3] + cfg.l_win].copy())[None])[0]
    np.testing.assert_allclose(codes[0, 3], direct[0].detach().numpy(), rtol=1e-5, atol=1e-6)
    with torch.inference_mode():
        recon = detector.module.reconstruct_next(torch.from_numpy(codes[:, :-1]))
    assert recon.shape == (len(seq_starts), cfg.l_seq - 1, cfg.l_win)
    train_codes, train_full = detector._sequence_tensors(splits[0])
    per_kpi = sum(n_windows(s.stop - s.start, cfg.span, cfg.train_stride) for _, s in kpi_slices(splits[0]))
    assert train_codes.shape == (per_kpi, cfg.l_seq, cfg.code_size) and train_full.shape == (per_kpi, cfg.l_seq)


def test_vae_lstm_trains_in_two_phases(splits):
    detector = registry.create("vae_lstm", {"max_train_windows": 512}, CPU).fit(splits[0], splits[1])
    phases = [h["phase"] for h in detector.history]
    assert phases == sorted(phases, key=["vae", "lstm"].index) and set(phases) == {"vae", "lstm"}
