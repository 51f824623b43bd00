"""Rule K: a truth-free choice among editors of one set of params by the knobs' read.

For each workspace (editors of the same params at different train seeds, one regressor and
split), the truth-free read of each knob (``semknobs.explain.knob_read`` over the workspace's
own ``reports/explain/knob_gradient.csv`` and ``meter_regression.csv``) and, held out and
reported only, its knob-gradient ``F_ER`` and signs (``metrics/explain.json``). The choice: the
editor whose lowest read is highest (a knob with no read counts as the lowest of all). Rule
and result: ``truth_free_read_rules.md``.

    python benchmarks/seed_choice.py WORKSPACE...   # prints a markdown table and the choice
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from semknobs.attributes import ATTRIBUTES
from semknobs.explain.knob_read import from_reports

A = list(ATTRIBUTES)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("workspaces", type=Path, nargs="+")
    args = parser.parse_args()
    rows = []  # the read does not depend on explain.knob_read (its threshold sets only "low")
    for ws in args.workspaces:
        read = from_reports(ws / "reports" / "explain")["read"].to_numpy()
        metrics = json.loads((ws / "metrics" / "explain.json").read_text())
        signs = [metrics[f"knob_gradient/er/sign_{a}"] for a in A]
        rows.append(
            {
                "editor": ws.resolve().name,
                "read": read,
                "lowest": float(np.min(np.where(np.isfinite(read), read, -np.inf))),
                "f_er": metrics["knob_gradient/er/cosine_median"],
                "signs": signs,
                "mean_sign": float(np.mean(signs)),
            }
        )
    print(
        "| editor | truth-free read s / p / d / f | lowest | `F_ER` | signs s / p / d / f | mean |"
    )
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        fmt = " / ".join
        print(
            f"| {r['editor']} | {fmt(f'{v:.2f}' for v in r['read'])} | {r['lowest']:.2f} | "
            f"{r['f_er']:.3f} | {fmt(f'{v:.2f}' for v in r['signs'])} | {r['mean_sign']:.3f} |"
        )
    chosen = max(rows, key=lambda r: r["lowest"])
    f_med = float(np.median([r["f_er"] for r in rows]))
    s_med = float(np.median([r["mean_sign"] for r in rows]))
    print(
        f"\nChosen (highest lowest read): {chosen['editor']}; its `F_ER` {chosen['f_er']:.3f} "
        f"(median of {len(rows)}: {f_med:.3f}), mean sign {chosen['mean_sign']:.3f} "
        f"(median {s_med:.3f}): "
        + (
            "at or above both medians"
            if chosen["f_er"] >= f_med and chosen["mean_sign"] >= s_med
            else "below a median"
        )
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
