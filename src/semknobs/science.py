"""The study suite (``make science``): the whole pipeline on several synthetic studies, and one
table of how faithful every explainer is on each.

A study is an overlay of ``params.yaml`` (``studies/<name>.yaml``: another stress law, another
lot design). The empty overlay is the main workspace itself (``make repro``'s result); every
other study runs in its own workspace ``<workdir>/<name>``: a git repository holding the
working tree's files with the overlaid ``params.yaml``, reproduced with ``dvc repro`` (a rerun
only repeats what changed) into the main workspace's DVC cache, whose run cache restores a stage
that any workspace has run with the same code, data and params. All runs log to the main
workspace's MLflow store, with execution id ``science-<name>-<time>``, so the MLflow UI compares
studies side by side; a study's ``register`` stage gives its versions alias ``candidate-<name>``
(:func:`study_alias`), so the main workspace's ``@candidate`` stays the main pipeline's.

Output: ``metrics/science.json`` (the ``explain`` stage's keys under one prefix per study, plus
the regressor's lot R2 and the realised design correlation), a markdown table and a figure.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from semknobs.attributes import ATTRIBUTES
from semknobs.config import deep_merge, load_overrides, load_params
from semknobs.errors import DataError, SemknobsError
from semknobs.names import CANDIDATE
from semknobs.sections import check_sections
from semknobs.stage import write_json

EXPLAINERS = (
    "knob_gradient",
    "knob_gradient_lot",
    "knob_gradient_gain",
    "knob_gradient_tile_gain",
    "knob_gradient_crystal",
    "meter_regression",
    "counterfactual",
    "sensitivity",
    "correlation",
    "linear_model",
)
TABLE_METRICS = (
    "cosine_median",
    "centred_cosine",
    "lot_centred_cosine",
    *(f"sign_{a}" for a in ATTRIBUTES),
)


def study_alias(study: str) -> str:
    """The alias a study workspace registers (``candidate-<study>``), so a study's models never
    take the main workspace's ``@candidate``, which promotion reads."""
    return CANDIDATE + "-" + re.sub(r"[^\w-]", "_", study)


@dataclass(frozen=True)
class Study:
    name: str
    overlay: dict
    source: str = ""  # the overlay's file, named in errors

    @property
    def in_place(self) -> bool:
        return not self.overlay


def read_studies(paths: list[Path]) -> list[Study]:
    studies = []
    for path in paths:
        overlay = load_overrides(path)
        studies.append(Study(Path(path).stem, overlay, str(path)))
    names = [s.name for s in studies]
    if len(set(names)) != len(names):
        raise SemknobsError(f"study names must be unique, got {names}")
    aliases = [study_alias(name) for name in names]
    if len(set(aliases)) != len(aliases):
        raise SemknobsError(
            f"studies {names} would register under the same alias ({aliases}): rename one"
        )
    return studies


def study_params(root: Path, study: Study) -> dict:
    """``root``'s params.yaml with the study's overlay, as its workspace runs them."""
    params = deep_merge(load_params(Path(root) / "params.yaml"), study.overlay)
    if "alias" not in (study.overlay.get("register") or {}):  # the main @candidate stays the main's
        params["register"] = {**(params.get("register") or {}), "alias": study_alias(study.name)}
    return params


def check_study(root: Path, study: Study) -> None:
    """Every section the study's overlay changes parses as its stage will parse it (ParamsError
    naming the overlay and the key at fault): run for all studies before any of them runs."""
    check_sections(study_params(root, study), list(study.overlay), study.source or study.name)


