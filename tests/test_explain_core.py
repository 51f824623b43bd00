"""Explainers on analytic models with known answers."""

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from semknobs.attributes import ATTRIBUTES
from semknobs.evaluation.fidelity import cosine
from semknobs.explain.counterfactual import OPTIMIZERS, CounterfactualParams, KnobCounterfactual
from semknobs.explain.gradient import KnobGradient, KnobGradientParams, crystal_read, lot_mean
from semknobs.explain.saliency import PixelSaliency, map_similarity, randomized_copy
from semknobs.explain.sensitivity import ForwardSensitivity
from semknobs.models.concept import SYMMETRIES, dihedral

S, K = 8, 4


class LinearG(nn.Module):
    """G(x, a) = x + sum_k a_k W_k with W_k the indicator of the k-th quarter of the rows."""

    def __init__(self):
        super().__init__()
        w = torch.zeros(K, 1, S, S)
        for k in range(K):
            w[k, 0, 2 * k : 2 * k + 2, :] = 1.0
        self.register_buffer("w", w)

    def forward(self, x, a, source):
        return x + torch.einsum("nk,kcij->ncij", a, self.w)


class LinearR(nn.Module):
    """R(x) = sum_ij v_ij x_ij, with v constant on each quarter: d R / d a_k = u_k."""

    def __init__(self, u):
        super().__init__()
        v = torch.zeros(1, S, S)
        for k in range(K):
            v[0, 2 * k : 2 * k + 2, :] = u[k] / (2 * S)
        self.register_buffer("v", v)

    def forward(self, x):
        return (x * self.v).flatten(1).sum(1)


U = torch.tensor([-2.0, 1.0, 3.0, 0.5])


def _problem(n=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, S, S, generator=gen) * 0.2
    a = torch.rand(n, K, generator=gen) * 0.4 + 0.3
    return LinearG(), LinearR(U), x, a


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_eq2_on_linear_models_matches_the_closed_form(optimizer):
    gen, reg, x, a = _problem()
    delta, lam = 1.0, 4.0
    params = CounterfactualParams(
        target="higher",
        delta=delta,
        lam=lam,
        p=2,
        steps=3000,
        lr=0.002,
        restarts=1,
        margin=5.0,
        optimizer=optimizer,
    )
    res = KnobCounterfactual(gen, reg).attribute(x, a, params)
    # RMS image distance = ||W da|| / sqrt(S^2) = sqrt(2S/S^2) ||da||
    c0 = np.sqrt(2 * S / S**2)
    u = U.numpy()
    t_star = delta / np.linalg.norm(u) - c0 * delta**2 / (2 * lam * np.linalg.norm(u) ** 2)
    expected = t_star * u / np.linalg.norm(u)
    np.testing.assert_allclose(res.delta_attrs, np.tile(expected, (len(x), 1)), atol=5e-3)
    # the paper's distance to the input I is the same problem when G(I; A) = I (here A = 0)
    zero = torch.zeros_like(a)
    paper = KnobCounterfactual(gen, reg).attribute(
        x, zero, dataclasses.replace(params, distance_to="input")
    )
    np.testing.assert_allclose(paper.delta_attrs, np.tile(expected, (len(x), 1)), atol=5e-3)
    np.testing.assert_allclose(res.baseline, reg(gen(x, a, a)).numpy(), rtol=1e-6)
    assert np.all(res.achieved > res.baseline)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_lower_goes_the_other_way_and_success_is_reported(optimizer):
    """With p = 1 the distance is an L1 penalty on the knob change (each knob drives its own
    rows), so the optimum moves only the strongest knob (dispersity, u = 3) by z / 3 with
    z = -delta + c delta^2 / (2 lam u): a sparse answer Adam approaches but does not reach."""
    gen, reg, x, a = _problem()
    delta, lam, c = 0.5, 50.0, 2 * S / S**2
    params = CounterfactualParams(
        target="lower", delta=delta, lam=lam, p=1, steps=400, lr=0.01, margin=5.0,
        optimizer=optimizer,
    )  # fmt: skip
    res = KnobCounterfactual(gen, reg).attribute(x, a, params)
    assert np.all(res.achieved < res.baseline) and res.success.all()
    assert np.all(cosine(res.delta_attrs, -U.numpy()) > 0.75)
    z = -delta + c * delta**2 / (2 * lam * 3.0)
    optimum = lam * ((z + delta) / delta) ** 2 + c * abs(z) / 3.0
    objective = lam * ((res.achieved - res.target) / delta) ** 2 + res.distance
    assert np.all(objective >= optimum - 1e-5)
    if optimizer == "bfgs":
        np.testing.assert_allclose(res.delta_attrs, [[0, 0, z / 3.0, 0]] * len(x), atol=1e-4)
        np.testing.assert_allclose(objective, optimum, rtol=1e-3)
    else:  # Adam's dense path: within 60 % of the optimum, measured 22-56 % above it
        assert np.all(objective <= 1.6 * optimum)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_clamping_holds(optimizer):
    gen, reg, x, a = _problem()
    params = CounterfactualParams(
        target="higher", delta=100.0, lam=10.0, steps=200, lr=0.05, margin=0.1,
        optimizer=optimizer,
    )  # fmt: skip
    res = KnobCounterfactual(gen, reg).attribute(x, a, params)
    assert res.new_attrs.min() >= -0.1 - 1e-6 and res.new_attrs.max() <= 1.1 + 1e-6
    assert not res.success.any()  # 100 MPa is out of reach inside the range
    np.testing.assert_allclose(res.new_attrs[:, 2], 1.1, atol=1e-4)  # the strongest knob saturates
    np.testing.assert_allclose(res.new_attrs[:, 0], -0.1, atol=1e-4)


