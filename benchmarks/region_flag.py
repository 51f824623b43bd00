"""Rule Y: the region warning against the held-out knob-gradient signs, over many editors.

Evaluation only (issue 14; rules in ``region_flag_rules.md``). Per editor workspace, its region
misses exactly as ``evaluate_attgan`` computes them (its own held-out control tiles and training
lots), beside its held-out signs (``metrics/explain.json``, the renderer's referee) and its
truth-free knob read (``semknobs.explain.knob_read``, Rule J). Prints one row per editor-knob
pair, then the rule's three figures and the read comparison.

    python benchmarks/region_flag.py . /work/exp/ws/* > benchmarks/region_flag.md
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.stats import spearmanr

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.config import load_section
from semknobs.data.dataset import load_tileset
from semknobs.data.split import read_splits
from semknobs.explain.edit_texture import NO_EDIT_MISS, read_metrics_file, region_miss_key
from semknobs.explain.knob_read import KnobReadParams, from_reports
from semknobs.serving import attgan_model
from semknobs.stages import evaluate_attgan as stage

sys.path.insert(0, str(Path(__file__).resolve().parent))
from regressor_read import SIGN as LOW_SIGN  # Rule J's low sign

FLAG, LOW_READ = NO_EDIT_MISS, KnobReadParams().min_read


def region_misses(ws: Path) -> dict[str, float] | None:
    """``texture/region_miss_<knob>`` of the workspace's editor, as its evaluate_attgan would
    (None where it would not: too few training lots)."""
    params = load_section(stage.EvaluateAttGANParams, stage.NAME, ws / "params.yaml")
    paths = stage.Paths(
        attgan_dir=ws / "models/attgan", tiles_dir=ws / "data/tiles",
        lots=ws / "data/synthetic/lots.csv", splits=ws / "data/splits.json",
        metrics=ws / "unused", reports=ws / "unused",
    )  # fmt: skip
    gen, config = attgan_model.load(paths.attgan_dir)
    scaler = AttributeScaler.from_dict(config.scaler)
    splits = read_splits(paths.splits)
    test = load_tileset(
        tiles_dir=paths.tiles_dir, lots_csv=paths.lots, lots=splits.test, scaler=scaler
    )
    pick = np.random.default_rng(params.seed).choice(
        len(test.images), min(params.n_tiles, len(test.images)), replace=False
    )
    train_lots = config.train_lots or splits.training_lots(str(paths.splits))
    texture = stage._texture(
        gen, config, paths, scaler, train_lots, test.images[pick], test.attrs[pick]
    )
    return None if texture is None else texture[2]  # None: too few training lots


NEEDED = ("models/attgan", "metrics/explain.json", "reports/explain/meter_regression.csv")


def workspace_figures(ws: Path) -> tuple[dict, dict] | str:
    """The workspace's held-out signs and region misses, or why it has none."""
    missing = [part for part in NEEDED if not (ws / part).exists()]
    if missing:
        return "no " + ", ".join(missing)
    signs = read_metrics_file(ws / "metrics/explain.json")
    if f"knob_gradient/er/sign_{ATTRIBUTES[0]}" not in signs:
        return "no referee signs in metrics/explain.json (no truth?)"
    misses = region_misses(ws)
    return "too few training lots" if misses is None else (signs, misses)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspaces", type=Path, nargs="+", help="folders with models/attgan")
    args = parser.parse_args()
    rows = []
    for ws in args.workspaces:
        found = workspace_figures(ws)
        if isinstance(found, str):
            print(f"region_flag: {ws} left out: {found}", file=sys.stderr)
            continue
        signs, misses = found
        name = "main" if ws.resolve() == Path.cwd().resolve() else ws.resolve().name
        read = from_reports(ws / "reports/explain").set_index("attribute")
        for a in ATTRIBUTES:
            miss, sign = misses[region_miss_key(a)], signs[f"knob_gradient/er/sign_{a}"]
            read_a = read.loc[a, "read"]
            rows.append(dict(editor=name, knob=a, region_miss=miss, sign=sign, read=read_a))
    if not rows:
        print("region_flag: none of the workspaces could be read (above)", file=sys.stderr)
        return 2
    table = pd.DataFrame(rows)
    table["flag"] = table["region_miss"] > FLAG
    table["low_sign"] = table["sign"] < LOW_SIGN
    table["low_read"] = ~(table["read"] >= LOW_READ)
    print("# Rule Y: region misses and held-out knob-gradient signs, per editor\n")
    print("`benchmarks/region_flag.py` (rules: `region_flag_rules.md`); held out, default study.\n")
    print(table.to_markdown(index=False, floatfmt=".3f"))
    flagged, rest = table[table["flag"]], table[~table["flag"]]
    rho = spearmanr(table["region_miss"], table["sign"]).statistic
    within, skipped = {}, []
    for a in ATTRIBUTES:
        part = table[table["knob"] == a]
        if part["sign"].nunique() < 2:
            skipped.append(a)
        else:
            within[a] = spearmanr(part["region_miss"], part["sign"]).statistic
    mean_within = float(np.mean(list(within.values())))
    gap = flagged["low_sign"].mean() - rest["low_sign"].mean()
    print("\n## The rule's figures\n")
    print("| clause | figure | needs |\n| --- | --- | --- |")
    print(f"| 1. pairs flagged (miss > {FLAG:g}) | {len(flagged)} of {len(table)} | >= 5 |")
    print(
        f"| 2. low sign (< {LOW_SIGN:g}) among flagged / unflagged | "
        f"{flagged['low_sign'].mean():.2f} ({flagged['low_sign'].sum()} of {len(flagged)}) / "
        f"{rest['low_sign'].mean():.2f} ({rest['low_sign'].sum()} of {len(rest)}); "
        f"gap {gap:+.2f} | gap >= 0.20 |"
    )
    shown = " / ".join(f"{a} {r:+.2f}" for a, r in within.items())
    print(
        f"| 3. Spearman(miss, sign), {len(table)} pairs; within knob ({shown}; mean) | "
        f"{rho:+.2f}; {mean_within:+.2f} | <= -0.30; <= -0.20 |"
    )
    if skipped:
        print(f"\nLeft out of the within-knob mean (the same sign on every editor): {skipped}.")
    extra = table[table["flag"] & ~table["low_read"]]
    print(
        f"\nBeside it: pairs flagged by the region but not by the knob read (read >= "
        f"{LOW_READ:g}): {len(extra)}, of which {int(extra['low_sign'].sum())} with a low sign; "
        f"pairs flagged by the read: {int(table['low_read'].sum())}, of which "
        f"{int(table[table['low_read']]['low_sign'].sum())} with a low sign."
    )
    for a in ATTRIBUTES:
        part = table[table["knob"] == a]
        print(
            f"* {a}: flagged on {int(part['flag'].sum())} of {len(part)} editors; low sign on "
            f"{int(part['low_sign'].sum())}; median miss {part['region_miss'].median():.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
