"""The concept network and the AttGAN's concept loss: invariance, calibration with a known
answer, masked targets, refreshes on meter-measured edits, and exact resume with all of it."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.data.tiles import load_tiles
from semknobs.meter import COUNT, MeterParams, calibration, measure_tiles
from semknobs.models.attgan import AttGANConfig
from semknobs.models.concept import ConceptConfig, ConceptNet, dihedral
from semknobs.pixels import to_model
from semknobs.train.attgan import train_attgan
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.concept import ConceptParams, ConceptTrainer, count_slope, masked_mse

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


def test_the_count_slope_recovers_a_known_law_and_refuses_bad_counts():
    rng = np.random.default_rng(0)
    labels = rng.random((40, 4))
    w = np.array([-1.4, 0.1, -0.2, 0.0])
    counts = np.exp(labels @ w + 3.0) - 1  # log(1 + n) = labels . w + 3
    np.testing.assert_allclose(count_slope(labels, counts), w, atol=1e-9)
    for bad in (np.r_[counts[:-1], -1.0], np.r_[counts[:-1], np.nan], counts[:-1]):
        with pytest.raises(ValueError, match="particle counts"):
            count_slope(labels, bad)
    with pytest.raises(ValueError, match="vary on every knob"):
        count_slope(np.c_[labels[:, :3], np.zeros(40)], counts)


@pytest.fixture(scope="module")
def tiny_tiles(tiny_study):
    tiles, manifest = load_tiles(tiny_study["tiles"])
    measured = measure_tiles(tiles, progress=False)
    readings = measured[["size", "porosity", "dispersity", "facetness"]]
    lots = manifest["lot"].to_numpy()
    rng = np.random.default_rng(0)
    per_lot = {lot: rng.random(4) for lot in np.unique(lots)}
    attrs = np.stack([per_lot[lot] for lot in lots]).astype(np.float32)
    counts = measured[COUNT].to_numpy(float)
    return torch.from_numpy(tiles), torch.from_numpy(attrs), readings.to_numpy(float), lots, counts


def _params(
    steps: int,
    lambda_count: float = 0.0,
    adv_eps: float = 0.0,
    adv_attributes: tuple[str, ...] = ATTRIBUTES,
) -> AttGANTrainParams:
    return AttGANTrainParams(
        lambda_count=lambda_count,
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
            adv_eps=adv_eps,
            adv_attributes=adv_attributes,
        ),
    )


def _train(
    tiles, attrs, readings, lots, steps, lambda_count=0.0, adv_eps=0.0, adv=ATTRIBUTES, **kw
):
    return train_attgan(
        params=_params(steps, lambda_count, adv_eps, adv),
        images=tiles,
        attrs=attrs,
        readings=readings,
        lots=lots,
        meter=MeterParams(),
        progress=False,
        **kw,
    )


@pytest.mark.parametrize(
    ("lambda_count", "adv_eps", "adv"),
    [
        (0.0, 0.0, ATTRIBUTES),
        (5.0, 0.0, ATTRIBUTES),
        (0.0, 0.03, ATTRIBUTES),
        (5.0, 0.03, ("facetness",)),
    ],
)
def test_concept_loss_trains_refreshes_and_resumes_exactly(
    tiny_tiles, tmp_path, lambda_count, adv_eps, adv
):
    tiles, attrs, readings, lots, counts = tiny_tiles
    logged = []
    kw = {"lambda_count": lambda_count, "adv_eps": adv_eps, "adv": adv}
    kw["counts"] = counts if lambda_count else None
    whole = _train(tiles, attrs, readings, lots, 12, log=lambda m, s: logged.append(m), **kw)
    assert whole.concept.pool.count == 8  # two refreshes (steps 5 and 10) of 4 measured edits
    assert all(np.isfinite(m["train/concept"]) for m in logged)
    assert "train/r1" in logged[0] or any("train/r1" in m for m in logged)
    reads = 5 if lambda_count else 4  # the count read is C's fifth output and pool column
    assert whole.concept.net.head.out_features == reads and whole.concept.pool.y.shape[1] == reads
    if lambda_count:  # every measured edit has a count (log(1 + n) >= 0); the loss logs it
        assert (whole.concept.pool.y[:8, 4] >= 0).all()
        assert all(np.isfinite(m["train/count"]) for m in logged)
    else:
        assert not any("train/count" in m for m in logged)
    _train(tiles, attrs, readings, lots, 12, checkpoint_dir=tmp_path, stop_after=7, **kw)
    resumed = _train(tiles, attrs, readings, lots, 12, checkpoint_dir=tmp_path, **kw)
    for name, module in (("gen", "gen"), ("concept", "concept")):
        a = getattr(whole, module) if name == "gen" else whole.concept.net
        b = getattr(resumed, module) if name == "gen" else resumed.concept.net
        for key, value in a.state_dict().items():
            torch.testing.assert_close(b.state_dict()[key], value, msg=f"{name}.{key}")
    torch.testing.assert_close(resumed.concept.pool.x, whole.concept.pool.x)


def test_the_concept_loss_needs_the_meter_readings(tiny_tiles):
    tiles, attrs, readings, lots, _ = tiny_tiles
    with pytest.raises(ValueError, match="meter readings"):
        train_attgan(params=_params(2), images=tiles, attrs=attrs, progress=False)
    with pytest.raises(ValueError, match="particle counts"):
        _train(tiles, attrs, readings, lots, 2, lambda_count=1.0)


def _eval_trainer(params: ConceptParams, tiny_tiles) -> ConceptTrainer:
    """A concept trainer pre-trained on the tiny tiles, its network in eval mode."""
    tiles, attrs, readings, lots, _ = tiny_tiles
    trainer = ConceptTrainer.calibrated(
        params, torch.device("cpu"), torch.Generator().manual_seed(0), tiles.shape[-1],
        images=tiles, readings=readings, labels=attrs, lots=lots, meter=MeterParams(),
    )  # fmt: skip
    trainer.net.eval()
    return trainer


def test_the_adversarial_perturbation_stays_within_its_radius_and_raises_the_loss(tiny_tiles):
    tiles = tiny_tiles[0]
    eps = 0.05
    params = replace(_params(1, adv_eps=eps).concept, adv_steps=3)
    trainer = _eval_trainer(params, tiny_tiles)
    x, y, aux = to_model(tiles[:8]), trainer.real_y[:8], trainer.real_aux[:8]
    moved = trainer.perturbed(x, y, aux)
    assert (moved - x).abs().max() <= eps + 1e-6 and moved.abs().max() <= 1
    with torch.no_grad():
        assert trainer.loss(trainer.net(moved), y, aux) > trainer.loss(trainer.net(x), y, aux)
    for bad in (
        {"adv_eps": -0.1},
        {"adv_eps": 2.0},
        {"adv_eps": 0.1, "adv_steps": 0},
        {"adv_attributes": ()},
        {"adv_attributes": ("facet",)},
        {"adv_attributes": ("size", "size")},
    ):
        with pytest.raises(ValueError, match="concept.adv_"):
            replace(params, **bad)


def test_attacking_one_read_leaves_the_others_at_the_clean_batch(tiny_tiles):
    """``adv_attributes: [facetness]``: the attack raises the error of the read it aims at, and
    the reads to fit are the clean batch's but for facetness, the perturbed batch's there."""
    tiles = tiny_tiles[0]
    params = replace(_params(1, adv_eps=0.05).concept, adv_attributes=("facetness",))
    trainer = _eval_trainer(
        params, tiny_tiles
    )  # no batch statistics: the clean and the perturbed reads are comparable
    x, y, aux = to_model(tiles[:8]), trainer.real_y[:8], trainer.real_aux[:8]
    facet = params.adv_columns(y.shape[1])
    assert facet.tolist() == [False, False, False, True]
    with torch.no_grad():
        clean = trainer.net(x)
        base = trainer.loss(clean, y, aux, facet)
    gen_state = trainer.rng.get_state()
    moved = trainer.perturbed(x, y, aux, facet)
    trainer.rng.set_state(gen_state)  # the same random start: the same perturbation
    pred = trainer.adversarial(x, y, aux).detach()
    with torch.no_grad():
        assert trainer.loss(trainer.net(moved), y, aux, facet) > base
        torch.testing.assert_close(pred[:, :3], clean[:, :3])
        torch.testing.assert_close(pred[:, 3], trainer.net(moved)[:, 3])
        assert not torch.allclose(pred[:, 3], clean[:, 3])
