import copy
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from semknobs.models.attgan import AttGANConfig, Discriminator, Generator, gradient_penalty
from semknobs.models.concept import ConceptConfig, ConceptNet
from semknobs.models.regressor import PeakStressRegressor, RegressorConfig
from semknobs.pixels import to_model
from semknobs.train.attgan import AttGANTrainer, train_attgan
from semknobs.train.attgan_params import AttGANTrainParams

CONFIGS = {
    "default": AttGANConfig(),
    "tiny32": AttGANConfig(
        img_size=32,
        enc_layers=3,
        dec_layers=3,
        dis_layers=3,
        enc_dim=8,
        dec_dim=8,
        dis_dim=8,
        dis_fc_dim=16,
    ),
    "no-shortcut-no-inject": AttGANConfig(shortcut_layers=0, inject_layers=0, enc_dim=8, dec_dim=8),
    "deep-shortcuts": AttGANConfig(
        img_size=128,
        enc_layers=5,
        dec_layers=5,
        dis_layers=5,
        shortcut_layers=3,
        inject_layers=2,
        enc_dim=8,
        dec_dim=8,
        dis_dim=8,
    ),
    "noise": AttGANConfig(noise=True, enc_dim=8, dec_dim=8),
}

TINY = CONFIGS["tiny32"]
NO_CONCEPT = {"lambda_concept": 0.0, "lambda_texture": 0.0}  # no meter readings, no lots needed


@pytest.mark.parametrize("name", CONFIGS)
def test_shapes(name):
    cfg = CONFIGS[name]
    gen, dis = Generator(cfg), Discriminator(cfg)
    x = torch.rand(3, 1, cfg.img_size, cfg.img_size) * 2 - 1
    a = torch.rand(3, cfg.n_attrs)
    feats = gen.encode(x)
    assert feats[-1].shape[-1] == cfg.img_size // 2**cfg.enc_layers
    y = gen(x, a, a)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    score, logits = dis(y)
    assert score.shape == (3,) and logits.shape == (3, cfg.n_attrs)
    assert torch.isfinite(gradient_penalty(dis, x, y.detach()))


def test_attributes_change_the_output():
    torch.manual_seed(0)
    gen = Generator(TINY).eval()
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    a = torch.full((2, 4), 0.5)
    low, high = gen(x, torch.zeros(2, 4), a), gen(x, torch.ones(2, 4), a)
    assert (low - high).abs().mean() > 1e-3


def test_change_conditioning_sees_only_the_change():
    """condition "change" (STGAN): the decoder sees b - a, so the reconstruction (b = a) is the
    same whatever a tile's attributes, and equal changes from different starts are equal edits;
    the absolute design reads b itself."""
    torch.manual_seed(0)
    gen = Generator(dataclasses.replace(TINY, condition="change")).eval()
    _perturb_film(gen)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    lo, hi = torch.full((2, 4), 0.2), torch.full((2, 4), 0.7)
    step = torch.tensor([[0.1, 0.0, -0.2, 0.0]]).expand(2, -1)
    torch.testing.assert_close(gen(x, lo, lo), gen(x, hi, hi))
    torch.testing.assert_close(gen(x, lo + step, lo), gen(x, hi + step, hi))
    assert (gen(x, lo + step, lo) - gen(x, lo, lo)).abs().mean() > 1e-4
    absolute = Generator(TINY).eval()
    _perturb_film(absolute)
    assert (absolute(x, lo, lo) - absolute(x, hi, hi)).abs().mean() > 1e-4
    with pytest.raises(ValueError, match="differ"):
        gen(x, lo, lo[:1])


