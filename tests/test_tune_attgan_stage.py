"""tune_attgan: off by default; the concept-loss design tuned for real on tiny data (four
objectives with the regressor and meter readings); a bad space, fold or input refused before any
trial trains."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import optuna
import pytest
import yaml

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import ParamsError, SemknobsError
from semknobs.explain.gradient import KnobGradientParams
from semknobs.explain.natural import MeterRegressionParams
from semknobs.stages import tune_attgan
from semknobs.train import tuning
from semknobs.train.attgan_space import dimensions
from semknobs.train.sign_objective import AGREEMENT, SignReference
from semknobs.train.tune_attgan import BASELINE, choose, objectives, study_name

from .conftest import ROOT, save_tiny_regressor


def _paths(root, study=None, **kw):
    study = study or {"tiles": root / "tiles", "lots": root / "lots.csv"}
    return tune_attgan.Paths(
        tiles_dir=study["tiles"],
        lots=study["lots"],
        splits=root / "splits.json",
        out=root / "tuned.yaml",
        reports=root / "reports",
        measurements=root / "measurements.csv",
        regressor_dir=root / "regressor",
        storage=str(root / "study.journal"),
        **kw,
    )


def _tiny(root, n_trials=2, **space):
    """The stage's params from the shrunken ``params.yaml`` (``stage_inputs``), tuning for real."""
    params = tune_attgan.load(root / "params.yaml", _paths(root))
    tune = dataclasses.replace(
        params.tune,
        n_trials=n_trials,
        trial_steps=12,
        space=space or {"lambda_rec": [5.0, 50.0], "model": {"shortcut_layers": [0, 2]}},
        eval=dataclasses.replace(params.tune.eval, n_tiles=6, points=3),
    )
    # the tiny lots' tiles are too few for the default meter regression (the sign agreement)
    return dataclasses.replace(params, tune=tune, meter_regression=MeterRegressionParams(6))


def test_off_writes_an_empty_tuned_file_once(tmp_path):
    paths = _paths(tmp_path)
    params = tune_attgan.load(ROOT / "params.yaml", paths)
    assert params.tune.n_trials == 0
    tune_attgan.run(params, paths)
    assert paths.out.read_text().endswith("{}\n")
    paths.out.write_text("lr: 0.001\n")  # a committed choice is kept
    tune_attgan.run(params, paths)
    assert paths.out.read_text() == "lr: 0.001\n"


def test_the_default_space_holds_train_attgans_own_params():
    params = tune_attgan.load(ROOT / "params.yaml", _paths(ROOT))
    for d in dimensions(params.tune.space):
        owner = params.base.model if d.key.startswith("model.") else params.base
        value = getattr(owner, d.key.removeprefix("model."))
        assert d.values[0] <= value <= d.values[1], d.key
    # enc_layers is drawn first whatever the order, so shortcut_layers can be bounded by it
    later = dimensions({"model": {"shortcut_layers": [0, 2], "enc_layers": [3, 4]}})
    assert [d.key for d in later] == ["model.enc_layers", "model.shortcut_layers"]


