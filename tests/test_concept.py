"""The concept network and the AttGAN's concept loss: invariance, calibration with a known
answer, masked targets, refreshes on meter-measured edits, and exact resume with all of it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from semknobs.data.tiles import load_tiles
from semknobs.meter import MeterParams, calibration, measure_tiles
from semknobs.models.attgan import AttGANConfig
from semknobs.models.concept import ConceptConfig, ConceptNet, dihedral
from semknobs.train.attgan import AttGANTrainParams, train_attgan
from semknobs.train.concept import ConceptParams, masked_mse

TINY = AttGANConfig(enc_dim=8, dec_dim=8, dis_dim=8, dis_fc_dim=16, film=True)


def test_the_symmetric_concept_network_ignores_the_eight_symmetries():
    torch.manual_seed(0)
    net = ConceptNet(ConceptConfig(width=4, blocks=3)).eval()
    x = torch.randn(3, 1, 32, 32)
    base = net(x, symmetric=True)
    for k in range(8):
        torch.testing.assert_close(net(dihedral(x, k), symmetric=True), base, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(net(torch.rot90(x, 1, (-2, -1))), net(x))  # one view is not


def test_calibration_recovers_a_known_line_and_masks_missing_readings():
    lots = np.repeat(np.array(["A", "B", "C"]), 4)
    labels = {"A": np.full(4, 0.1), "B": np.full(4, 0.5), "C": np.full(4, 0.9)}
    readings = np.stack([2 * labels[lot] + 1 for lot in lots])  # label = (reading - 1) / 2
    readings[0, 2] = np.nan  # a dispersity the meter could not give
    alpha, beta = calibration(readings, lots, labels)
    np.testing.assert_allclose(alpha, 0.5)
    np.testing.assert_allclose(beta, -0.5)
    pred = torch.zeros(2, 4)
    target = torch.tensor([[1.0, 1.0, float("nan"), 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert masked_mse(pred, target) == pytest.approx(1.0)  # the NaN is not counted


@pytest.fixture(scope="module")
def tiny_tiles(tiny_study):
    tiles, manifest = load_tiles(tiny_study["tiles"])
    readings = measure_tiles(tiles, progress=False)[["size", "porosity", "dispersity", "facetness"]]
    lots = manifest["lot"].to_numpy()
    rng = np.random.default_rng(0)
    per_lot = {lot: rng.random(4) for lot in np.unique(lots)}
    attrs = np.stack([per_lot[lot] for lot in lots]).astype(np.float32)
    return torch.from_numpy(tiles), torch.from_numpy(attrs), readings.to_numpy(float), lots


def _params(steps: int) -> AttGANTrainParams:
    return AttGANTrainParams(
        model=TINY,
        steps=steps,
        batch_size=8,
        critic="r1",
        n_critic=1,
        lambda_att_g=0.0,
        lambda_att_d=0.0,
        lambda_concept=10.0,
        one_knob_share=0.5,
        checkpoint_every=5,
        concept=ConceptParams(
            model=ConceptConfig(width=4, blocks=3),
            steps=10,
            batch_size=8,
            refresh_every=5,
            refresh_tiles=4,
            refresh_steps=3,
            pool_size=16,
        ),
    )


def _train(tiles, attrs, readings, lots, steps, **kw):
    return train_attgan(
        params=_params(steps),
        images=tiles,
        attrs=attrs,
        readings=readings,
        lots=lots,
        meter=MeterParams(),
        progress=False,
        **kw,
    )


def test_concept_loss_trains_refreshes_and_resumes_exactly(tiny_tiles, tmp_path):
    tiles, attrs, readings, lots = tiny_tiles
    logged = []
    whole = _train(tiles, attrs, readings, lots, 12, log=lambda m, s: logged.append(m))
    assert whole.concept.pool.count == 8  # two refreshes (steps 5 and 10) of 4 measured edits
    assert all(np.isfinite(m["train/concept"]) for m in logged)
    assert "train/r1" in logged[0] or any("train/r1" in m for m in logged)
    _train(tiles, attrs, readings, lots, 12, checkpoint_dir=tmp_path, stop_after=7)
    resumed = _train(tiles, attrs, readings, lots, 12, checkpoint_dir=tmp_path)
    for name, module in (("gen", "gen"), ("concept", "concept")):
        a = getattr(whole, module) if name == "gen" else whole.concept.net
        b = getattr(resumed, module) if name == "gen" else resumed.concept.net
        for key, value in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], value, msg=f"{name}.{key}")
    torch.testing.assert_close(resumed.concept.pool.x, whole.concept.pool.x)


def test_the_concept_loss_needs_the_meter_readings(tiny_tiles):
    tiles, attrs, _, _ = tiny_tiles
    with pytest.raises(ValueError, match="meter readings"):
        train_attgan(params=_params(2), images=tiles, attrs=attrs, progress=False)
