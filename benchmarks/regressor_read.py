"""The regressor's read of the edits against the held-out knob-gradient signs, over many editors.

Evaluation only (issue 14). Each editor's read comes from its ``concept_leak.py`` report (the
table "The regressor's read of the edits": per knob, the regressor's slope on the held-out
control sweep's edits over its slope on true interventions), its `F_ER` and signs from its
workspace's ``metrics/explain.json``. Prints one row per editor and, over every editor-knob
pair, the Spearman correlation of read and sign and how often a low read comes with a low sign.
Beside it, the truth-free read (``semknobs.explain.knob_read``, from the workspace's own
``reports/explain/knob_gradient.csv`` and ``meter_regression.csv``) and how it tracks the
read and the sign (Rule J, ``truth_free_read_rules.md``).

    for ws in WORKSPACES; do
        python benchmarks/concept_leak.py --workspace $ws --out R/$(basename $ws).md
    done
    python benchmarks/regressor_read.py --reports R WORKSPACES... \
        > benchmarks/editor_runs/regressor_read.md
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from semknobs.attributes import ATTRIBUTES
from semknobs.config import from_mapping, load_params
from semknobs.explain.knob_read import KnobReadParams, from_reports

A = list(ATTRIBUTES)
TITLE = "## The regressor's read of the edits"
LOW, HIGH, SIGN = 0.3, 0.5, 0.7  # the README's thresholds


def read_column(report: str, column: str = "edit over true") -> list[float]:
    """One column of the report's regressor-read table (knobs in order), from its markdown."""
    if TITLE not in report:
        raise SystemExit(f"no {TITLE!r} table: rerun benchmarks/concept_leak.py on the workspace")
    section = report.split(TITLE, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("| ")]
    head = [cell.strip() for cell in lines[0].strip("|").split("|")]
    rows = {
        cells[0]: cells
        for cells in ([c.strip() for c in li.strip("|").split("|")] for li in lines[1:])
    }
    return [float(rows[a][head.index(column)]) for a in A]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=Path, required=True, help="<workspace name>.md files")
    parser.add_argument("workspaces", type=Path, nargs="+")
    args = parser.parse_args()
    print("# The regressor's read of the edits and the held-out signs, per editor\n")
    print(
        "`benchmarks/regressor_read.py` over `benchmarks/concept_leak.py`'s reports, held out; "
        "each editor is named by its workspace (`main`: the committed model).\n"
    )
    root = Path(__file__).resolve().parents[1]
    params = from_mapping(KnobReadParams, load_params(root / "params.yaml")["explain"]["knob_read"])
    print("| editor | read s / p / d / f | `F_ER` | signs s / p / d / f | truth-free read |")
    print("| --- | --- | --- | --- | --- |")
    reads, signs, free, lows = [], [], [], []
    for ws in args.workspaces:
        read = read_column((args.reports / f"{ws.resolve().name}.md").read_text())
        metrics = json.loads((ws / "metrics/explain.json").read_text())
        sign = [metrics[f"knob_gradient/er/sign_{a}"] for a in A]
        table = from_reports(ws / "reports" / "explain", params)
        tf = table["read"].to_numpy()
        reads.append(read)
        signs.append(sign)
        free.append(tf)
        lows.append(table["low"].to_numpy())
        fmt = " / ".join
        print(
            f"| {ws.resolve().name} | {fmt(f'{v:.2f}' for v in read)} | "
            f"{metrics['knob_gradient/er/cosine_median']:.3f} | {fmt(f'{v:.2f}' for v in sign)} | "
            f"{fmt(f'{v:.2f}' for v in tf)} |"
        )
    r, s, t = np.ravel(reads), np.ravel(signs), np.ravel(free)
    low, high = r < LOW, r >= HIGH
    print(
        f"\n{len(r)} editor-knob pairs: Spearman of read and sign {spearmanr(r, s)[0]:.2f}; "
        f"read < {LOW}: sign < {SIGN} in {int((s[low] < SIGN).sum())} of {int(low.sum())}; "
        f"read >= {HIGH}: sign >= {SIGN} in {int((s[high] >= SIGN).sum())} of {int(high.sum())}"
    )
    within = [spearmanr(np.array(free)[:, k], np.array(reads)[:, k])[0] for k in range(len(A))]
    flagged = np.ravel(lows)  # below min_read, or no read at all
    print(
        f"\nTruth-free read: Spearman with the read {spearmanr(t, r)[0]:.2f}, within each knob "
        + " / ".join(f"{w:.2f}" for w in within)
        + f" (mean {np.mean(within):.2f}); with the sign {spearmanr(t, s)[0]:.2f}; "
        f"below {params.min_read}: {int(flagged.sum())} pairs, "
        f"{int((s[flagged] < SIGN).sum())} with a sign < {SIGN}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