def workspace_files(root: Path) -> list[str]:
    """The working tree's files git would commit (tracked or untracked, not ignored)."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return [f for f in out.split("\0") if f and (root / f).is_file()]


def prepare_workspace(root: Path, study: Study, workdir: Path) -> Path:
    """``workdir/<study>``: the working tree's files with the study's params, committed."""
    if not (root / ".dvc").is_dir():  # checked before anything is written
        raise SemknobsError(f"{root}: not a DVC repository (no .dvc/), so no study can run there")
    dest = workdir / study.name
    dest.mkdir(parents=True, exist_ok=True)
    for rel in workspace_files(root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / rel, target)
    params = study_params(root, study)
    header = (
        f"# Generated by `semknobs science`: {root / 'params.yaml'} with the overlay of study "
        f"'{study.name}'.\n"
    )
    (dest / "params.yaml").write_text(header + yaml.safe_dump(params, sort_keys=False))
    env = _git_env()
    if not (dest / ".git").exists():
        subprocess.run(["git", "init", "-q"], cwd=dest, check=True, env=env)
    share_cache(root, dest)
    subprocess.run(["git", "add", "-A"], cwd=dest, check=True, env=env)
    subprocess.run(
        ["git", "commit", "-qm", f"science: {study.name}", "--allow-empty"],
        cwd=dest,
        check=True,
        env=env,
    )
    return dest


def share_cache(root: Path, workspace: Path) -> None:
    """Point the workspace's DVC cache at the main one (``.dvc/config.local``, git-ignored):
    one copy of every output, and DVC's run cache restores a stage any workspace has already
    run with the same code, data and params instead of running it again."""
    cache = (root / ".dvc" / "cache").resolve()
    subprocess.run(
        [sys.executable, "-m", "dvc", "config", "--local", "cache.dir", str(cache)],
        cwd=workspace,
        check=True,
        capture_output=True,
        env=dict(os.environ, DVC_NO_ANALYTICS="1"),
    )


def reproduce(workspace: Path, root: Path, study: Study, stamp: str) -> None:
    env = dict(os.environ)
    env["MLFLOW_TRACKING_URI"] = env.get(
        "MLFLOW_TRACKING_URI", f"sqlite:///{(root / 'mlruns' / 'mlflow.db').resolve()}"
    )
    env["SEMKNOBS_EXECUTION_ID"] = f"science-{study.name}-{stamp}"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    print(f"science: study '{study.name}': dvc repro in {workspace}", flush=True)
    done = subprocess.run(["dvc", "repro"], cwd=workspace, env=env)
    if done.returncode != 0:
        raise SemknobsError(f"study '{study.name}': dvc repro failed in {workspace}")


def collect(workspace: Path, study: Study) -> dict[str, float]:
    """The study's keys: ``<study>/<explain key>``, its AttGAN's (``evaluate_attgan``: control,
    leakage, realism) where present, plus its regressor and design facts."""
    metrics = _read(workspace / "metrics" / "explain.json")
    attgan = workspace / "metrics" / "attgan.json"
    if attgan.exists():
        metrics = _read(attgan) | metrics
    out = {f"{study.name}/{k}": v for k, v in metrics.items()}
    regressor = _read(workspace / "metrics" / "regressor.json")
    out[f"{study.name}/test/lot_r2"] = regressor.get("test/lot_r2")
    truth = workspace / "data" / "synthetic" / "truth" / "law.json"
    if truth.exists():
        lots = json.loads(truth.read_text())["lots"]
        true = np.array([[v["true"][a] for a in ATTRIBUTES] for v in lots.values()])
        corr = np.corrcoef(true.T)
        np.fill_diagonal(corr, 0)
        out[f"{study.name}/design/max_abs_correlation"] = float(np.abs(corr).max())
    return out


def _read(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: unreadable metrics ({exc})") from None


def run_suite(
    *,
    root: Path,
    studies: list[Study],
    workdir: Path,
    out: Path,
    table: Path,
    figure: Path | None = None,
) -> dict[str, float]:
    root = Path(root).resolve()
    stamp = time.strftime("%Y%m%dT%H%M%S")
    results: dict[str, float] = {}
    for study in studies:  # all of them, before the first one's minutes of work
        check_study(root, study)
    for study in studies:
        started = time.perf_counter()
        workspace = root if study.in_place else prepare_workspace(root, study, Path(workdir))
        reproduce(workspace, root, study, stamp)
        results |= collect(workspace, study)
        minutes = (time.perf_counter() - started) / 60
        print(f"science: study '{study.name}' done in {minutes:.1f} min", flush=True)
    write_json(out, dict(sorted(results.items())))
    table.parent.mkdir(parents=True, exist_ok=True)
    table.write_text(markdown(results, [s.name for s in studies]))
    if figure is not None:
        from semknobs.stage import save_figure

        save_figure(suite_figure(results, [s.name for s in studies]), figure)
    return results


def _per_knob(get: Callable[[str], float | None], key: str) -> str:
    return " / ".join(_fmt(get(f"{key}_{a}")) for a in ATTRIBUTES)


def _fmt(value: float | None) -> str:
    return (
        "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"
    )


def markdown(results: dict[str, float], names: list[str]) -> str:
    """One table per study: every explainer's F_ER / F_EL, the regressor's F_RL, validity."""
    lines = ["# Explanation fidelity across the study suite", ""]
    lines.append(
        "Held-out test lots only. `er`: explanation vs the regressor's oracle response; `el`: vs "
        "the true law; `rl`: the regressor vs the law (the ceiling). Sign columns: accuracy per "
        "attribute where the reference sign is known (– where it is not, e.g. a zero-effect "
        "attribute under the law). Written by `make science` (`metrics/science.json`)."
    )
    for name in names:
        get = lambda key, name=name: results.get(f"{name}/{key}")  # noqa: E731
        lines += ["", f"## {name}", ""]
        facts = [
            f"regressor lot R² {_fmt(get('test/lot_r2'))}",
            f"max |corr| between true lot attributes {_fmt(get('design/max_abs_correlation'))}",
            f"counterfactual validity: model {_fmt(get('counterfactual/validity_model'))}, "
            f"law {_fmt(get('counterfactual/validity_law'))} "
            f"(over {int(get('counterfactual/validity_n') or 0)} converged searches)",
            f"the oracle against itself (split halves of its seeds): centred cosine "
            f"{_fmt(get('oracle/split_half_centred_cosine'))} per tile, "
            f"{_fmt(get('oracle/split_half_lot_centred_cosine'))} on lot means (a perfect "
            f"explainer's lot centred cosine: {_fmt(get('oracle/lot_centred_cosine_ceiling'))})",
        ]
        if get("control/mean_spearman") is not None:
            facts += [
                f"AttGAN control Spearman {_per_knob(get, 'control/spearman')} (meter ceiling "
                f"{_per_knob(get, 'control/ceiling')}), max leakage "
                f"{_fmt(get('control/max_leakage'))} "
                f"(ceiling {_fmt(get('control/ceiling_max_leakage'))}), PSNR "
                f"{_fmt(get('test/psnr'))} dB, reconstruction shift "
                f"{_fmt(get('recon/shift_pct_range'))} % of the stress range",
            ]
        if get("regressor/lots/flag_size") is not None:
            flagged = [a for a in ATTRIBUTES if get(f"regressor/lots/flag_{a}")]
            facts.append(
                "proxy flags (the regressor's measured use beyond what the lots support): "
                f"{', '.join(flagged) or 'none'}; knob gradient's flags agree on "
                f"{_fmt(get('knob_gradient/lots/flag_agreement'))} of the attributes"
            )
        if get("agreed_signs/er/coverage") is not None:
            entries = int(get("agreed_signs/er/entries") or 0)
            facts.append(
                "signs the gain-corrected knob gradient and the meter regression agree on: "
                f"{_fmt(get('agreed_signs/er/coverage'))} of the {entries} held-out "
                "lot-attributes with a known oracle sign, right on "
                f"{_fmt(get('agreed_signs/er/sign_accuracy'))} of them; the undetermined rest "
                f"holds {_fmt(get('agreed_signs/er/errors_flagged'))} of either explainer's "
                "wrong signs (size / porosity / dispersity / facetness: right on "
                f"{_per_knob(get, 'agreed_signs/er/sign')} at coverage "
                f"{_per_knob(get, 'agreed_signs/er/coverage')})"
            )
        lines += [f"- {f}" for f in facts] + [""]
        head = ["explainer", "fidelity", *(m.replace("_", " ") for m in TABLE_METRICS)]
        lines.append("| " + " | ".join(head) + " |")
        lines.append("|" + " --- |" * len(head))
        rows = [("regressor", "rl")] + [(e, f) for e in EXPLAINERS for f in ("er", "el")]
        for e, f in rows:
            cells = [_fmt(get(f"{e}/{f}/{m}")) for m in TABLE_METRICS]
            lines.append(f"| {e} | {f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def suite_figure(results: dict[str, float], names: list[str]):
    from matplotlib.figure import Figure

    metrics = (
        "cosine_median",
        "centred_cosine",
        "lot_centred_cosine",
        *(f"rho_{a}" for a in ATTRIBUTES),
    )
    fig = Figure(figsize=(4.2 * len(names), 3.6), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(names), sharey=True))
    rows = [("regressor", "rl")] + [(e, f) for e in EXPLAINERS for f in ("er", "el")]
    for ax, name in zip(axes, names):
        grid = np.array(
            [[_num(results.get(f"{name}/{e}/{f}/{m}")) for m in metrics] for e, f in rows],
            dtype=float,
        )
        im = ax.imshow(grid, vmin=-1, vmax=1, cmap="RdBu", aspect="auto")
        for i in range(len(rows)):
            for j in range(len(metrics)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=6.5)
        ax.set_xticks(range(len(metrics)), [m.replace("_", "\n") for m in metrics], fontsize=7)
        ax.set_yticks(range(len(rows)), [f"{e}/{f}" for e, f in rows], fontsize=7)
        ax.set_title(name)
    fig.colorbar(im, ax=axes.tolist(), shrink=0.8)
    fig.suptitle("Fidelity per study (held-out lots)")
    return fig


def _num(value: float | None) -> float:
    return float("nan") if value is None else float(value)


def _git_env() -> dict[str, str]:
    env = dict(os.environ)
    for key, value in {
        "GIT_AUTHOR_NAME": "semknobs",
        "GIT_AUTHOR_EMAIL": "semknobs@localhost",
        "GIT_COMMITTER_NAME": "semknobs",
        "GIT_COMMITTER_EMAIL": "semknobs@localhost",
    }.items():
        env.setdefault(key, value)
    return env


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m semknobs.science", description=__doc__)
    parser.add_argument("studies", nargs="+", type=Path, help="study overlays (studies/*.yaml)")
    parser.add_argument("--root", type=Path, default=Path("."), help="the main workspace")
    parser.add_argument("--workdir", type=Path, default=Path(".science"), help="study workspaces")
    parser.add_argument("--out", type=Path, default=Path("metrics/science.json"))
    parser.add_argument("--table", type=Path, default=Path("docs/science.md"))
    parser.add_argument("--figure", type=Path, default=Path("docs/images/science.png"))
    args = parser.parse_args(argv)
    try:
        run_suite(
            root=args.root,
            studies=read_studies(args.studies),
            workdir=args.workdir,
            out=args.out,
            table=args.table,
            figure=args.figure,
        )
    except SemknobsError as exc:
        print(f"science: error: {exc}", file=sys.stderr)
        return 2
    print(f"science: wrote {args.out}, {args.table}, {args.figure}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