def test_both_conditioning_sees_the_target_and_the_change():
    """condition "both": the decoder sees b and b - a side by side, so an edit depends on the
    level it goes to (unlike "change": reconstructions at different levels differ) and on how
    far it goes (unlike "absolute": the same target from two starts differs)."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, condition="both")
    assert cfg.edits_from_source and cfg.cond_dim == 2 * cfg.n_attrs
    gen = Generator(cfg).eval()
    _perturb_film(gen)
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    lo, hi = torch.full((2, 4), 0.2), torch.full((2, 4), 0.7)
    torch.testing.assert_close(gen.conditioning(hi, lo), torch.cat([hi * 2 - 1, hi - lo], dim=1))
    assert (gen(x, lo, lo) - gen(x, hi, hi)).abs().mean() > 1e-4
    assert (gen(x, hi, lo) - gen(x, hi, hi)).abs().mean() > 1e-4
    absolute = Generator(TINY).eval()
    torch.testing.assert_close(absolute(x, hi, lo), absolute(x, hi, hi))


def test_noise_adds_structure_only_for_a_change():
    """``noise``: a fixed map per decoder level, scaled linearly by b - a. It starts as the
    design without it, never touches a reconstruction, is the same map in every generator built
    with the design (a deterministic edit), and once its scales are trained an edit carries it."""
    torch.manual_seed(0)
    cfg = dataclasses.replace(TINY, noise=True)
    assert cfg.edits_from_source and cfg.condition == "absolute"
    gen, plain = Generator(cfg).eval(), Generator(TINY).eval()
    plain.load_state_dict({k: v for k, v in gen.state_dict().items() if "noise" not in k})
    x = torch.rand(2, 1, 32, 32) * 2 - 1
    a, b = torch.full((2, 4), 0.3), torch.full((2, 4), 0.3) + torch.tensor([0.0, 0.4, 0.0, 0.0])
    torch.testing.assert_close(gen(x, b, a), plain(x, b, a))  # zero scales: no noise yet
    with torch.no_grad():
        for scale in gen.noise:
            scale.weight.normal_(0, 1.0)
    torch.testing.assert_close(gen(x, a, a), plain(x, a, a))  # b = a: exactly the same
    assert (gen(x, b, a) - plain(x, b, a)).abs().mean() > 1e-3
    other = Generator(cfg)
    for mine, theirs in zip(gen.noise_maps, other.noise_maps, strict=True):
        torch.testing.assert_close(mine, theirs)
    assert [m.shape[-1] for m in gen.noise_maps] == [8, 16]  # 32 px: decoder levels 8 and 16


def _perturb_film(gen: Generator) -> None:
    """FiLM starts at the identity; give it weights so that it reads the conditioning."""
    with torch.no_grad():
        for film in gen.film:
            film.weight.normal_(0, 0.5)


def test_bad_config_is_refused():
    with pytest.raises(ValueError, match="divisible"):
        AttGANConfig(img_size=60)
    with pytest.raises(ValueError, match="condition 'relative'"):
        AttGANConfig(condition="relative")
    with pytest.raises(ValueError, match="shortcut_layers"):
        AttGANConfig(shortcut_layers=4)


def _data(n=16, size=32, seed=0):
    rng = np.random.default_rng(seed)
    images = torch.from_numpy(rng.integers(0, 256, (n, size, size), dtype=np.uint8))
    return images, torch.from_numpy(rng.random((n, 4), dtype=np.float32))


def test_one_training_step_on_a_fixed_batch_lowers_the_reconstruction_loss():
    params = AttGANTrainParams(model=TINY, batch_size=8, n_critic=1, lr=1e-3, seed=1, **NO_CONCEPT)
    trainer = AttGANTrainer(params, torch.device("cpu"))
    images, attrs = _data(8)
    x = images.float().div(127.5).sub(1).unsqueeze(1)

    def rec_loss() -> float:
        trainer.gen.train()  # batch statistics, as in the step
        with torch.no_grad():
            return float((trainer.gen(x, attrs, attrs) - x).abs().mean())

    before = rec_loss()
    trainer.train_step(x, attrs)
    assert rec_loss() < before


def _weights(trainer):
    models = [("g", trainer.gen), ("d", trainer.dis)]
    if trainer.gen_ema is not None:
        models.append(("ema", trainer.gen_ema))
    return {f"{n}.{k}": v.clone() for n, m in models for k, v in m.state_dict().items()}


@pytest.mark.parametrize("projection", [False, True])
def test_checkpoint_round_trip(tmp_path, projection):
    model = dataclasses.replace(TINY, dis_projection=projection)
    params = AttGANTrainParams(model=model, batch_size=4, steps=3, n_critic=1, seed=2, **NO_CONCEPT)
    images, attrs = _data()
    trainer = train_attgan(
        params=params, images=images, attrs=attrs, checkpoint_dir=tmp_path / "ck", progress=False
    )
    fresh = AttGANTrainer(params, torch.device("cpu"))
    assert fresh.try_resume(tmp_path / "ck", params.fingerprint())
    assert fresh.step == 3
    a, b = _weights(trainer), _weights(fresh)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert torch.equal(trainer.rng.get_state(), fresh.rng.get_state())
    # a checkpoint of other params is not resumed
    other = dataclasses.replace(params, lr=1e-3)
    assert not AttGANTrainer(other, torch.device("cpu")).try_resume(
        tmp_path / "ck", other.fingerprint()
    )


@pytest.mark.parametrize(("ema_decay", "lr_decay_share"), [(0.0, 0.0), (0.9, 0.0), (0.0, 0.5)])
def test_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, ema_decay, lr_decay_share):
    params = AttGANTrainParams(
        model=TINY, batch_size=4, steps=6, n_critic=2, checkpoint_every=2, seed=3,
        critic="wgan-gp", ema_decay=ema_decay, lr_decay_share=lr_decay_share, **NO_CONCEPT,
    )  # fmt: skip
    images, attrs = _data()
    straight = train_attgan(params=params, images=images, attrs=attrs, progress=False)
    ck = tmp_path / "ck"
    train_attgan(
        params=params, images=images, attrs=attrs, checkpoint_dir=ck, stop_after=4, progress=False
    )
    resumed = train_attgan(
        params=params, images=images, attrs=attrs, checkpoint_dir=ck, progress=False
    )
    assert resumed.step == 6
    a, b = _weights(straight), _weights(resumed)
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_the_weight_average_follows_the_documented_update():
    """ema <- d ema + (1 - d) gen after each step, d = min(decay, (1 + t) / (10 + t)); batch-norm
    statistics averaged too; the average is the generator the trainer hands out."""
    params = AttGANTrainParams(model=TINY, batch_size=4, seed=1, ema_decay=0.9, **NO_CONCEPT)
    trainer = AttGANTrainer(params, torch.device("cpu"))
    assert trainer.generator is trainer.gen_ema
    images, attrs = _data(4)
    x = to_model(images)
    ema = {k: v.clone() for k, v in trainer.gen_ema.state_dict().items()}
    for step in (1, 2):
        trainer.train_step(x, attrs)
        d = min(0.9, (1 + step) / (10 + step))
        live = trainer.gen.state_dict()
        for k, v in trainer.gen_ema.state_dict().items():
            if v.dtype.is_floating_point:
                ema[k] = d * ema[k] + (1 - d) * live[k]
                torch.testing.assert_close(v, ema[k], rtol=1e-6, atol=1e-7)
    assert not any(p.requires_grad for p in trainer.gen_ema.parameters())
    plain = AttGANTrainer(dataclasses.replace(params, ema_decay=0.0), torch.device("cpu"))
    assert plain.gen_ema is None and plain.generator is plain.gen


def _regressor(size: int) -> PeakStressRegressor:
    torch.manual_seed(3)
    return PeakStressRegressor(RegressorConfig(preset="tiny", img_size=size), 45.0, 8.0).eval()


def test_the_regressor_feature_loss_is_the_documented_one():
    """The logged term is |(F(G(x, a)) - F(x)) / s|^2, s the features' spread over the real
    tiles, and the logged shift R(G(x, a)) - R(x): recomputed from a copy of the generator."""
    params = AttGANTrainParams(model=TINY, batch_size=8, seed=1, lambda_regressor=5.0, **NO_CONCEPT)
    trainer = AttGANTrainer(params, torch.device("cpu"))
    images, attrs = _data(16)
    reg = _regressor(32)
    trainer.attach_regressor(reg, images)
    with torch.no_grad():
        spread = reg.features(to_model(images)).std(dim=0)
    torch.testing.assert_close(trainer.feature_scale, spread.clamp_min(0.1 * spread.mean()))
    x, a = to_model(images[:8]), attrs[:8]
    gen = copy.deepcopy(trainer.gen).train()  # batch statistics, as in the step
    with torch.no_grad():
        rec = gen.decode(gen.encode(x), a, a)
        want = ((reg.features(rec) - reg.features(x)) / trainer.feature_scale).pow(2).mean()
        shift = (reg.predict_mpa(rec) - reg.predict_mpa(x)).mean()
    logged = trainer.train_step(x, a)
    assert logged["train/regressor_features"] == pytest.approx(float(want), rel=1e-4)
    assert logged["train/recon_shift_mpa"] == pytest.approx(float(shift), rel=1e-4, abs=1e-4)
    assert not any(p.requires_grad for p in reg.parameters())  # frozen: a target, not trained
    for _ in range(20):
        last = trainer.train_step(x, a)
    assert last["train/regressor_features"] < 0.5 * logged["train/regressor_features"]


def test_the_regressor_loss_without_a_regressor_is_refused():
    params = AttGANTrainParams(
        model=TINY, batch_size=4, steps=1, lambda_regressor=1.0, **NO_CONCEPT
    )
    images, attrs = _data(4)
    with pytest.raises(ValueError, match="lambda_regressor"):
        train_attgan(params=params, images=images, attrs=attrs, progress=False)


@pytest.mark.parametrize("rec_grad", [False, True])
def test_the_concept_term_moves_the_reconstruction_only_when_asked(rec_grad):
    """Same value either way; the reconstruction gets a gradient only with concept_rec_grad."""
    params = AttGANTrainParams(model=TINY, concept_rec_grad=rec_grad, **NO_CONCEPT)
    trainer = AttGANTrainer(params, torch.device("cpu"))
    torch.manual_seed(0)
    net = ConceptNet(ConceptConfig(width=4, blocks=3)).eval().requires_grad_(False)
    trainer.concept = SimpleNamespace(net=net, count_slope=None)
    fake, rec = (torch.randn(4, 1, 32, 32, requires_grad=True) for _ in range(2))
    wanted = torch.rand(4, 4)
    with torch.no_grad():
        want = (net(fake) - net(rec) - wanted).pow(2).mean()
    term = trainer.concept_terms(fake, rec, wanted)["concept"]
    torch.testing.assert_close(term, want)
    term.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert (rec.grad is not None and rec.grad.abs().sum() > 0) == rec_grad


def test_the_concept_term_weighs_the_knobs_an_edit_leaves_alone():
    """Known answer: a concept reading that misses by 1 on every knob costs 1 per knob, and
    ``concept_off_weight`` per knob the edit leaves alone (wanted == 0)."""
    trainer = AttGANTrainer(
        AttGANTrainParams(model=TINY, concept_off_weight=4.0, **NO_CONCEPT), torch.device("cpu")
    )
    trainer.concept = SimpleNamespace(net=lambda t: t.flatten(1)[:, :4], count_slope=None)
    rec = torch.zeros(2, 1, 2, 2)
    wanted = torch.tensor([[0.5, 0.0, 0.0, 0.0], [-0.25, 0.1, 0.2, 0.3]])
    fake = (wanted + 1.0).reshape(2, 1, 2, 2)  # misses every knob by exactly 1
    # row 0: 1 turned knob (1) + 3 left alone (4 each); row 1: 4 turned knobs; mean over 8
    term = trainer.concept_terms(fake, rec, wanted)["concept"]
    assert float(term) == pytest.approx((1 + 12 + 4) / 8)
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="concept_off_weight"):
            AttGANTrainParams(concept_off_weight=bad)
    # per-knob column weights multiply each column, on turned knobs and knobs left alone alike
    trainer.params = dataclasses.replace(trainer.params, concept_knob_weight=(2.0, 1.0, 1.0, 3.0))
    # row 0: size turned (1 x 2) + porosity, dispersity alone (4 each) + facetness alone (4 x 3);
    # row 1: 2 + 1 + 1 + 3
    want = (2 + 4 + 4 + 12 + 2 + 1 + 1 + 3) / 8
    assert float(trainer.concept_terms(fake, rec, wanted)["concept"]) == pytest.approx(want)
    # per-knob "stay put" weights multiply concept_off_weight on the knobs left alone only
    trainer.params = dataclasses.replace(
        trainer.params, concept_knob_weight=(1.0,) * 4, concept_off_knob_weight=(3.0, 1.0, 2.0, 1.0)
    )
    # row 0: size turned (1; its 3 does not apply) + porosity 4 + dispersity 4 x 2 + facetness 4;
    # row 1: every knob turned, 1 each
    want = (1 + 4 + 8 + 4 + 4) / 8
    assert float(trainer.concept_terms(fake, rec, wanted)["concept"]) == pytest.approx(want)
    for name in ("concept_knob_weight", "concept_off_knob_weight"):
        for bad in ((1.0, 1.0, 1.0), (1.0, -1.0, 1.0, 1.0), (1.0, 1.0, float("nan"), 1.0)):
            with pytest.raises(ValueError, match=name):
                AttGANTrainParams(**{name: bad})


def test_the_count_term_asks_for_the_count_change_of_real_tiles():
    """Known answer: C's fifth read (the log particle count) must change by (b - a) . w."""
    params = AttGANTrainParams(
        model=TINY, lambda_count=2.0, **{**NO_CONCEPT, "lambda_concept": 1.0}
    )
    trainer = AttGANTrainer(params, torch.device("cpu"))
    slope = torch.tensor([-1.5, 0.0, 0.5, 0.0])
    trainer.concept = SimpleNamespace(net=lambda t: t.flatten(1)[:, :5], count_slope=slope)
    wanted = torch.tensor([[0.5, 0.0, 0.0, 0.0], [0.0, 0.1, 0.2, 0.3]])
    count_wanted = wanted @ slope  # -0.75 and 0.1
    rec = torch.zeros(2, 1, 1, 6)
    fake = torch.zeros(2, 1, 1, 6)
    fake[:, 0, 0, :4] = wanted  # every knob read exactly
    fake[:, 0, 0, 4] = count_wanted + torch.tensor([1.0, -2.0])  # the count misses by 1 and 2
    terms = trainer.concept_terms(fake, rec, wanted)
    assert float(terms["concept"]) == pytest.approx(0.0)
    assert float(terms["count"]) == pytest.approx((1 + 4) / 2)
    trainer.concept.count_slope = None  # no count read: no count term
    assert set(trainer.concept_terms(fake, rec, wanted)) == {"concept"}
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="lambda_count"):
            AttGANTrainParams(lambda_count=bad)
    with pytest.raises(ValueError, match="lambda_concept > 0"):
        AttGANTrainParams(lambda_count=1.0, lambda_concept=0.0)


