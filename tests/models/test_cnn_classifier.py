"""Exact tests of models/cnn_classifier.py."""
from __future__ import annotations


def test_cnn_classifier_sees_the_point_it_scores():
    """The last point of a window (the one being scored) must reach the output through the pooling."""
    import torch

    from models.cnn_classifier import CnnClassifierConfig, CnnClassifierNet

    torch.manual_seed(0)
    net = CnnClassifierNet(CnnClassifierConfig()).eval()
    x = torch.randn(4, CnnClassifierConfig().window)
    y = x.clone()
    y[:, -1] += 100.0
    with torch.no_grad():
        assert not torch.allclose(net(x), net(y))
