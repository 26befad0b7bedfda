"""Models: shapes, the K-way head, features, and smooth input gradients for SGLD."""
from __future__ import annotations

import pytest
import torch

from gedi_fast.train.models import MLPClusterer, SmallResNet, build_model


@pytest.mark.parametrize("shape,clusters,kind", [((2,), 2, MLPClusterer), ((64,), 13, MLPClusterer),
                                                  ((3, 32, 32), 10, SmallResNet), ((1, 28, 28), 25, SmallResNet)])
def test_logits_and_features(shape, clusters, kind):
    model = build_model(shape, clusters)
    assert isinstance(model, kind)
    x = torch.randn(5, *shape, requires_grad=True)
    logits = model(x)
    assert logits.shape == (5, clusters)
    assert model.features(x).shape[0] == 5
    (grad,) = torch.autograd.grad(-torch.logsumexp(logits, 1).sum(), x)
    assert grad.shape == x.shape and torch.isfinite(grad).all() and grad.abs().sum() > 0


@pytest.mark.parametrize("shape,clusters,match", [((2,), 1, "clusters must be >= 2"), ((2, 2), 3, "input_shape must be")])
def test_bad_model_arguments(shape, clusters, match):
    with pytest.raises(ValueError, match=match):
        build_model(shape, clusters)