PROJECTION = dataclasses.replace(TINY, dis_projection=True)


def test_the_projection_critic_scores_a_tile_against_its_attributes():
    """Known answers: without projection the attributes are ignored; with it the score is the
    unconditioned one plus <E (y - 0.5), h>, linear in y and nothing at y = 0.5; the attribute
    head never reads y."""
    torch.manual_seed(0)
    x = torch.rand(3, 1, 32, 32) * 2 - 1
    y = torch.rand(3, 4)
    plain = Discriminator(TINY)
    torch.testing.assert_close(plain(x, y)[0], plain(x)[0], rtol=0, atol=0)
    dis = Discriminator(PROJECTION)
    unconditioned, logits = dis(x)
    score, logits_y = dis(x, y)
    hidden = dis.adversarial[:-1](dis.trunk(x))
    expected = unconditioned + ((y - 0.5) @ dis.projection.weight.T * hidden).sum(dim=1)
    torch.testing.assert_close(score, expected)
    torch.testing.assert_close(logits_y, logits, rtol=0, atol=0)
    torch.testing.assert_close(dis(x, torch.full((3, 4), 0.5))[0], unconditioned)
    y2 = torch.rand(3, 4)
    mid = dis(x, (y + y2) / 2)[0]
    torch.testing.assert_close(score + dis(x, y2)[0], 2 * mid)


