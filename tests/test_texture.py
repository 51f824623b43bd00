"""Texture statistics and their lot-level targets (semknobs.train.texture): known answers."""

import copy

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage as ndi

from semknobs.pixels import model_to_uint8, to_model
from semknobs.train.attgan import AttGANTrainer, train_attgan
from semknobs.train.attgan_params import AttGANTrainParams
from semknobs.train.texture import (
    REGION_STATS,
    REGIONS,
    RING_PX,
    TextureTarget,
    _blur,
    outside_background,
    region_agreement,
    region_list,
    region_masks,
    region_stats,
    soft_regions,
    stat_names,
    texture_agreement,
    texture_stats,
    tile_stats,
)
from tests.test_attgan import TINY, _data


def test_the_blur_is_the_separable_binomial_filter_reflected_at_the_border():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 16, 16)
    kernel = torch.tensor([1.0, 4.0, 6.0, 4.0, 1.0]) / 16
    want = F.conv2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), kernel.outer(kernel)[None, None])
    torch.testing.assert_close(_blur(x), want)


def test_a_flat_tile_has_its_grey_level_and_no_texture():
    x = torch.full((2, 1, 32, 32), 0.25)
    stats = texture_stats(x, levels=3)
    assert stats.shape == (2, len(stat_names(3))) == (2, 5)
    torch.testing.assert_close(stats[:, 0], torch.full((2,), 0.25))
    torch.testing.assert_close(stats[:, 1:], torch.zeros(2, 4), atol=1e-6, rtol=0)


def test_a_one_pixel_checkerboard_lives_in_the_finest_band_only():
    # the binomial blur averages a period-2 pattern to exactly 0: all of it is the 1-px band
    yy, xx = np.indices((32, 32))
    x = torch.from_numpy(np.where((yy + xx) % 2, 0.5, -0.5)).float()[None, None]
    stats = texture_stats(x, levels=3)[0]
    assert stats[0] == pytest.approx(0.0, abs=1e-6)  # mean
    assert stats[2] == pytest.approx(0.5, abs=1e-5)  # band 1 px
    assert stats[3:].abs().max() < 1e-5  # nothing coarser


