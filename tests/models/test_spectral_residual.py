"""Exact tests of models/spectral_residual.py against a per-window reference."""
from __future__ import annotations

import numpy as np
import pytest

from models import registry
from tests.models.conftest import tiny_frame


def spectral_residual_reference(x, window, m, q, z):
    """The paper's steps, one window at a time, with numpy's rfft/irfft (a loop per window: a test)."""
    out = []
    for n in range(window - 1, len(x)):
        w = list(x[n - window + 1: n + 1])
        g = np.mean([(w[-2] - w[-2 - i]) / i for i in range(1, m + 1)])  # gradients to x_{n-1}
        w = np.array(w + [w[-1 - m] + g * m] * m)
        spectrum = np.fft.rfft(w)
        log_amp = np.log(np.maximum(np.abs(spectrum), 1e-8))
        local_log = np.array([log_amp[max(0, k - q + 1): k + 1].mean() for k in range(len(log_amp))])
        saliency = np.abs(np.fft.irfft(np.exp(log_amp - local_log + 1j * np.angle(spectrum)), n=len(w)))
        local = saliency[window - 1 - z: window - 1].mean()
        out.append((saliency[window - 1] - local) / local)
    return np.array(out)


@pytest.mark.parametrize("config", [{"window": 24, "extend": 5, "score_window": 7, "batch_windows": 16},
                                    {"window": 25, "extend": 3, "amplitude_window": 4, "score_window": 5},
                                    {"window": 32, "extend": 4, "amplitude_window": 1, "score_window": 9,
                                     "batch_windows": 80}])  # several blocks, the last one partial
def test_spectral_residual_equals_a_per_window_reference(config):
    from models.spectral_residual import SpectralResidualConfig
    cfg = SpectralResidualConfig(**config)
    rng = np.random.default_rng(0)
    x = 3 * np.sin(np.arange(120) / 5) + rng.standard_normal(120) + 20
    x[70] += 8
    frame = tiny_frame({"a": x, "b": x[:cfg.window - 1]})  # b: shorter than a window, nothing scored
    raw = registry.create("spectral_residual", cfg).fit(frame)._score_core(frame)
    expected = spectral_residual_reference(x, cfg.window, cfg.extend, cfg.amplitude_window, cfg.score_window)
    assert np.isnan(raw[:cfg.window - 1]).all() and np.isnan(raw[120:]).all()
    np.testing.assert_allclose(raw[cfg.window - 1:120], expected, rtol=1e-9, atol=1e-9)
    assert np.nanargmax(raw[:120]) == 70  # the spike is the most salient point
    flat = tiny_frame({"c": np.r_[np.zeros(60), np.arange(20.0)]})  # all-zero spectra: clipped, finite
    assert np.isfinite(registry.create("spectral_residual", cfg).fit(flat).score(flat)).all()
    # causal prefix invariance is test_causal.py::test_causal_scores_use_no_later_row (to 1e-6: BLAS may round
    # a block of windows differently from a shorter one, so the exact-equality test above does not apply)


def test_window_sums_equal_direct_sums():
    from models.spectral_residual import window_sums
    u = np.random.default_rng(1).integers(-50, 50, (40, 3)).astype(float)  # integers: every order sums exactly
    for width in (1, 2, 5, 8, 13, 16):
        count = len(u) - width + 1 - 2
        expected = np.array([u[r:r + width].sum(axis=0) for r in range(count)])
        got = window_sums(u.copy(), width, count, np.empty_like(u), np.empty_like(u))
        np.testing.assert_array_equal(got, expected)