@pytest.mark.parametrize(
    ("space", "match"),
    [
        ({"lambda_rek": [1.0, 2.0]}, "lambda_rek: not a train_attgan.train parameter"),
        ({"concept": [1, 2]}, "concept: not a train_attgan.train parameter"),
        ({"lambda_rec": [0.0, 2.0]}, "lambda_rec: log-uniform needs low > 0"),
        ({"lambda_rec": [3.0, 2.0]}, "lambda_rec: expected finite low <= high"),
        ({"lr": [1e-4, float("inf")]}, "lr: expected finite low <= high"),
        ({"lr": [float("nan"), 1e-3]}, "lr: expected finite low <= high"),
        ({"lr": [1e-4]}, r"lr: expected \[low, high\] numbers"),
        ({"lr": ["a", "b"]}, r"lr: expected \[low, high\] numbers"),
        ({"model": {"shortcut_layers": [0, 1.5]}}, "shortcut_layers: an integer parameter needs"),
        ({"model": {"shortcut_layers": [0, 3]}}, "shortcut_layers: 3 is not valid"),
        ({"model": {"condition": ["absolute", "sideways"]}}, "condition: 'sideways' is not valid"),
        ({"model": {"film": [True, 1]}}, "film: choices must be bool"),
        ({"critic": ["r1", "r2"]}, "critic: choices must be"),
        ({"critic": ["r1", "r1"]}, "critic: expected distinct choices"),
        ({"model": [0, 1]}, "model: expected a mapping"),
        ({"model.shortcut_layers": [0, 2]}, "nest architecture keys under model:"),
        ({"steps": [100, 200]}, "steps: not tunable"),
        ({"model": {"img_size": [32, 64]}}, "img_size: not tunable"),
        ({"model": {"dec_layers": [3, 4]}}, "dec_layers: not tunable"),
        ({"concept_knob_weight": [[4, 1, 1, 1]]}, "concept_knob_weight: not tunable"),
        ({"concept_off_knob_weight": [[1, 1, 4, 1]]}, "concept_off_knob_weight: not tunable"),
        ({"model": {"shortcut_layers": [3, 3], "enc_layers": [3, 4]}}, "shortcut_layers: 3 is not"),
        ({"lr": 0.001}, r"lr: expected \[low, high\] or a list"),
        (
            {"critic": ["r1", "wgan-gp"], "model": {"dis_projection": [True, False]}},
            "the combination critic: 'wgan-gp', model.dis_projection: True is not valid",
        ),
        ({}, "empty"),
    ],
)
def test_a_bad_space_is_refused_before_any_work(tmp_path, space, match):
    paths = _paths(tmp_path)  # no tiles exist: the refusal must come first
    params = tune_attgan.load(ROOT / "params.yaml", paths)
    tune = dataclasses.replace(params.tune, n_trials=2, space=space)
    with pytest.raises(ParamsError, match=match):
        tune_attgan.run(dataclasses.replace(params, tune=tune), paths)
    assert not paths.out.exists() and not (tmp_path / "study.journal").exists()


def test_bad_inputs_are_refused_before_any_trial(tiny_study, stage_inputs):
    root = stage_inputs
    params = _tiny(root)
    cases = [
        (dataclasses.replace(params, tune=dataclasses.replace(params.tune, val_fold=2)), {}),
        (params, {"measurements": None}),
        (params, {"regressor_dir": root / "small"}),
    ]
    save_tiny_regressor(root / "small", img_size=32)
    matches = ["val_fold: 2 is not a fold", "needs --measurements", "reads 32-px tiles"]
    for (p, kw), match in zip(cases, matches, strict=True):
        with pytest.raises(ParamsError, match=match):
            tune_attgan.run(p, dataclasses.replace(_paths(root, tiny_study), **kw))
    base = dataclasses.replace(params.base, lambda_texture=1.0)  # 2 fitting lots: too few
    with pytest.raises(ParamsError, match="texture loss needs at least 6 fitting lots"):
        tune_attgan.run(dataclasses.replace(params, base=base), _paths(root, tiny_study))
    base = dataclasses.replace(params.base, lambda_count=1.0)  # 2 fitting lots: too few
    with pytest.raises(ParamsError, match="particle-count read needs at least 5 fitting lots"):
        tune_attgan.run(dataclasses.replace(params, base=base), _paths(root, tiny_study))
    flat = root / "flat_lots.csv"  # every lot the same stress: the shift has no range
    flat.write_text(tiny_study["lots"].read_text())
    import pandas as pd

    lots = pd.read_csv(flat, dtype={"lot": str})
    lots.assign(peak_stress=50.0).to_csv(flat, index=False)
    with pytest.raises(ParamsError, match="no range"):
        tune_attgan.run(params, dataclasses.replace(_paths(root, tiny_study), lots=flat))
    assert not (root / "tuned.yaml").read_text().strip("{}\n")  # the fixture's empty file
    assert not (root / "study.journal").exists()


def _study(values, n_objectives=3, baseline=0, named=True):
    names, directions = objectives(n_objectives >= 3, n_objectives == 4)
    study = optuna.create_study(directions=directions)
    if named:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(names)
    for i, v in enumerate(values):
        marks = {BASELINE: True} if i == baseline else {}
        study.add_trial(optuna.trial.create_trial(values=v, user_attrs=marks))
    return study


