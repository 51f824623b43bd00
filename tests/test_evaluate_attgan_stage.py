"""The evaluate_attgan stage on the tiny study: held-out metrics, and on synthetic data the
meter's ceiling beside every control figure (true interventions rendered by the study's own
renderer); on data without a matching truth the ceiling is skipped, not faked."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest
import torch

from semknobs.attributes import ATTRIBUTES
from semknobs.config import to_mapping
from semknobs.data.dataset import fit_scaler
from semknobs.data.split import SplitParams, make_splits, write_splits
from semknobs.data.tiles import TileParams
from semknobs.evaluation.oracle import Synthetic
from semknobs.meter import MeterParams
from semknobs.model_folder import save_model_dir
from semknobs.models.attgan import AttGANConfig, Generator
from semknobs.stages.evaluate_attgan import (
    CeilingParams,
    EvaluateAttGANParams,
    Paths,
    _largest_region_misses,
    load,
    run,
)

from .conftest import tiny_synth_params


@pytest.fixture(scope="module")
def attgan(tiny_study, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate_attgan")
    lots = pd.read_csv(tiny_study["lots"])
    splits = make_splits(lots, SplitParams(n_folds=2, test_lots=2))
    write_splits(root / "splits.json", splits)
    torch.manual_seed(0)
    cfg = AttGANConfig(enc_dim=8, dec_dim=8, dis_dim=8, dis_fc_dim=16)
    save_model_dir(
        root / "attgan",
        kind="attgan",
        weights={"generator": Generator(cfg)},
        config={
            "model": to_mapping(cfg),
            "scaler": fit_scaler(tiny_study["lots"], splits.train).to_dict(),
            "img_size": 64,
        },
    )
    return root


def _paths(study, root, name, truth_dir=None):
    return Paths(
        attgan_dir=root / "attgan",
        tiles_dir=study["tiles"],
        lots=study["lots"],
        splits=root / "splits.json",
        metrics=root / f"{name}.json",
        reports=root / name,
        truth_dir=truth_dir,
    )


PARAMS = EvaluateAttGANParams(
    n_tiles=6,
    points=3,
    ceiling=CeilingParams(n_tiles=4, n_jobs=1),
    synthetic=Synthetic(tiny_synth_params(), TileParams(n_jobs=1)),
)


def test_the_ceiling_stands_beside_every_control_figure(tiny_study, attgan):
    result = run(PARAMS, _paths(tiny_study, attgan, "with_truth", tiny_study["truth"]))
    m = result.metrics
    for a in ATTRIBUTES:
        for key in ("spearman", "slope", "ceiling", "ceiling_slope", "gain"):
            assert f"control/{key}_{a}" in m, (key, a)
    # the meter reads true porosity well: on true interventions its response is strong
    assert m["control/ceiling_porosity"] > 0.6 and m["control/ceiling_slope_porosity"] > 0
    ratio = m["control/slope_size"] / m["control/ceiling_slope_size"]
    assert m["control/gain_size"] == pytest.approx(ratio, nan_ok=True)
    assert 0 <= m["control/ceiling_max_leakage"] <= 1
    written = json.loads((attgan / "with_truth.json").read_text())
    assert written == pytest.approx({k: None if v != v else v for k, v in m.items()})  # NaN: null
    assert (attgan / "with_truth" / "control.png").exists()
    readings = pd.read_csv(attgan / "with_truth" / "ceiling_readings.csv")
    assert len(readings) == 4 * 2 * len(ATTRIBUTES) * 3  # tiles x renders' tiles x knobs x points


def test_without_a_matching_truth_the_ceiling_is_skipped(tiny_study, attgan, tmp_path):
    other = tmp_path / "truth"
    other.mkdir()
    law = json.loads((tiny_study["truth"] / "law.json").read_text())
    (other / "law.json").write_text(json.dumps(law))
    fields = pd.read_csv(tiny_study["truth"] / "fields.csv")
    fields.assign(lot="ZZ").to_csv(other / "fields.csv", index=False)
    result = run(PARAMS, _paths(tiny_study, attgan, "other", other))
    assert "control/spearman_size" in result.metrics
    assert not any(k.startswith("control/ceiling") for k in result.metrics)
    assert any("skipped" in line for line in result.summary)


def test_control_is_read_with_the_measure_stages_meter(tiny_study, attgan, tmp_path):
    params_file = tmp_path / "params.yaml"
    params_file.write_text(
        "evaluate_attgan: {n_tiles: 6, points: 3}\nmeasure: {meter: {facet_harmonic: dominant}}\n"
    )
    paths = _paths(tiny_study, attgan, "dominant")
    loaded = load(params_file, paths)
    assert loaded.meter == MeterParams(facet_harmonic="dominant")
    run(loaded, paths)
    run(replace(loaded, meter=MeterParams()), _paths(tiny_study, attgan, "energy"))
    read = {n: pd.read_csv(attgan / n / "control_readings.csv") for n in ("dominant", "energy")}
    pd.testing.assert_series_equal(read["dominant"]["size"], read["energy"]["size"])
    assert not read["dominant"]["facetness"].equals(read["energy"]["facetness"])


def test_the_summary_names_each_knobs_largest_region_miss_and_warns_past_no_edit():
    table = pd.DataFrame(
        {
            "knob": ["size", "size", "facetness", "facetness"],
            "statistic": ["background_grey", "outline_grey", "background_grey", "outline_grey"],
            "edit": [-23.5, -3.2, -0.5, 2.0],
            "lots": [-1.6, -0.7, -0.9, 0.2],
        }
    )
    misses = {"texture/region_miss_size": 3.13, "texture/region_miss_facetness": 0.8}
    size, facetness = _largest_region_misses(table, misses)
    assert size.startswith(
        "texture by region, size knob: background_grey -23.50 spreads per unit "
        "(training lots -1.60); region miss 3.13 - WARNING"
    )
    assert facetness == (
        "texture by region, facetness knob: outline_grey +2.00 spreads per unit "
        "(training lots +0.20); region miss 0.80"
    )
