"""Training the regressor: exact resume on the CPU, augmentations, schedule, strict params."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from semknobs.config import from_mapping
from semknobs.data.tiles import load_tiles
from semknobs.errors import ParamsError
from semknobs.models.regressor import RegressorConfig
from semknobs.train.checkpoint import read_meta
from semknobs.train.regressor import (
    AugmentParams,
    RegressorTrainParams,
    TrainRegressorStageParams,
    augment,
    lr_at,
    train_regressor,
)


def _data(tiny_study):
    tiles, manifest = load_tiles(tiny_study["tiles"])
    stress = 30 + manifest["lot"].str[1:].astype(int).to_numpy(np.float32)  # a lot-level label
    return tiles, stress


def _params(**kw) -> RegressorTrainParams:
    base = {
        "model": RegressorConfig(preset="tiny", drop_rate=0.2),  # dropout: the global RNG too
        "augment": AugmentParams(flips=True, rot90=True, intensity=0.1),
        "epochs": 4,
        "batch_size": 8,
        "lr": 3e-3,
        "seed": 3,
        "device": "cpu",
    }
    return RegressorTrainParams(**(base | kw))


def test_resume_after_interruption_gives_identical_weights(tiny_study, tmp_path):
    images, stress = _data(tiny_study)
    params = _params()
    threads = torch.get_num_threads()
    straight = train_regressor(params=params, images=images, stress=stress, progress=False)
    assert torch.get_num_threads() == threads  # params.threads applies inside the call only

    ckpt = tmp_path / "ck"
    first = train_regressor(
        params=params,
        images=images,
        stress=stress,
        checkpoint_dir=ckpt,
        stop_after=2,
        progress=False,
    )
    assert first.epoch == 2 and read_meta(ckpt)["epoch"] == 2
    torch.manual_seed(12345)  # the resumed process's global RNG is in another state
    resumed = train_regressor(
        params=params, images=images, stress=stress, checkpoint_dir=ckpt, progress=False
    )
    assert resumed.epoch == params.epochs and resumed.step == straight.step
    a, b = straight.model.state_dict(), resumed.model.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key
    for pa, pb in zip(
        straight.opt.param_groups[0]["params"], resumed.opt.param_groups[0]["params"]
    ):
        assert torch.equal(straight.opt.state[pa]["exp_avg"], resumed.opt.state[pb]["exp_avg"])


def test_a_checkpoint_of_other_params_is_not_resumed(tiny_study, tmp_path, capsys):
    images, stress = _data(tiny_study)
    ckpt = tmp_path / "ck"
    train_regressor(
        params=_params(epochs=2),
        images=images,
        stress=stress,
        checkpoint_dir=ckpt,
        progress=False,
    )
    trainer = train_regressor(
        params=_params(epochs=2, lr=1e-3),
        images=images,
        stress=stress,
        checkpoint_dir=ckpt,
        progress=False,
    )
    assert "resuming" not in capsys.readouterr().out and trainer.epoch == 2


def test_training_learns_the_lot_labels(tiny_study):
    """A few epochs on the tiny study bring the tile MSE well below the label variance."""
    from semknobs.models.regressor import predict

    images, stress = _data(tiny_study)
    trainer = train_regressor(
        params=_params(
            epochs=40,
            model=RegressorConfig(preset="tiny"),
            augment=AugmentParams(flips=False, rot90=False),
        ),
        images=images,
        stress=stress,
        progress=False,
    )
    pred = predict(trainer.model, images)
    assert np.mean((pred - stress) ** 2) < 0.5 * np.var(stress)


def test_augment_only_permutes_pixels_without_jitter():
    rng = torch.Generator().manual_seed(0)
    x = torch.rand(16, 1, 8, 8) * 2 - 1
    y = augment(x, AugmentParams(flips=True, rot90=True, intensity=0.0), rng)
    assert y.shape == x.shape
    for a, b in zip(x, y):  # each tile is one of the 8 symmetries of the square
        variants = [torch.rot90(v, k, dims=(-2, -1)) for v in (a, a.flip(-1)) for k in range(4)]
        assert any(torch.equal(b, v) for v in variants)
    assert not torch.equal(x, y)
    same = augment(x, AugmentParams(flips=False, rot90=False), rng)
    assert torch.equal(same, x)
    jittered = augment(x, AugmentParams(flips=False, rot90=False, intensity=0.1), rng)
    assert jittered.min() >= -1 and jittered.max() <= 1 and not torch.equal(jittered, x)
    # affine: the order of grey levels inside a tile is kept (pores stay darker than faces)
    order = torch.argsort(x[0].flatten())
    assert torch.all(jittered[0].flatten()[order].diff() >= -1e-6)


def test_lr_schedule_warms_up_then_decays_to_zero():
    lrs = [lr_at(s, steps_per_epoch=10, epochs=5, lr=1.0) for s in range(50)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(lrs[10:])) and lrs[-1] < 0.01


def test_params_are_strict():
    with pytest.raises(ParamsError, match=r"train_regressor\.train: unknown parameter"):
        from_mapping(TrainRegressorStageParams, {"train": {"epoch": 3}}, where="train_regressor")
    with pytest.raises(ParamsError, match="batch_size"):
        from_mapping(RegressorTrainParams, {"batch_size": 1})
    with pytest.raises(ParamsError, match="intensity"):
        from_mapping(RegressorTrainParams, {"augment": {"intensity": 0.9}})
