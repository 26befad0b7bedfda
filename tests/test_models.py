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


@pytest.mark.parametrize("shape,clusters,spread,temperature", [((1, 28, 28), 10, 2.0, 0.1), ((7,), 3, 0.5, 1.0),
                                                               ((3, 9, 11), 5, 4.0, 0.3)])
def test_spread_head_sets_the_logit_spread_and_balances_the_clusters(shape, clusters, spread, temperature):
    from gedi_fast.train.metrics import logit_spread
    from gedi_fast.train.models import spread_head

    torch.manual_seed(3)
    model = build_model(shape, clusters, width=8, hidden=16)
    x = torch.rand(257, *shape) * 2 - 1
    before = model.features(x)
    spread_head(model, x, temperature, spread)
    with torch.no_grad():
        z = model(x)
    assert torch.allclose(model.features(x), before)  # only the head changes
    assert logit_spread(z, temperature).item() == pytest.approx(spread, rel=1e-4)
    assert z.double().mean(0).abs().max().item() < 1e-5 * max(1.0, z.abs().max().item())


def test_spread_head_refuses_inputs_it_cannot_tell_apart():
    from gedi_fast.train.models import spread_head

    model = build_model((4,), 3, hidden=8)
    with pytest.raises(ValueError, match="do not vary"):
        spread_head(model, torch.ones(6, 4), 0.1, 2.0)
    with pytest.raises(ValueError, match="spread must be > 0"):
        spread_head(model, torch.randn(6, 4), 0.1, 0.0)