def test_choose_known_answers():
    # (psnr, control, shift); trial 0 is the baseline (train_attgan's own params)
    values = [(24.0, 0.70, 5.0), (23.0, 0.95, 4.0), (25.0, 0.90, 6.0), (23.8, 0.80, 5.2)]
    study = _study(values)
    assert choose(study, 0.5, 0.5, 0.05).number == 3
    assert choose(study, 1.0, 0.5, 0.05).number == 1
    assert choose(study, 0.5, 1.0, 0.05).number == 2
    assert choose(study, 0.0, 0.0, 0.05).number == 0
    two = _study([(24.0, 0.70), (23.0, 0.95), (23.8, 0.80)], n_objectives=2)
    assert choose(two, 0.5, 0.0, 0.05).number == 2  # no shift
    dominated = _study([(22.0, 0.5, 9.0), (23.0, 0.6, 8.0), (21.0, 0.9, 8.5)])
    assert choose(dominated, 0.0, 0.0, 0.05).number == 1
    later = _study([(21.0, 0.95, 4.0), (24.0, 0.70, 5.0)], baseline=1)  # marked, not numbered
    assert choose(later, 0.5, 0.5, 0.05).number == 1
    with pytest.raises(SemknobsError, match="no completed baseline trial"):
        choose(_study(values[1:], baseline=None), 0.5, 0.5, 0.05)


def test_choose_keeps_the_sign_agreement_of_the_baseline_within_its_tolerance():
    # (psnr, control, shift, sign agreement); trial 1 controls best but agrees far less
    values = [(24.0, 0.70, 5.0, 0.80), (24.0, 0.95, 5.0, 0.60), (24.0, 0.85, 5.0, 0.78)]
    study = _study(values, n_objectives=4)
    assert choose(study, 0.5, 0.5, 0.05).number == 2
    assert choose(study, 0.5, 0.5, 0.25).number == 1
    assert choose(study, 0.5, 0.5, 0.0).number == 0
    # a study without metric names (made outside the stage): objectives in the stage's order
    assert choose(_study(values, n_objectives=4, named=False), 0.5, 0.5, 0.05).number == 2


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"n_trials": -1}, "n_trials"),
        ({"trial_steps": 0}, "trial_steps"),
        ({"psnr_tolerance_db": float("nan")}, "psnr_tolerance_db"),
        ({"shift_tolerance_pct": -0.1}, "shift_tolerance_pct"),
        ({"agreement_tolerance": 1.5}, "agreement_tolerance"),
        ({"agreement_tiles": 0}, "agreement_tiles"),
        ({"trial_seeds": 0}, "trial_seeds"),
        ({"trial_seeds": 17}, "trial_seeds"),
    ],
)
def test_bad_scalar_params_are_refused(change, match):
    params = tune_attgan.load(ROOT / "params.yaml", _paths(ROOT))
    with pytest.raises(ParamsError, match=f"tune_attgan.{match}"):
        dataclasses.replace(params.tune, **change)


def test_the_study_name_follows_what_makes_trials_comparable():
    params = tune_attgan.load(ROOT / "params.yaml", _paths(ROOT))
    three, four = objectives(True)[0], objectives(True, True)[0]
    ref = SignReference(("L1",), np.ones((1, 4)), (np.arange(2),), params.knob_gradient)
    # what the agreement is scored against: another meter regression, other tiles, settings
    other_slopes = dataclasses.replace(ref, slopes=-np.ones((1, 4)))
    more_tiles = dataclasses.replace(ref, rows=(np.arange(4),))
    name = study_name(params.tune, params.base, "data", four, ref)
    for same in ({"n_trials": 9}, {"agreement_tolerance": 0.2}, {"psnr_tolerance_db": 1.0}):
        assert name == study_name(
            dataclasses.replace(params.tune, **same), params.base, "data", four, ref
        )
    other_space = dataclasses.replace(params.tune, space={"lr": [1e-4, 1e-3]})
    smoother = dataclasses.replace(ref, knob_gradient=KnobGradientParams(smoothing=0.1))
    others = [
        study_name(other_space, params.base, "data", four, ref),
        study_name(params.tune, dataclasses.replace(params.base, lr=1e-4), "data", four, ref),
        study_name(params.tune, params.base, "other data", four, ref),
        study_name(params.tune, params.base, "data", three),
        study_name(params.tune, params.base, "data", objectives(False)[0]),
        study_name(params.tune, params.base, "data", four, smoother),
        study_name(params.tune, params.base, "data", four, other_slopes),
        study_name(params.tune, params.base, "data", four, more_tiles),
    ]
    assert len({name, *others}) == 9