@pytest.mark.parametrize("optimizer", sorted(OPTIMIZERS))
def test_batched_and_one_by_one_agree(optimizer):
    gen, reg, x, a = _problem(n=4, seed=1)
    params = CounterfactualParams(delta=0.3, steps=60, restarts=3, optimizer=optimizer)
    explainer = KnobCounterfactual(gen, reg)
    batch = explainer.attribute(x, a, params, ids=[10, 11, 12, 13])
    for i in range(4):
        one = explainer.attribute(x[i : i + 1], a[i : i + 1], params, ids=[10 + i])
        np.testing.assert_allclose(one.new_attrs[0], batch.new_attrs[i], atol=1e-5)
        assert one.success[0] == batch.success[i]


def test_forward_sensitivity_slopes_are_the_linear_coefficients():
    gen, reg, x, a = _problem()
    sweep = ForwardSensitivity(gen, reg).attribute(x, a, points=5)
    assert sweep.predictions.shape == (5, K, 5)
    np.testing.assert_allclose(sweep.slopes(), np.tile(U.numpy(), (5, 1)), rtol=1e-4)
    _levels, grid = ForwardSensitivity(gen, reg).pair(x, a, "size", "dispersity", points=3)
    assert grid.shape == (3, 3) and grid[0, 2] - grid[0, 0] == pytest.approx(3.0, rel=1e-4)


