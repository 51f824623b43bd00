"""DVC stage `explain`: concept explanations of the regressor through the AttGAN's knobs, with
Captum and correlation baselines, and (synthetic data) fidelity against the true stress law.

Explains ``explain.tiles_per_lot`` tiles of every lot. Only the fidelity part reads the ground
truth (`--truth-dir`); on other data it is skipped with a note.
"""

import argparse
from pathlib import Path

import numpy as np
import torch

from semknobs import registry, tracking
from semknobs.atomic import atomic_path
from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import load_section
from semknobs.data.dataset import read_splits
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import load_tiles
from semknobs.errors import DataError
from semknobs.explain import fidelity
from semknobs.explain.run import ExplainParams, explain, sample_tiles
from semknobs.stage import save_figure, stage_main, write_metrics


@stage_main
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--attgan-dir", type=Path, required=True)
    parser.add_argument("--regressor-dir", type=Path, required=True)
    parser.add_argument("--tiles-dir", type=Path, required=True)
    parser.add_argument("--lots", type=Path, required=True)
    parser.add_argument("--splits", type=Path, required=True)
    parser.add_argument("--truth-dir", type=Path, help="synthetic ground truth, for fidelity")
    parser.add_argument("--metrics", type=Path, required=True)
    parser.add_argument("--reports", type=Path, required=True)
    args = parser.parse_args(argv)
    params = load_section(ExplainParams, "explain", args.params)
    torch.manual_seed(params.seed)

    gen, gan_config = registry.load_attgan(args.attgan_dir)
    reg, _ = registry.load_regressor(args.regressor_dir)
    scaler = AttributeScaler.from_dict(gan_config["scaler"])
    labels = read_lots(args.lots)
    splits = read_splits(args.splits)
    train = labels[labels["lot"].isin(splits["train"])]
    stress_range = float(train["peak_stress"].max() - train["peak_stress"].min())
    normalised = labels.copy()
    normalised[list(ATTRIBUTES)] = np.clip(
        scaler.transform(labels[list(ATTRIBUTES)].to_numpy()), 0, 1
    )

    all_tiles, manifest = load_tiles(args.tiles_dir)
    rows = sample_tiles(manifest, params.tiles_per_lot, params.seed)
    tiles = manifest.iloc[rows].reset_index(drop=True)
    images = torch.from_numpy(all_tiles[rows]).float().div(127.5).sub(1).unsqueeze(1)
    attrs = torch.from_numpy(
        normalised.set_index("lot").loc[tiles["lot"], list(ATTRIBUTES)].to_numpy()
    ).float()

    deps = [args.attgan_dir, args.regressor_dir, args.tiles_dir, args.lots]
    with tracking.stage_run("explain", params=params, deps=deps):
        out = explain(
            gen=gen,
            reg=reg,
            images=images,
            attrs=attrs,
            tiles=tiles,
            lots=normalised,
            stress_range=stress_range,
            layer=reg.net.layer4,
            params=params,
        )
        metrics = dict(out.metrics)
        if args.truth_dir is not None:
            metrics |= _fidelity(args.truth_dir, tiles, normalised, out)
        write_metrics(args.metrics, metrics)
        tracking.log_metrics(metrics)
        args.reports.mkdir(parents=True, exist_ok=True)
        for name, table in out.tables.items():
            with atomic_path(args.reports / f"{name}.csv") as tmp:
                table.to_csv(tmp, index=False, float_format="%.6g")
        for a in ATTRIBUTES:  # one file per attribute for `dvc plots`
            curve = out.tables["sensitivity"].query("attribute == @a").drop(columns="attribute")
            with atomic_path(args.reports / "plots" / f"sensitivity_{a}.csv") as tmp:
                curve.to_csv(tmp, index=False, float_format="%.6g")
        for name, figure in out.figures.items():
            save_figure(figure, args.reports / name)
        tracking.log_dir(args.reports, "explain")
        for key in (
            "fidelity/cosine_median",
            "fidelity/sign_agreement",
            "counterfactual/success_rate",
            "recon/shift_pct_range",
        ):
            if key in metrics:
                print(f"{key} = {metrics[key]:.3f}")


def _fidelity(truth_dir: Path, tiles, labels, out) -> dict[str, float]:
    truth = fidelity.read_truth(truth_dir)
    true_attrs = fidelity.tile_truth(truth.fields, tiles)[list(ATTRIBUTES)]
    if true_attrs.isna().any(axis=None) or not set(tiles["lot"]) <= set(truth.lots["lot"]):
        print(
            f"explain: fidelity skipped: {truth_dir} is not the truth of these tiles (user data?)"
        )
        return {}
    slopes = fidelity.label_slopes(truth.lots, labels)
    if np.any(np.abs(slopes) < 1e-6):
        raise DataError(f"{truth_dir}: labels do not follow the true attributes (slopes {slopes})")
    gradient = fidelity.label_space_gradient(truth.law, true_attrs.to_numpy(), slopes)
    coefs = (
        out.tables["linear_model"].set_index("attribute").loc[list(ATTRIBUTES), "labels"].to_numpy()
    )
    return (
        fidelity.fidelity_metrics("fidelity", out.higher.delta_attrs, gradient)
        | fidelity.fidelity_metrics("fidelity_lower", -out.lower.delta_attrs, gradient)
        | fidelity.fidelity_metrics("fidelity_sensitivity", out.sweep.slopes(), gradient)
        | fidelity.fidelity_metrics("fidelity_corr", coefs[None], gradient)
    )


if __name__ == "__main__":
    raise SystemExit(main())