def test_the_concept_design_is_tuned_for_real_and_the_study_resumes(tiny_study, stage_inputs):
    root = stage_inputs
    paths = _paths(root, tiny_study)
    params = _tiny(root)
    result = tune_attgan.run(params, paths)
    storage = tuning.make_storage(paths.storage)
    (name,) = optuna.get_all_study_names(storage)
    assert name.startswith("semknobs-attgan-")
    study = optuna.load_study(study_name=name, storage=storage)
    trials = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(trials) == 2
    assert study.metric_names == [
        "val/psnr",
        "val/mean_control",
        "val/recon_shift_pct_range",
        AGREEMENT,
    ]
    # the first trial is train_attgan's own params; every objective is a real, finite score
    assert trials[0].params == {"lambda_rec": params.base.lambda_rec, "model.shortcut_layers": 1}
    assert trials[0].user_attrs[BASELINE] and BASELINE not in trials[1].user_attrs
    lots = len(json.loads(paths.splits.read_text())["folds"][0])
    for t in trials:
        psnr, control, shift, agreement = t.values
        assert 5 < psnr < 60 and -1 <= control <= 1 and 0 <= shift < 1e4
        assert t.user_attrs["val/recon_shift_pct_range"] == shift
        # a share of the validation fold's lot-attributes, per attribute a share of its lots
        assert agreement * lots * 4 == pytest.approx(round(agreement * lots * 4))
        per = [t.user_attrs[f"{AGREEMENT}_{a}"] for a in ATTRIBUTES]
        assert np.mean(per) == pytest.approx(agreement)  # every lot counts for each attribute
    tuned = yaml.safe_load(paths.out.read_text())
    number = json.loads((root / "reports" / "study.json").read_text())["chosen_trial"]
    (chosen,) = [t for t in trials if t.number == number]
    assert tuned == {
        "lambda_rec": chosen.params["lambda_rec"],
        "model": {"shortcut_layers": chosen.params["model.shortcut_layers"]},
    }
    assert result.metrics["tune/chosen_recon_shift_pct_range"] == chosen.values[2]
    for figure in ("pareto_front.png", "pareto_front_agreement.png"):
        assert (root / "reports" / figure).stat().st_size > 0

    tune_attgan.run(params, paths)  # the study holds its 2 trials: nothing trains again
    assert len(optuna.load_study(study_name=name, storage=storage).trials) == 2
    # the same (named) study scored without the regressor would mix objectives: refused
    with pytest.raises(ParamsError, match="start a new study"):
        tune_attgan.run(params, dataclasses.replace(paths, regressor_dir=None, study_name=name))


def test_without_lots_the_meter_regression_can_fit_the_study_has_three_objectives(
    tiny_study, stage_inputs
):
    root = stage_inputs
    params = _tiny(root, n_trials=1)
    params = dataclasses.replace(params, meter_regression=MeterRegressionParams(100_000))
    result = tune_attgan.run(params, _paths(root, tiny_study))
    assert any("no sign-agreement objective" in line for line in result.summary)
    study = json.loads((root / "reports" / "study.json").read_text())
    assert list(study["values"]) == objectives(True)[0]
    assert not (root / "reports" / "pareto_front_agreement.png").exists()


def test_a_trial_of_two_seeds_scores_the_mean_of_its_seeds(tiny_study, stage_inputs):
    root = stage_inputs
    params = _tiny(root, n_trials=1)  # the baseline trial only

    def values(params, name):
        tune_attgan.run(params, _paths(root, tiny_study, study_name=name))
        storage = tuning.make_storage(str(root / "study.journal"))
        (trial,) = optuna.load_study(study_name=name, storage=storage).trials
        return trial

    seed = params.base.seed
    one = values(params, "seed")
    nxt = values(
        dataclasses.replace(params, base=dataclasses.replace(params.base, seed=seed + 1)), "next"
    )
    both = values(
        dataclasses.replace(params, tune=dataclasses.replace(params.tune, trial_seeds=2)), "both"
    )
    assert one.values != nxt.values  # the seed matters, so the mean is a real test
    assert both.values == pytest.approx([(a + b) / 2 for a, b in zip(one.values, nxt.values)])
    for name, a, b in zip(objectives(True, True)[0], one.values, nxt.values):
        assert both.user_attrs[f"{name}_seed_sd"] == pytest.approx(abs(a - b) / 2**0.5)