def test_coarser_blobs_move_energy_to_coarser_bands():
    rng = np.random.default_rng(0)
    noise = torch.from_numpy(rng.standard_normal((1, 1, 64, 64))).float().clamp(-1, 1)
    centroids = []
    for factor in (1, 2, 4, 8):  # blobs of 1, 2, 4, 8 px
        x = torch.nn.functional.interpolate(
            noise[..., : 64 // factor, : 64 // factor], scale_factor=factor
        )
        bands = texture_stats(x, 4)[0, 2:]
        centroids.append(float((bands * torch.arange(4)).sum() / bands.sum()))
    assert centroids == sorted(centroids) and centroids[-1] - centroids[0] > 1


def _square(side=32, half=8, inside=0.6, outside=-0.6):
    yy, xx = np.indices((side, side))
    lo, hi = side // 2 - half, side // 2 + half
    box = (yy >= lo) & (yy < hi) & (xx >= lo) & (xx < hi)
    return torch.from_numpy(np.where(box, inside, outside)).float()[None, None], box


def test_the_regions_partition_the_tile_around_a_bright_crystal():
    x, box = _square()
    masks = region_masks(x)[0].numpy().astype(bool)
    assert masks.shape == (len(REGIONS), 32, 32)
    assert (masks.sum(axis=0) == 1).all()  # a partition
    interior, outline, background = masks
    # Otsu of the smoothed step puts the crystal's edge within a pixel of the square's
    assert interior[ndi.binary_erosion(box, iterations=RING_PX + 1)].all()
    assert box[interior].all()
    assert outline[box & ~ndi.binary_erosion(box)].all()  # the square's edge is outline
    assert background[~ndi.binary_dilation(box, iterations=RING_PX + 2)].all()
    assert not (background & box).any()


def test_soft_regions_sum_to_one_and_outside_background_is_the_crystal_and_its_ring():
    x, box = _square()
    soft = soft_regions(x)
    assert soft.dtype == torch.float64 and soft.shape == (1, len(REGIONS), 32, 32)
    torch.testing.assert_close(soft.sum(dim=1), torch.ones(1, 32, 32, dtype=torch.float64))
    keep = outside_background(x)[0, 0].numpy()
    assert keep.shape == (32, 32) and keep.min() >= 0 and keep.max() <= 1
    assert (keep[box] > 0.95).all()  # the crystal kept (the ring is thinnest at its corners)
    assert (keep[ndi.binary_erosion(box, iterations=2)] > 0.999).all()
    assert (keep[~ndi.binary_dilation(box, iterations=RING_PX + 3)] < 0.01).all()
    assert (outside_background(torch.zeros(2, 1, 8, 8)) == 0).all()  # a blank tile: background


def test_a_blank_tile_is_all_background_with_finite_statistics():
    x = torch.zeros(2, 1, 32, 32)
    assert (region_masks(x)[:, 2] == 1).all()
    stats = region_stats(x)
    assert stats.shape == (2, len(REGIONS) * len(REGION_STATS)) and torch.isfinite(stats).all()
    assert stats.abs().max() == 0


def test_region_statistics_read_each_region_where_it_is():
    x, _ = _square()
    stats = dict(zip(stat_names(3, regions=True), tile_stats(x, 3, regions=True)[0].tolist()))
    assert len(stats) == len(stat_names(3)) + 15
    assert stats["interior_grey"] == pytest.approx(0.6)
    assert stats["background_grey"] == pytest.approx(-0.6)
    # a step edge: the 1 px band lives at the outline (the 5-tap blur reaches 2 px, so a little
    # spills past the ring's corners and into the interior's edge)
    assert stats["outline_abs_band_1px"] > 0.05
    assert stats["interior_abs_band_1px"] < 0.2 * stats["outline_abs_band_1px"]
    assert stats["background_abs_band_1px"] < 0.01 * stats["outline_abs_band_1px"]
    # the edit of the interior moves the interior statistics only
    y = x.clone()
    y[..., 14:18, 14:18] -= 0.5  # a dark dot in the middle of the crystal
    moved = tile_stats(y, 3, regions=True)[0] - tile_stats(x, 3, regions=True)[0]
    moved = dict(zip(stat_names(3, regions=True), moved.tolist()))
    assert moved["interior_grey"] < 0 and moved["interior_abs_band_1px"] > 0
    assert moved["outline_grey"] == 0 and moved["background_grey"] == 0


def test_named_regions_are_those_regions_columns_of_all_three():
    x, _ = _square()
    y = x.clone()
    y[..., :4, :4] -= 0.3  # a darker background corner
    both = torch.cat([x, y])
    every = dict(zip(stat_names(3, regions=True), tile_stats(both, 3, regions=True).T))
    names = stat_names(3, regions=["background", "interior"])
    assert names[len(stat_names(3)) :] == [f"{r}_{s}" for r in REGIONS[::2] for s in REGION_STATS]
    some = tile_stats(both, 3, regions=("background", "interior"))
    torch.testing.assert_close(some, torch.stack([every[n] for n in names], dim=1))
    assert region_list(False) == region_list([]) == () and region_list(True) == REGIONS


@pytest.mark.parametrize("regions", [["ring"], ["background", "background"]])
def test_unknown_or_repeated_regions_are_refused(regions):
    with pytest.raises(ValueError, match="texture_regions must be .* got"):
        AttGANTrainParams(texture_regions=regions)


def test_the_region_loss_adds_its_own_mean_to_the_whole_tile_term():
    images, labels, lots = _planted_lots()
    plain = TextureTarget.fit(images, labels, lots, levels=3)
    both = TextureTarget.fit(images, labels, lots, levels=3, regions=True)
    torch.testing.assert_close(both.weight[:5], plain.weight)  # the whole-tile rows unchanged
    assert both.names == stat_names(3, regions=True)
    torch.manual_seed(0)
    ref, edit = torch.rand(4, 1, 32, 32) - 0.5, torch.rand(4, 1, 32, 32) - 0.5
    change = torch.rand(4, 4) - 0.5
    miss = ((both.stats(edit) - both.stats(ref)) / both.scale - both.wanted(change)).pow(2)
    assert float(both.loss(edit, ref, change)) == pytest.approx(
        float(miss[:, :5].mean() + miss[:, 5:].mean()), rel=1e-5
    )
    assert float(plain.loss(edit, ref, change)) == pytest.approx(
        float(miss[:, :5].mean()), rel=1e-5
    )


def _planted_lots(n_lots=8, per_lot=6, seed=0):
    """Flat tiles whose grey level is 0.4 * size + 0.1 * porosity - 0.3 (+ per-tile noise):
    the only statistic that changes across lots is the mean."""
    rng = np.random.default_rng(seed)
    labels = rng.random((n_lots, 4))
    lots = np.repeat([f"L{i}" for i in range(n_lots)], per_lot)
    per_tile = np.repeat(labels, per_lot, axis=0)
    level = 0.4 * per_tile[:, 0] + 0.1 * per_tile[:, 1] - 0.3
    level = level + rng.normal(0, 0.002, len(level))
    images = model_to_uint8(np.broadcast_to(level[:, None, None], (len(level), 32, 32)).copy())
    return torch.from_numpy(images), torch.from_numpy(per_tile).float(), lots


def test_the_fit_recovers_how_a_statistic_changes_across_lots():
    images, labels, lots = _planted_lots()
    target = TextureTarget.fit(images, labels, lots, levels=3)
    mean_row = target.weight[0].numpy()
    np.testing.assert_allclose(mean_row, [0.4, 0.1, 0.0, 0.0], atol=0.01)  # uint8 rounding
    assert target.weight[1:].abs().max() < 1e-3  # flat tiles: no spread, no bands


def test_the_loss_is_zero_for_a_real_change_and_not_for_its_negation():
    images, labels, lots = _planted_lots()
    target = TextureTarget.fit(images, labels, lots, levels=3)
    ref = torch.full((4, 1, 32, 32), 0.1)
    change = torch.zeros(4, 4)
    change[:, 0] = 0.25  # a quarter knob of size: the mean should rise by 0.4 * 0.25
    moved = target.weight[0, 0] * 0.25
    right = target.loss(ref + moved, ref, change)
    wrong = target.loss(ref - moved, ref, change)
    assert float(right) < 1e-8
    expected = (2 * float(moved) / float(target.scale[0])) ** 2 / len(stat_names(3))
    assert float(wrong) == pytest.approx(expected, rel=1e-4)


def test_too_few_lots_for_the_fit_are_refused():
    images, labels, lots = _planted_lots(n_lots=5)
    with pytest.raises(ValueError, match="5 training lots"):
        TextureTarget.fit(images, labels, lots, levels=3)


@pytest.mark.parametrize("regions", [False, True, ("background",)])
def test_the_texture_term_of_the_generator_is_the_documented_one(regions):
    """The logged term is |(T(G(x, b)) - T(G(x, a))) / s - W (b - a)|^2 (recomputed from a copy
    of the generator and the step's own targets), and training on one batch lowers it."""
    params = AttGANTrainParams(
        model=TINY, batch_size=8, seed=1, lambda_concept=0.0, lambda_texture=5.0, texture_levels=3,
        texture_regions=regions,
    )  # fmt: skip
    trainer = AttGANTrainer(params, torch.device("cpu"))
    images, attrs = _data(48)
    lots = np.repeat([f"L{i}" for i in range(8)], 6)
    attrs = attrs[::6].repeat_interleave(6, dim=0)  # one label vector per lot
    trainer.attach_texture(images, attrs, lots)
    assert trainer.texture.regions == region_list(regions)
    x, a = to_model(images[:8]), attrs[:8]
    gen = copy.deepcopy(trainer.gen).train()  # batch statistics, as in the step
    probe = copy.deepcopy(trainer.rng)
    trainer.targets(a)  # the critic's draw comes first in the step
    b = trainer.targets(a)
    trainer.rng = probe
    with torch.no_grad():
        feats = gen.encode(x)
        fake, rec = gen.decode(feats, b, a), gen.decode(feats, a, a)
        want = trainer.texture.loss(fake, rec, b - a)
    logged = trainer.train_step(x, a)
    assert logged["train/texture"] == pytest.approx(float(want), rel=1e-4)
    for _ in range(30):
        last = trainer.train_step(x, a)
    assert last["train/texture"] < logged["train/texture"]


def test_the_texture_loss_without_lots_is_refused():
    params = AttGANTrainParams(
        model=TINY, batch_size=4, steps=1, lambda_concept=0.0, lambda_texture=1.0
    )
    images, attrs = _data(4)
    with pytest.raises(ValueError, match="lambda_texture"):
        train_attgan(params=params, images=images, attrs=attrs, progress=False)


class _FlatEditor(torch.nn.Module):
    """An editor that paints a flat tile at ``sign * (PLANT @ a)`` (ignores the image)."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, x: torch.Tensor, a: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        level = self.sign * (a @ PLANT) - 0.3
        return level[:, None, None, None].expand_as(x)


PLANT = torch.tensor([0.3, 0.1, -0.1, 0.2])


@pytest.mark.parametrize(
    ("sign", "miss", "cosine"), [(1.0, 0.0, 1.0), (-1.0, 2.0, -1.0), (0.0, 1.0, 0.0)]
)
def test_agreement_scores_a_real_editor_its_negation_and_a_constant(sign, miss, cosine):
    rng = np.random.default_rng(1)
    labels = rng.random((10, 4)).astype(np.float32)
    lots = np.repeat([f"L{i}" for i in range(10)], 4)
    per_tile = torch.from_numpy(np.repeat(labels, 4, axis=0))
    level = per_tile @ PLANT - 0.3  # real lots: flat tiles (stored as uint8: ~1 % slope error)
    images = torch.from_numpy(model_to_uint8(level[:, None, None].expand(-1, 32, 32).numpy()))
    target = TextureTarget.fit(images, per_tile, lots, levels=2)
    x = torch.zeros(8, 1, 32, 32)
    metrics, table = texture_agreement(_FlatEditor(sign), x, per_tile[:8], target)
    for a in ("size", "porosity", "dispersity", "facetness"):
        assert metrics[f"texture/miss_{a}"] == pytest.approx(miss, abs=0.1)
        assert metrics[f"texture/cosine_{a}"] == pytest.approx(cosine, abs=0.05)
    assert len(table) == 4 * len(stat_names(2))


@pytest.mark.parametrize(("sign", "miss"), [(1.0, 0.0), (-1.0, 2.0), (0.0, 1.0)])
def test_region_agreement_scores_only_the_regions(sign, miss):
    """Flat tiles are all background: the background's grey level carries the lots' change, the
    crystal regions none, and the region miss is that of a real editor, its negation, a constant."""
    rng = np.random.default_rng(1)
    labels = rng.random((10, 4)).astype(np.float32)
    lots = np.repeat([f"L{i}" for i in range(10)], 4)
    per_tile = torch.from_numpy(np.repeat(labels, 4, axis=0))
    level = per_tile @ PLANT - 0.3
    images = torch.from_numpy(model_to_uint8(level[:, None, None].expand(-1, 32, 32).numpy()))
    target = TextureTarget.fit(images, per_tile, lots, levels=2, regions=True)
    x = torch.zeros(8, 1, 32, 32)
    metrics, table = region_agreement(_FlatEditor(sign), x, per_tile[:8], target)
    assert set(table["statistic"]) == {f"{r}_{s}" for r in REGIONS for s in REGION_STATS}
    for a in ("size", "porosity", "dispersity", "facetness"):
        assert metrics[f"texture/region_miss_{a}"] == pytest.approx(miss, abs=0.1)
        grey = table[(table["knob"] == a) & (table["statistic"] == "background_grey")]
        assert float(grey["edit"].iloc[0]) == pytest.approx(
            sign * float(grey["lots"].iloc[0]), rel=0.05, abs=1e-3
        )
