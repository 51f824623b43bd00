"""The timm WideResNet regressor: presets build and train without NaN, configs are strict, the
feature maps stay finer than 2x2 (GradCAM), targets round-trip through the stored statistics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semknobs.config import from_mapping, to_mapping
from semknobs.errors import ParamsError
from semknobs.models.regressor import (
    PRESETS,
    PeakStressRegressor,
    RegressorConfig,
    build_backbone,
    predict,
)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_and_trains_without_nan(preset):
    cfg = RegressorConfig(preset=preset)
    torch.manual_seed(0)
    model = PeakStressRegressor(cfg, target_mean=50.0, target_std=8.0)
    x = torch.rand(2, 1, 64, 64) * 2 - 1  # the paper preset on a small input is enough
    out = model(x)
    assert out.shape == (2,)
    loss = ((out - torch.tensor([0.5, -0.5])) ** 2).mean()
    loss.backward()
    assert torch.isfinite(loss)
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    features = model.net.forward_features(x)
    assert features.shape[-1] == features.shape[-2] == cfg.feature_px > 2


def test_paper_preset_is_the_full_wide_resnet50_2():
    import timm

    cfg = RegressorConfig(preset="paper")
    ours = sum(p.numel() for p in build_backbone(cfg).parameters())
    stock = timm.create_model("wide_resnet50_2", pretrained=False, in_chans=1, num_classes=1)
    assert ours == sum(p.numel() for p in stock.parameters())  # stride changes no weight


def test_small_presets_feed_8x8_maps_on_64px_tiles():
    for preset in ("tiny", "small", "medium"):
        assert RegressorConfig(preset=preset).feature_px == 8


def test_config_refuses_coarse_maps_and_unknown_presets():
    with pytest.raises(ValueError, match="GradCAM needs finer than 2x2"):
        RegressorConfig(preset="tiny", output_stride=32)
    with pytest.raises(ValueError, match="unknown preset 'huge'"):
        RegressorConfig(preset="huge")
    with pytest.raises(ValueError, match="exactly 4"):
        RegressorConfig(preset="tiny", layers=(1, 1, 1), channels=(8, 16, 32))
    with pytest.raises(ParamsError, match="model: .*unknown preset"):
        from_mapping(RegressorConfig, {"preset": "huge"}, where="model")


def test_overrides_and_dict_round_trip():
    cfg = from_mapping(
        RegressorConfig, {"preset": "tiny", "channels": [8, 8, 16, 16], "drop_rate": 0.2}
    )
    assert cfg.resolved().channels == (8, 8, 16, 16) and cfg.resolved().stem_width == 8
    assert from_mapping(RegressorConfig, to_mapping(cfg)) == cfg
    assert build_backbone(cfg).drop_rate == 0.2


def test_predictions_come_back_in_mpa():
    torch.manual_seed(0)
    model = PeakStressRegressor(RegressorConfig(preset="tiny"), target_mean=45.0, target_std=7.0)
    images = np.random.default_rng(0).integers(0, 256, (5, 64, 64), dtype=np.uint8)
    model.train()
    mpa = predict(model, images, batch_size=2)
    assert model.training  # predict restores the mode it found
    model.eval()
    with torch.no_grad():
        raw = model(torch.from_numpy(images).float().div(127.5).sub(1)[:, None]).double().numpy()
    np.testing.assert_allclose(mpa, raw * 7.0 + 45.0, rtol=1e-5)
    stats = model.target_stats
    assert stats == {"mean": 45.0, "std": 7.0}
    assert set(model.state_dict()) >= {"target_mean", "target_std"}  # travel with the weights
