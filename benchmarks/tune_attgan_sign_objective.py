"""Does tune_attgan's truth-free ``val/sign_agreement`` see what the oracle saw? (issue 14)

Scores the baseline (``train_attgan``'s own params) and chosen fixed params with the stage's own
objectives, in one study workspace: the stage runs with ``n_trials`` set to the number of
trials, on a study named ``probe`` whose queue holds the fixed params first (the stage queues
the baseline after them). Rules and results: ``tune_attgan_sign_objective.md``.

    python benchmarks/tune_attgan_sign_objective.py <workspace> --scratch <folder> \
        --out <json> [--trials trial2,v1_concept55,...] [--seed 1]

``<workspace>`` is the main checkout (default study) or a study workspace of ``make science``
(``.science/confounded``); it needs ``data/`` and ``models/regressor`` reproduced.
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import optuna
import yaml

from semknobs.stages import tune_attgan as stage
from semknobs.train.tune_attgan import objectives

# the first study's trial 2 (tune_attgan_first_study.json); v1, v2 restore the concept weight
# relative to the reconstruction's (trial 2: 1.24, the baseline: 2.80)
TRIAL2 = {
    "lambda_rec": 22.124023820958175,
    "lambda_concept": 27.38969595234698,
    "lambda_texture": 5.926137099921849,
    "lr": 0.0009431947170347656,
    "model.shortcut_layers": 1,
}
FIXED = {
    "trial2": TRIAL2,
    "v1_concept55": TRIAL2 | {"lambda_concept": 55.0},
    "v2_rec10.7": TRIAL2 | {"lambda_rec": 10.7},
    "v3_lr5e-4": TRIAL2 | {"lr": 5e-4},  # trial 2's other two changes, one at a time
    "v4_texture2": TRIAL2 | {"lambda_texture": 2.0},
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("workspace", type=Path)
    ap.add_argument("--scratch", type=Path, required=True, help="the study journal and reports")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--trials", default="trial2", help=f"comma-separated, of {sorted(FIXED)}")
    ap.add_argument("--seed", type=int, help="train_attgan.train.seed for every trial")
    args = ap.parse_args()
    ws, scratch = args.workspace, args.scratch
    wanted = [t for t in args.trials.split(",") if t]
    unknown = sorted(set(wanted) - set(FIXED))
    if unknown:
        ap.error(f"--trials: unknown {unknown}; known {sorted(FIXED)}")
    scratch.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((ws / "params.yaml").read_text())
    params["tune_attgan"]["n_trials"] = len(wanted) + 1  # + the baseline
    if args.seed is not None:  # the seed is not tunable: every trial of the study trains with it
        params["train_attgan"]["train"]["seed"] = args.seed
    (scratch / "params.yaml").write_text(yaml.safe_dump(params))
    paths = stage.Paths(
        tiles_dir=ws / "data/tiles",
        lots=ws / params["data"]["lots"],
        splits=ws / "data/splits.json",
        out=scratch / "tuned.yaml",
        reports=scratch / "reports",
        measurements=ws / "data/measurements.csv",
        regressor_dir=ws / "models/regressor",
        storage=str(scratch / "probe.journal"),
        study_name="probe",
    )
    loaded = stage.load(scratch / "params.yaml", paths)
    names, directions = objectives(True, True)
    storage = stage.tuning.make_storage(paths.storage)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        study = optuna.create_study(
            study_name="probe", storage=storage, directions=directions, load_if_exists=True
        )
        study.set_metric_names(names)
        queued = {t.user_attrs.get("probe") for t in study.trials}
        for name in wanted:
            if name not in queued:
                study.enqueue_trial(FIXED[name], user_attrs={"probe": name})
    start = time.time()
    result = stage.run(loaded, paths)
    print(*result.summary, sep="\n")
    rows = [
        {
            "number": t.number,
            "trial": "baseline" if t.user_attrs.get("baseline") else t.user_attrs.get("probe"),
            "params": t.params,
            "metrics": {k: v for k, v in t.user_attrs.items() if k.startswith("val/")},
        }
        for t in optuna.load_study(study_name="probe", storage=storage).trials
    ]
    record = {"workspace": str(ws), "wall_s": time.time() - start, "trials": rows}
    args.out.write_text(json.dumps(record, indent=1))
    for r in rows:
        shown = {k.removeprefix("val/"): v for k, v in r["metrics"].items() if "control_" not in k}
        print(r["number"], r["trial"], " ".join(f"{k}={v:.3f}" for k, v in shown.items()))


if __name__ == "__main__":
    main()
