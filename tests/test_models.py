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


@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 27, 33), (2, 5, 7)])
@pytest.mark.parametrize("stem_stride", [1, 2, 3])
def test_a_flatten_head_sees_the_whole_last_feature_map(shape, stem_stride):
    model = build_model(shape, 5, width=4, stem_stride=stem_stride, pool="flatten")
    x = torch.randn(2, *shape)
    maps = model.stages(model.stem(x))
    assert model.features(x).shape == (2, maps[0].numel()) == (2, model.head.in_features)
    assert torch.equal(model.features(x), maps.flatten(1)) and model(x).shape == (2, 5)


def test_the_pool_setting_is_checked_and_reaches_the_model(tmp_path):
    from gedi_fast.train.config import TrainConfig

    with pytest.raises(ValueError, match="pool must be one of"):
        TrainConfig(pool="max")
    assert TrainConfig(pool="flatten").model_options()["pool"] == "flatten"
