"""The study suite's studies are what they claim (the confounded design is confounded, the other
law has a zero-effect attribute and flipped signs), and its machinery builds workspaces and
tables. The suite itself runs end to end on the tiny pipeline in test_pipeline_e2e.py."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from semknobs import science
from semknobs.attributes import ATTRIBUTES
from semknobs.config import deep_merge, from_mapping, load_params
from semknobs.data.design import lot_design
from semknobs.data.synth import SynthParams
from semknobs.errors import ParamsError, SemknobsError
from semknobs.sections import OTHER_SECTIONS, check_sections, stage_names

from .conftest import ROOT

STUDIES = sorted((ROOT / "studies").glob("*.yaml"))
EDITOR_RUNS = sorted((ROOT / "benchmarks" / "editor_runs").glob("*.yaml"))


def _synth(study: science.Study) -> SynthParams:
    params = deep_merge(load_params(ROOT / "params.yaml"), study.overlay)
    return from_mapping(SynthParams, params["synthesize"], where=study.name)


def test_there_are_at_least_three_studies_and_each_is_valid_params():
    studies = science.read_studies(STUDIES)
    assert {"default", "other_law", "confounded"} <= {s.name for s in studies}
    assert [s.name for s in studies if s.in_place] == ["default"]
    for study in studies:
        synth = _synth(study)
        lots = lot_design(synth.n_lots, synth.design, np.random.default_rng([synth.seed, 0]))
        assert np.all(synth.law(lots) > 0), study.name  # the synthesize stage would refuse


@pytest.mark.parametrize("path", EDITOR_RUNS, ids=lambda p: p.stem)
def test_each_recorded_editor_run_is_still_valid_params(path):
    """The overlays of the measured editor runs (benchmarks/editor_runs, README) rerun as
    written: a renamed or retyped parameter fails here, not halfway through a 17-minute run."""
    (study,) = science.read_studies([path])
    science.check_study(ROOT, study)  # ParamsError naming the overlay and the key at fault


def test_every_params_section_has_its_checker_and_the_committed_params_pass():
    params = load_params(ROOT / "params.yaml")
    # every section is a stage's (its module's Params) or named in OTHER_SECTIONS, and back
    assert set(params) == {*stage_names(), *OTHER_SECTIONS}
    check_sections(params, list(params), "params.yaml")


@pytest.mark.parametrize(
    ("overlay", "match"),
    [
        (
            "train_attgan:\n  train:\n    lambda_cout: 7.5\n",
            r"bad\.yaml: train_attgan.*lambda_cout",
        ),
        ("train_atgan:\n  steps: 10\n", r"bad\.yaml: unknown section 'train_atgan'"),
        ("synthesize:\n  n_lots: many\n", r"bad\.yaml: synthesize\.n_lots"),
    ],
    ids=["misspelt key", "misspelt section", "wrong type"],
)
def test_a_bad_overlay_stops_the_suite_before_any_study_runs(tmp_path, overlay, match):
    """The bad study comes last: the first one must not have started (no workspace)."""
    (tmp_path / "params.yaml").write_text((ROOT / "params.yaml").read_text())
    (tmp_path / "bad.yaml").write_text(overlay)
    studies = science.read_studies([ROOT / "studies" / "other_law.yaml", tmp_path / "bad.yaml"])
    with pytest.raises(ParamsError, match=match):
        science.run_suite(
            root=tmp_path,
            studies=studies,
            workdir=tmp_path / "work",
            out=tmp_path / "s.json",
            table=tmp_path / "s.md",
        )
    assert not (tmp_path / "work").exists() and not (tmp_path / "s.json").exists()


def test_the_confounded_design_correlates_an_attribute_the_law_ignores():
    (study,) = [s for s in science.read_studies(STUDIES) if s.name == "confounded"]
    synth = _synth(study)
    lots = lot_design(synth.n_lots, synth.design, np.random.default_rng([synth.seed, 0]))
    corr = np.corrcoef(lots.T)
    p, f = ATTRIBUTES.index("porosity"), ATTRIBUTES.index("facetness")
    assert corr[p, f] >= 0.85
    grad = synth.law.gradient(lots)
    assert np.all(grad[:, f] == 0) and np.all(grad[:, p] < 0)
    # what a correlation analysis sees: facetness "lowers" the stress
    assert np.corrcoef(lots[:, f], synth.law(lots))[0, 1] < -0.5


def test_the_other_law_flips_signs_and_has_a_zero_effect_attribute():
    (study,) = [s for s in science.read_studies(STUDIES) if s.name == "other_law"]
    synth = _synth(study)
    lots = lot_design(synth.n_lots, synth.design, np.random.default_rng([synth.seed, 0]))
    grad = synth.law.gradient(lots)
    default = _synth(science.Study("default", {})).law.gradient(lots)
    assert np.all(grad[:, 0] > 0) and np.all(default[:, 0] < 0)  # size: sign flipped
    assert np.all(grad[:, 1] == 0)  # porosity: no effect
    assert (grad[:, 2] > 0).any() and (grad[:, 2] < 0).any()  # dispersity: sign set by facetness


def test_the_interaction_law_flips_two_signs_within_the_study_and_stays_positive():
    """Dispersity's and facetness's effects change sign between the study's own lots (so a
    constant sign cannot be right on every lot), and the stress is positive on all of [0, 1]^4."""
    (study,) = [s for s in science.read_studies(STUDIES) if s.name == "interaction"]
    synth = _synth(study)
    lots = lot_design(synth.n_lots, synth.design, np.random.default_rng([synth.seed, 0]))
    grad = synth.law.gradient(lots)
    for k in (2, 3):
        minority = min((grad[:, k] > 0).mean(), (grad[:, k] < 0).mean())
        assert minority >= 0.3, (k, minority)
    assert np.all(grad[:, 0] < 0) and np.all(grad[:, 1] < 0)  # size, porosity as the default's
    corners = np.array(np.meshgrid(*[[0.0, 1.0]] * 4)).reshape(4, -1).T
    assert synth.law(corners).min() > 10  # the law is multilinear in q, f: corners bound it


def test_study_names_must_be_unique(tmp_path):
    (tmp_path / "a").mkdir()
    for folder in (tmp_path, tmp_path / "a"):
        (folder / "x.yaml").write_text("{}\n")
    with pytest.raises(science.SemknobsError, match="unique"):
        science.read_studies([tmp_path / "x.yaml", tmp_path / "a" / "x.yaml"])


def test_studies_whose_aliases_would_collide_are_refused(tmp_path):
    for name in ("a.b", "a_b"):
        (tmp_path / f"{name}.yaml").write_text("synthesize:\n  seed: 1\n")
    with pytest.raises(SemknobsError, match="same alias"):
        science.read_studies([tmp_path / "a.b.yaml", tmp_path / "a_b.yaml"])


def _committed_root(tmp_path, params: str, files=(), dvc: bool = True):
    """A main workspace: ``params.yaml`` and ``files`` (name, text), committed to git; with
    ``dvc``, a ``.dvc/config`` as ``dvc init`` leaves it."""
    root = tmp_path / "root"
    root.mkdir()
    for name, text in (("params.yaml", params), *files):
        (root / name).write_text(text)
    if dvc:
        (root / ".dvc").mkdir()
        (root / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    env = science._git_env()
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


def test_a_workspace_holds_the_tree_with_the_overlaid_params(tmp_path):
    files = [("code.py", "print(1)\n"), (".gitignore", "ignored.txt\n"), ("ignored.txt", "no\n")]
    params = "synthesize:\n  seed: 7  # a comment\n  n_lots: 30\n"
    root = _committed_root(tmp_path, params, files)
    study = science.Study("wide", {"synthesize": {"n_lots": 40}})
    ws = science.prepare_workspace(root, study, tmp_path / "work")
    assert (ws / "code.py").exists() and not (ws / "ignored.txt").exists()
    assert load_params(ws / "params.yaml") == {
        "synthesize": {"seed": 7, "n_lots": 40},
        "register": {"alias": "candidate-wide"},  # the main workspace keeps its @candidate
    }
    assert "study 'wide'" in (ws / "params.yaml").read_text()
    again = science.prepare_workspace(root, study, tmp_path / "work")  # a rerun reuses it
    assert again == ws and (ws / ".git").is_dir()
    local = (ws / ".dvc" / "config.local").read_text()  # one cache, the main one
    assert str((root / ".dvc" / "cache").resolve()) in local


def test_a_study_that_names_its_alias_keeps_it(tmp_path):
    root = _committed_root(tmp_path, "register:\n  alias: candidate\n")
    plain = science.prepare_workspace(root, science.Study("s", {}), tmp_path / "work")
    assert load_params(plain / "params.yaml")["register"] == {"alias": "candidate-s"}
    empty = science.Study("u", {"register": None, "synthesize": {"seed": 1}})
    ws_empty = science.prepare_workspace(root, empty, tmp_path / "work")
    assert load_params(ws_empty / "params.yaml")["register"] == {"alias": "candidate-u"}
    named = science.Study("t", {"register": {"alias": "mine"}})
    ws = science.prepare_workspace(root, named, tmp_path / "work")
    assert load_params(ws / "params.yaml")["register"] == {"alias": "mine"}


def test_a_workspace_needs_a_dvc_repository(tmp_path):
    root = _committed_root(tmp_path, "synthesize:\n  seed: 7\n", dvc=False)
    with pytest.raises(SemknobsError, match="not a DVC repository"):
        science.prepare_workspace(root, science.Study("s", {}), tmp_path / "work")
    assert not (tmp_path / "work").exists()  # nothing half-written


def test_collect_and_the_table(tmp_path):
    (tmp_path / "metrics").mkdir()
    explain = {"knob_gradient/er/cosine_median": 0.25, "counterfactual/validity_model": 0.5}
    (tmp_path / "metrics" / "explain.json").write_text(json.dumps(explain))
    (tmp_path / "metrics" / "regressor.json").write_text(json.dumps({"test/lot_r2": 0.9}))
    got = science.collect(tmp_path, science.Study("s1", {"x": 1}))
    assert got == {
        "s1/knob_gradient/er/cosine_median": 0.25,
        "s1/counterfactual/validity_model": 0.5,
        "s1/test/lot_r2": 0.9,
    }
    text = science.markdown(got, ["s1"])
    assert "## s1" in text and "| knob_gradient | er | 0.25 |" in text
    assert "validity: model 0.50" in text
    fig = science.suite_figure(got, ["s1"])
    assert len(fig.axes) >= 1
    with pytest.raises(science.DataError, match="unreadable"):
        science.collect(tmp_path / "nowhere", science.Study("s2", {"x": 1}))


def test_the_table_reports_the_attgan_and_the_proxy_flags_where_the_study_has_them(tmp_path):
    (tmp_path / "metrics").mkdir()
    flags = {f"regressor/lots/flag_{a}": float(a == "facetness") for a in ATTRIBUTES}
    explain = flags | {"knob_gradient/lots/flag_agreement": 0.75, "test/psnr": -1.0}
    explain |= {"agreed_signs/er/coverage": 0.7, "agreed_signs/er/sign_accuracy": 0.96}
    explain |= {"agreed_signs/er/errors_flagged": 0.8, "agreed_signs/er/entries": 20.0}
    explain |= {f"agreed_signs/er/sign_{a}": 1.0 for a in ATTRIBUTES}
    attgan = {f"control/spearman_{a}": 0.8 for a in ATTRIBUTES} | {
        "control/mean_spearman": 0.8,
        "control/max_leakage": 0.61,
        "test/psnr": 23.5,
    }
    for name, values in (("explain", explain), ("attgan", attgan)):
        (tmp_path / "metrics" / f"{name}.json").write_text(json.dumps(values))
    (tmp_path / "metrics" / "regressor.json").write_text(json.dumps({"test/lot_r2": 0.9}))
    got = science.collect(tmp_path, science.Study("s1", {"x": 1}))
    assert got["s1/control/max_leakage"] == 0.61
    assert got["s1/test/psnr"] == -1.0  # a key in both: the explain stage's wins
    text = science.markdown(got, ["s1"])
    assert "AttGAN control Spearman 0.80 / 0.80 / 0.80 / 0.80" in text
    assert "max leakage 0.61" in text
    assert (
        "proxy flags (the regressor's measured use beyond what the lots support): facetness;"
        in text
    )
    assert "agree on 0.75" in text
    assert "agree on: 0.70 of the 20 held-out lot-attributes with a known oracle sign" in text
    assert "right on 0.96 of them" in text and "holds 0.80 of either explainer's wrong" in text
    assert "facetness: right on 1.00 / 1.00 / 1.00 / 1.00 at coverage – / – / – / –" in text


def test_the_make_target_runs_every_study():
    makefile = (ROOT / "Makefile").read_text()
    line = next(x for x in makefile.splitlines() if "semknobs.science" in x)
    assert all(f"studies/{p.name}" in line for p in STUDIES)
    assert Path(ROOT / "studies" / "default.yaml").exists()