def test_knob_gradient_is_the_linear_coefficients_and_batches_do_not_matter():
    gen, reg, x, a = _problem(n=5)
    res = KnobGradient(gen, reg).attribute(x, a, batch_size=2)
    np.testing.assert_allclose(res.gradient, np.tile(U.numpy(), (5, 1)), rtol=1e-5)
    np.testing.assert_allclose(res.baseline, reg(gen(x, a, a)).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(res.attrs, a.numpy())


class SumOfSquares(nn.Module):
    def forward(self, x):
        return (x**2).flatten(1).sum(1)


def test_knob_gradient_is_local_on_a_nonlinear_model():
    """R = sum of squares of the knob-driven rows: d R / d a_k = 2 a_k (per unit of W)."""
    gen, _, _, a = _problem(n=3)
    x = torch.zeros(3, 1, S, S)
    plain = KnobGradientParams(smoothing=0.0)
    res = KnobGradient(gen, SumOfSquares(), plain).attribute(x, a)
    np.testing.assert_allclose(res.gradient, 2 * a.numpy() * 2 * S, rtol=1e-5)


def test_smoothed_knob_gradient_on_a_linear_model_is_still_the_coefficients():
    gen, reg, x, a = _problem(n=5)
    smooth = KnobGradientParams(smoothing=0.2, samples=8)
    res = KnobGradient(gen, reg, smooth).attribute(x, a, batch_size=2)
    np.testing.assert_allclose(res.gradient, np.tile(U.numpy(), (5, 1)), rtol=1e-5)
    np.testing.assert_allclose(res.baseline, reg(gen(x, a, a)).numpy(), rtol=1e-6)  # at A itself


def test_smoothed_knob_gradient_of_a_quadratic_is_its_gradient_and_batches_do_not_matter():
    """R = sum of squares: the gradient 2 a_k (per unit of W) is linear in a, so its mean over
    symmetric knob noise (no clamping at these knobs) is the gradient at a itself."""
    gen, _, _, a = _problem(n=4)
    x = torch.zeros(4, 1, S, S)
    smooth = KnobGradientParams(smoothing=0.02, samples=400, seed=3)
    res = KnobGradient(gen, SumOfSquares(), smooth).attribute(x, a, batch_size=4)
    np.testing.assert_allclose(res.gradient, 2 * a.numpy() * 2 * S, rtol=0.01)
    again = KnobGradient(gen, SumOfSquares(), smooth).attribute(x, a, batch_size=3)
    np.testing.assert_allclose(again.gradient, res.gradient, rtol=1e-6)
    plain = KnobGradient(gen, SumOfSquares(), KnobGradientParams(smoothing=0.0))
    assert not np.allclose(plain.attribute(x, a).gradient, res.gradient, rtol=1e-7, atol=0)


class TextureG(LinearG):
    """G(x, a) = x + sum_k a_k (x * W_k): each knob's effect depends on the tile's pixels, so on
    a tile without the square's symmetries every view has its own gradient."""

    def forward(self, x, a, source):
        return x + torch.einsum("nk,kcij,ncij->ncij", a, self.w, x)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_symmetric_knob_gradient_is_the_mean_over_the_eight_views(smoothing):
    _, reg, x, a = _problem(n=3)
    gen = TextureG()
    plain = KnobGradient(gen, reg, KnobGradientParams(smoothing=0.0))
    views = [plain.attribute(dihedral(x, k), a).gradient for k in range(SYMMETRIES)]
    views = np.mean(views, axis=0)
    assert not np.allclose(views, plain.attribute(x, a).gradient, rtol=1e-3)  # views differ
    # linear in a: knob noise changes nothing, and 16 draws see each view twice
    params = KnobGradientParams(smoothing=smoothing, samples=16, symmetric=True)
    res = KnobGradient(gen, reg, params).attribute(x, a, batch_size=2)
    np.testing.assert_allclose(res.gradient, views, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(res.baseline, reg(gen(x, a, a)).numpy(), rtol=1e-6)


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_the_knob_gradient_reads_only_the_edit_inside_keep(smoothing):
    gen, reg, x, a = _problem(n=3)
    params = KnobGradientParams(smoothing=smoothing, samples=4)
    explainer = KnobGradient(gen, reg, params)
    whole = explainer.attribute(x, a, batch_size=2)
    ones = explainer.attribute(x, a, batch_size=2, keep=torch.ones_like(x))
    np.testing.assert_allclose(ones.gradient, whole.gradient, rtol=1e-6)
    none = explainer.attribute(x, a, keep=torch.zeros_like(x))
    np.testing.assert_allclose(none.gradient, 0.0, atol=1e-7)
    np.testing.assert_allclose(none.baseline, whole.baseline, rtol=1e-6)
    # knob k edits rows 2k, 2k + 1 only: keeping the first four rows keeps knobs 0 and 1
    half = torch.zeros_like(x)
    half[..., :4, :] = 1.0
    got = explainer.attribute(x, a, batch_size=2, keep=half).gradient
    np.testing.assert_allclose(got, np.tile([U[0], U[1], 0.0, 0.0], (3, 1)), atol=1e-6)


def test_keep_turns_with_the_views_of_a_symmetric_gradient():
    _, reg, x, a = _problem(n=2)
    gen = TextureG()
    keep = torch.zeros_like(x)
    keep[..., :, :3] = 1.0  # the left columns: not symmetric under the square's turns
    plain = KnobGradient(gen, reg, KnobGradientParams(smoothing=0.0))
    views = [
        plain.attribute(dihedral(x, k), a, keep=dihedral(keep, k)).gradient
        for k in range(SYMMETRIES)
    ]
    params = KnobGradientParams(smoothing=0.0, symmetric=True)
    got = KnobGradient(gen, reg, params).attribute(x, a, keep=keep).gradient
    np.testing.assert_allclose(got, np.mean(views, axis=0), rtol=1e-5, atol=1e-7)


def test_a_keep_of_the_wrong_shape_is_refused():
    gen, reg, x, a = _problem(n=3)
    with pytest.raises(ValueError, match=r"keep has shape \(2, 1, 8, 8\)"):
        KnobGradient(gen, reg).attribute(x, a, keep=torch.ones(2, 1, S, S))


def test_crystal_read_scores_a_copy_one_a_blank_zero_and_a_negation_minus_one():
    whole = np.random.default_rng(0).normal(size=(20, 4))
    for crystal, sign, share in ((whole, 1.0, 1.0), (0 * whole, 0.0, 0.0), (-whole, 0.0, -1.0)):
        out = crystal_read(whole, crystal)
        for a in ATTRIBUTES:
            assert out[f"knob_gradient_crystal/whole/sign_{a}"] == sign
            assert out[f"knob_gradient_crystal/whole/share_{a}"] == pytest.approx(share)
    half = crystal_read(whole, 0.5 * whole)
    assert half["knob_gradient_crystal/whole/share_size"] == pytest.approx(0.5)
    assert np.isnan(crystal_read(0 * whole, whole)["knob_gradient_crystal/whole/share_size"])
    with pytest.raises(ValueError, match="crystal_read"):
        crystal_read(whole, whole[:, :3])


def test_lot_mean_is_the_gradient_of_the_lots_mean_prediction():
    """Tiles with their own gradients (TextureG); each lot's knob gradient is d/dA of the mean of
    its tiles' predictions at the lot's shared knobs, whatever order the tiles come in."""
    _, reg, x, _ = _problem(n=5)
    gen = TextureG()
    lots = np.array(["b", "a", "b", "a", "b"])
    shared = {"a": torch.tensor([0.2, 0.4, 0.6, 0.8]), "b": torch.tensor([0.7, 0.5, 0.3, 0.1])}
    a = torch.stack([shared[lot] for lot in lots])
    per_tile = KnobGradient(gen, reg, KnobGradientParams(smoothing=0.0)).attribute(x, a).gradient
    assert not np.allclose(per_tile[0], per_tile[2], rtol=1e-3)  # tiles of a lot differ
    pooled = lot_mean(per_tile, lots)
    for lot, knobs in shared.items():
        rows = np.flatnonzero(lots == lot)
        var = knobs.clone().requires_grad_(True)
        tiles = x[rows]
        mean = reg(gen(tiles, var.expand(len(rows), K), knobs.expand(len(rows), K))).mean()
        (want,) = torch.autograd.grad(mean, var)
        for r in rows:
            np.testing.assert_allclose(pooled[r], want.numpy(), rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="lot_mean"):
        lot_mean(per_tile, lots[:3])


@pytest.mark.parametrize(
    "bad", [{"smoothing": -0.1}, {"smoothing": 2.0}, {"samples": 0}, {"samples": 10**6}]
)
def test_bad_knob_gradient_params_are_refused(bad):
    with pytest.raises(ValueError, match="knob_gradient"):
        KnobGradientParams(**bad)


class Probe(nn.Module):
    """y = mean(M * feat(x)), feat an identity 1x1 conv: GradCAM = relu(mean(M)/P * x)."""

    def __init__(self, mask):
        super().__init__()
        self.feat = nn.Conv2d(1, 1, 1, bias=False)
        nn.init.ones_(self.feat.weight)
        self.register_buffer("mask", mask)

    def forward(self, x):
        return (self.feat(x) * self.mask).flatten(1).mean(1)


def test_gradcam_on_a_model_with_a_known_map():
    mask = torch.zeros(1, 1, S, S)
    mask[..., :4, :] = 1.0
    x = torch.randn(3, 1, S, S)
    probe = Probe(mask)
    maps = PixelSaliency(probe, probe.feat).gradcam(x)
    alpha = mask.mean().item() / S**2
    np.testing.assert_allclose(maps, np.maximum(alpha * x[:, 0].numpy(), 0), rtol=1e-5, atol=1e-7)


def test_randomised_weights_change_the_maps():
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(4, 1),
    )
    x = torch.randn(4, 1, S, S)
    same = PixelSaliency(net, net[2]).gradcam(x)
    assert map_similarity(same, PixelSaliency(net, net[2]).gradcam(x)) == pytest.approx(1.0)
    rand = randomized_copy(net, seed=1)
    other = PixelSaliency(rand, rand[2]).gradcam(x)
    assert map_similarity(same, other) < 0.9


class _EncodedG(LinearG):
    """LinearG with an encoder/decoder split, counting encoder calls."""

    encodes = 0

    def encode(self, x):
        self.encodes += 1
        return [x]

    def decode(self, feats, a, source):
        return super().forward(feats[0], a, source)

    def forward(self, x, a, source):
        return self.decode(self.encode(x), a, source)


def test_the_encoder_runs_once_and_restarts_are_rows():
    gen, reg, x, a = _problem(n=3)
    enc = _EncodedG()
    params = CounterfactualParams(delta=0.3, steps=20, restarts=4)
    res = KnobCounterfactual(enc, reg).attribute(x, a, params)
    plain = KnobCounterfactual(gen, reg).attribute(x, a, params)
    assert enc.encodes == 1
    np.testing.assert_allclose(res.new_attrs, plain.new_attrs, atol=1e-6)


def test_a_passed_deadline_stops_the_search():
    import time

    from semknobs.explain.counterfactual import SearchDeadline

    gen, reg, x, a = _problem()
    params = CounterfactualParams(steps=10_000)
    with pytest.raises(SearchDeadline, match="deadline"):
        KnobCounterfactual(gen, reg).attribute(x, a, params, deadline=time.monotonic() - 1)