def test_only_a_projection_critic_tells_a_tile_with_its_labels_from_it_with_others():
    """Real tiles whose grey level is their first label, against the same tiles with another
    tile's labels: the images are identical, so a critic that ignores the labels cannot tell
    them apart (gap exactly 0); a projection critic learns the pairing."""
    torch.manual_seed(0)
    n = 32
    a = torch.rand(n, 4)
    x = (a[:, :1, None, None] * 2 - 1).expand(n, 1, 32, 32) + 0.05 * torch.randn(n, 1, 32, 32)
    wrong = a.roll(n // 2, dims=0)
    gaps = {}
    for cfg in (TINY, PROJECTION):
        dis = Discriminator(cfg)
        opt = torch.optim.Adam(dis.parameters(), lr=2e-3)
        for _ in range(150):
            real, fake = dis(x, a)[0], dis(x, wrong)[0]
            loss = F.softplus(fake).mean() + F.softplus(-real).mean()
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            gaps[cfg.dis_projection] = float(dis(x, a)[0].mean() - dis(x, wrong)[0].mean())
    assert gaps[False] == 0.0
    assert gaps[True] > 1.0


def test_a_projection_critic_trains_and_is_refused_with_wgan_gp():
    params = AttGANTrainParams(model=PROJECTION, batch_size=4, steps=4, seed=4, **NO_CONCEPT)
    images, attrs = _data()
    trainer = AttGANTrainer(params, torch.device("cpu"))
    before = trainer.dis.projection.weight.clone()
    logged = [
        trainer.train_step(images[:4].float().div(127.5).sub(1).unsqueeze(1), attrs[:4])
        for _ in range(4)  # step 0 also takes the lazy R1 penalty
    ]
    assert all(np.isfinite(v) for row in logged for v in row.values())
    assert "train/r1" in logged[0]
    assert not torch.equal(trainer.dis.projection.weight, before)
    with pytest.raises(ValueError, match="critic: r1"):
        AttGANTrainParams(model=PROJECTION, critic="wgan-gp")


def test_the_learning_rate_falls_linearly_to_zero_over_the_last_share_of_the_steps():
    """lr_decay_share 0.5 of 8 steps: lr for steps 0-3, then lr * (8 - t) / 4 at step t, set on
    both optimizers before each update; 0 leaves the rate alone; a share of 1 is refused."""
    params = AttGANTrainParams(
        model=TINY, batch_size=4, steps=8, lr=0.01, lr_decay_share=0.5, seed=1, **NO_CONCEPT
    )
    trainer = AttGANTrainer(params, torch.device("cpu"))
    images, attrs = _data(4)
    seen = []
    for _ in range(8):
        out = trainer.train_step(to_model(images), attrs)
        seen.append(out["train/lr"])
        assert trainer.opt_d.param_groups[0]["lr"] == out["train/lr"]
    assert seen == pytest.approx([0.01] * 4 + [0.01, 0.0075, 0.005, 0.0025])
    plain = AttGANTrainer(dataclasses.replace(params, lr_decay_share=0.0), torch.device("cpu"))
    out = plain.train_step(to_model(images), attrs)
    assert "train/lr" not in out and plain.opt_g.param_groups[0]["lr"] == 0.01
    with pytest.raises(ValueError, match="lr_decay_share"):
        dataclasses.replace(params, lr_decay_share=1.0)
