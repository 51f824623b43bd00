"""Bring-your-own data and bad input, through the real stage scripts (in-process, real MLflow).

A user dataset: a few 16-bit TIFF scans with an information bar per lot folder, plus lots.csv.
Every bad input must give exit status 2, a message naming the culprit, and no partial outputs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from semknobs.data.render import RenderParams, render_scan
from semknobs.stage import StageResult

from .conftest import ROOT, write_scan

LOTS = ["Alpha", "B-7", "c_3"]


def _user_scan(seed: int, bar: int = 40) -> np.ndarray:
    """A real-looking 16-bit SEM scan (not one of ours: other size, other bar) of 256 x 384."""
    rng = np.random.default_rng(seed)
    fields = np.tile(rng.uniform(0.2, 0.8, 4), (2, 3, 1))
    image = np.clip(render_scan(fields, 128, RenderParams(), rng) * 0.8 + 0.1, 0, 1)
    scan = np.round(image * 65535).astype(np.uint16)
    strip = np.zeros((bar, scan.shape[1]), np.uint16)
    strip[12:24, 20:300:4] = 65535
    return np.concatenate([scan, strip])


def _user_data(root, lots=LOTS, scans_per_lot=2):
    raw = root / "raw"
    for i, lot in enumerate(lots):
        for k in range(scans_per_lot):
            write_scan(raw / lot / f"img{k}.tif", _user_scan(10 * i + k))
    rows = ["lot,size,porosity,dispersity,facetness,peak_stress"]
    rows += [f"{lot},{2 + i},{3.5 - i},{4},{1 + 2 * i},{30 + 5 * i}" for i, lot in enumerate(lots)]
    (root / "lots.csv").write_text("\n".join(rows) + "\n")
    return raw, root / "lots.csv"


@pytest.fixture
def user(tmp_path):
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["validate"]["min_tiles_per_lot"] = 4
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    raw, lots = _user_data(tmp_path)
    return {
        "root": tmp_path,
        "raw": raw,
        "lots": lots,
        "tiles": tmp_path / "tiles",
        "reports": tmp_path / "reports",
    }


def _tile(run_stage, u):
    return run_stage(
        "tile",
        "--raw-dir",
        u["raw"],
        "--lots",
        u["lots"],
        "--tiles-dir",
        u["tiles"],
        "--reports",
        u["reports"] / "tile",
    )


def _validate(run_stage, u):
    return run_stage(
        "validate",
        "--lots",
        u["lots"],
        "--tiles-dir",
        u["tiles"],
        "--reports",
        u["reports"] / "validate",
    )


def test_user_data_tiles_and_validates(run_stage, user):
    assert _tile(run_stage, user) == 0
    manifest = (user["tiles"] / "manifest.csv").read_text()
    assert manifest.count("\n") == 1 + 3 * 2 * 6  # 3 lots x 2 scans x (2 x 3 tiles); bar detected
    assert (user["reports"] / "tile" / "contact_sheet.png").exists()
    assert _validate(run_stage, user) == 0
    summary = json.loads((user["reports"] / "validate" / "summary.json").read_text())
    assert summary["success"] and summary["tiles_per_lot"] == {lot: 12 for lot in LOTS}
    assert (user["reports"] / "validate" / "data_docs" / "index.html").exists()


def _expect_failure(capsys, status, *culprits):
    assert status == 2
    err = capsys.readouterr().err
    for culprit in culprits:
        assert culprit in err, err
    assert "Traceback" not in err


def test_corrupt_image(run_stage, user, capsys):
    (user["raw"] / "B-7" / "img1.tif").write_bytes(b"II*\x00 this is not a tiff")
    _expect_failure(capsys, _tile(run_stage, user), "B-7/img1.tif", "unreadable")
    assert not user["tiles"].exists()


def test_scan_smaller_than_one_tile(run_stage, user, capsys):
    noisy = np.random.default_rng(0).integers(1000, 60000, (100, 90)).astype(np.uint16)
    write_scan(user["raw"] / "c_3" / "tiny.png", noisy)
    _expect_failure(capsys, _tile(run_stage, user), "c_3/tiny.png", "smaller than one 128-px tile")
    assert not user["tiles"].exists()


def test_rgb_scans_converted_when_grey_and_refused_when_colour(run_stage, user, capsys):
    grey = (_user_scan(99) >> 8).astype(np.uint8)
    Image.fromarray(np.stack([grey] * 3, -1)).save(user["raw"] / "Alpha" / "grey_rgb.png")
    assert _tile(run_stage, user) == 0
    assert "grey_rgb" in (user["tiles"] / "manifest.csv").read_text()
    colour = np.stack([grey, grey // 2, grey], -1)
    Image.fromarray(colour).save(user["raw"] / "Alpha" / "eds_map.png")
    _expect_failure(capsys, _tile(run_stage, user), "Alpha/eds_map.png", "colour image")


def test_bad_lot_folder_name(run_stage, user, capsys):
    (user["raw"] / "B-7").rename(user["raw"] / "B 7")
    _expect_failure(capsys, _tile(run_stage, user), "B 7", "[A-Za-z0-9_-]+")
    assert not user["tiles"].exists()


@pytest.mark.parametrize(
    "edit, culprits",
    [
        (
            lambda t: (
                t.replace(
                    "lot,size,porosity,dispersity,facetness,peak_stress",
                    "lot,size,porosity,dispersity,peak_stress",
                )
                .replace(",1,30\n", ",30\n")
                .replace(",3,35\n", ",35\n")
                .replace(",5,40\n", ",40\n")
            ),
            ["facetness", "lacks required column"],
        ),
        (lambda t: t.replace("B-7,3,2.5", "B-7,,2.5"), ["B-7", "size"]),
        (lambda t: t + "Alpha,1,1,1,1,50\n", ["Alpha", "unique"]),
        (lambda t: t.replace(",40\n", ",-40\n"), ["c_3", "peak_stress"]),
        (lambda t: t + "../x,1,1,1,1,50\n", ["../x"]),
        (
            lambda t: t.replace("c_3,", "Zeta,"),
            ["c_3", "Zeta"],
        ),  # folder without label; label without scans
    ],
    ids=[
        "missing-column",
        "nan",
        "duplicate-lot",
        "negative-stress",
        "path-characters",
        "unmatched-lots",
    ],
)
def test_bad_labels_stop_validation(run_stage, user, capsys, edit, culprits):
    assert _tile(run_stage, user) == 0
    user["lots"].write_text(edit(user["lots"].read_text()))
    _expect_failure(capsys, _validate(run_stage, user), *culprits)
    summary = json.loads((user["reports"] / "validate" / "summary.json").read_text())
    assert summary["success"] is False  # the report is complete; downstream refuses it


def test_split_refuses_unvalidated_data(run_stage, user, capsys):
    assert _tile(run_stage, user) == 0
    user["lots"].write_text(user["lots"].read_text().replace(",40\n", ",-40\n"))
    assert _validate(run_stage, user) == 2
    capsys.readouterr()
    summary = user["reports"] / "validate" / "summary.json"
    out, reports = user["root"] / "splits.json", user["reports"] / "split"
    status = run_stage(
        "split", "--lots", user["lots"], "--validation", summary, "--out", out, "--reports", reports
    )
    _expect_failure(capsys, status, "did not pass validation")
    assert not (user["root"] / "splits.json").exists()


def test_failed_stage_marks_its_mlflow_run_failed(run_stage, user, mlflow_tmp, capsys):
    import mlflow

    (user["raw"] / "B-7" / "img1.tif").write_bytes(b"garbage")
    assert _tile(run_stage, user) == 2
    runs = mlflow.search_runs(experiment_names=["semknobs"])
    assert runs["status"].tolist() == ["FAILED"] and runs["tags.semknobs.stage"].tolist() == [
        "tile"
    ]


def test_unwritable_output_is_a_clear_error_and_a_failed_run(run_stage, user, mlflow_tmp, capsys):
    import mlflow

    assert _tile(run_stage, user) == 0
    assert _validate(run_stage, user) == 0
    capsys.readouterr()
    params = yaml.safe_load((user["root"] / "params.yaml").read_text())
    params["split"].update(test_lots=1, n_folds=2)  # the user study has 3 lots
    (user["root"] / "params.yaml").write_text(yaml.safe_dump(params))
    blocker = user["root"] / "not-a-folder"
    blocker.write_text("a file where the output folder should be")
    summary = user["reports"] / "validate" / "summary.json"
    out = blocker / "splits.json"
    status = run_stage(
        "split", "--lots", user["lots"], "--validation", summary, "--out", out,
        "--reports", user["reports"] / "split",
    )  # fmt: skip
    err = capsys.readouterr().err
    assert status == 2 and "split: error:" in err and "not-a-folder" in err
    assert "Traceback" not in err
    assert not (user["reports"] / "split").exists() or not any(
        (user["reports"] / "split").iterdir()
    )
    runs = mlflow.search_runs(experiment_names=["semknobs"])
    split = runs[runs["tags.semknobs.stage"] == "split"]
    assert split["status"].tolist() == ["FAILED"]


def test_full_disk_message_names_the_path():
    import errno

    from semknobs.stage import describe_os_error

    text = describe_os_error(OSError(errno.ENOSPC, "No space left on device", "/data/x.npy"))
    assert "no space left" in text and "/data/x.npy" in text
    text = describe_os_error(PermissionError(errno.EACCES, "Permission denied", "/ro/out"))
    assert "cannot write /ro/out" in text


# --------------------------------------------------------------------------------------------
# every problem at once; every output or none; no temporary files


def _temporaries(root) -> list[str]:
    """Temporary names atomic writes use (``.<name>.<random>.<host>.<pid>.tmp``) under root."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob(".*.tmp"))


def test_label_and_tile_problems_are_listed_together(run_stage, user, capsys):
    """The README's example: bad label cells (schema) do not hide the tile quality suite; every
    line names its file and row (CSV line or scan tile) and column."""
    import tifffile

    scan = tifffile.imread(user["raw"] / "B-7" / "img1.tif")
    scan[:128, 128:256] = 30000  # one blank tile: row 0 col 1
    write_scan(user["raw"] / "B-7" / "img1.tif", scan)
    (user["raw"] / "Alpha" / "notes.txt").write_text("not a scan")
    (user["raw"] / "Alpha" / "img9.jpg").write_bytes(b"\xff\xd8\xff")
    lots = user["lots"]
    lots.write_text(  # no facetness column, a negative stress, B-7 twice, L31 without scans
        "lot,size,porosity,dispersity,peak_stress\n"
        "Alpha,2,3.5,4,30\nB-7,3,2.5,4,35\nc_3,4,1.5,4,-40\nB-7,1,1,1,20\nL31,1,1,1,10\n"
    )

    assert _tile(run_stage, user) == 0  # labels are not the tile stage's business
    out = capsys.readouterr().out
    assert "Alpha/img9.jpg, Alpha/notes.txt" in out  # skipped files are named, not hidden
    assert "contact sheet in lot-name order" in out
    assert (user["reports"] / "tile" / "contact_sheet.png").is_file()

    status = _validate(run_stage, user)
    err = capsys.readouterr().err
    expected = [
        f"{lots}: lot label table lacks required column(s) facetness",
        f"{lots}: lot 'B-7' appears 2 times (line 3, line 5); lot values must be unique",
        f"{lots}: line 4 (lot 'c_3'): peak_stress = -40.0 fails greater_than(0)",
        "lot B-7: 1 blank tile (std < 4): B-7/img1.tif row 0 col 1",
        f"{lots}: line 6: lot L31 has a label row but no scans",
    ]
    assert status == 2 and "Data validation FAILED (5 problems)" in err, err
    for line in expected:
        assert sum(line in x for x in err.splitlines()) == 1, (line, err)
    assert "not run" not in err and "Traceback" not in err
    report = (user["reports"] / "validate" / "report.txt").read_text()
    assert err.strip() == f"validate: error: {report.strip()}"
    assert _temporaries(user["root"]) == []


@pytest.mark.parametrize(
    "labels",
    [
        None,
        b"",
        b"\xff\xfe\x00garbage",
        b"lot,size\nAlpha,1\n",
        b"lot,size,porosity,dispersity,facetness,peak_stress\nL1,1,1,1,1,1\n",
        b'lot,size\n"Alpha,1\n',
    ],
    ids=["missing", "empty", "binary", "few-columns", "no-tiled-lot", "unparsable"],
)
def test_contact_sheet_labels_are_read_leniently(tmp_path, labels):
    """The tile stage's only use of lots.csv: anything unusable means name order, never an
    error (the stage above writes its sheet either way)."""
    from semknobs.stages.tile import sheet_labels

    path = tmp_path / "lots.csv"
    if labels is not None:
        path.write_bytes(labels)
    assert sheet_labels(path, pd.Series(LOTS)) is None


def test_contact_sheet_labels_tolerate_bad_cells(tmp_path):
    from semknobs.stages.tile import sheet_labels

    path = tmp_path / "lots.csv"
    path.write_text(
        "lot,size,porosity,dispersity,facetness,peak_stress\n"
        "Alpha,x,1,1,1,-5\nB-7,2,,1,1,1\nAlpha,3,3,3,3,3\nZeta,1,1,1,1,1\n"
    )
    lots = sheet_labels(path, pd.Series(LOTS))
    assert lots["lot"].tolist() == ["Alpha", "B-7"]  # first row of a repeated lot; tiled only
    assert np.isnan(lots.loc[0, "size"]) and np.isnan(lots.loc[1, "porosity"])


@dataclass(frozen=True)
class _ForgetfulPaths:
    out: Path
    reports: Path


@dataclass(frozen=True)
class _NoParams:
    pass


def _forget(params: _NoParams, paths: _ForgetfulPaths, ctx=None) -> StageResult:
    paths.out.write_text("written")
    return StageResult()  # and forgot paths.reports


def test_a_stage_that_returns_without_its_outputs_fails(tmp_path, mlflow_tmp, capsys):
    """The generic guard (``OUTS``): exit 2 naming the output, never 0 for DVC to find it
    missing; the MLflow run ends FAILED."""
    import types

    import mlflow

    from semknobs.stage import stage_cli

    stage = types.ModuleType("forgetful")
    stage.__dict__.update(NAME="forgetful", Params=_NoParams, Paths=_ForgetfulPaths, run=_forget)
    stage.OUTS = ("out", "reports")
    (tmp_path / "params.yaml").write_text("forgetful: {}\n")
    argv = ["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "o.txt")]
    status = stage_cli(stage)([*argv, "--reports", str(tmp_path / "r")])
    err = capsys.readouterr().err
    assert status == 2 and f"{tmp_path / 'r'} (--reports)" in err and "o.txt" not in err, err
    assert mlflow.search_runs(experiment_names=["semknobs"])["status"].tolist() == ["FAILED"]
    stage.OUTS = ("out",)
    assert stage_cli(stage)([*argv, "--reports", str(tmp_path / "r")]) == 0


def test_sigterm_mid_validation_leaves_no_partial_report(run_stage, user, mlflow_tmp):
    """A real interrupt of the real script, as DVC runs it: ``python pipelines/validate.py``
    killed while its report folder is being built (the GX suite takes seconds)."""
    import signal
    import subprocess
    import sys
    import time

    import mlflow

    assert _tile(run_stage, user) == 0
    reports = user["reports"]
    argv = ["--params", user["root"] / "params.yaml", "--lots", user["lots"],
            "--tiles-dir", user["tiles"], "--reports", reports / "validate"]  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, ROOT / "pipelines" / "validate.py", *map(str, argv)],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not list(reports.glob(".validate.*.tmp")) and proc.poll() is None:
            assert time.monotonic() < deadline, "the report folder never appeared"
            time.sleep(0.01)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    finally:
        proc.kill()
        proc.wait()
    err = proc.stderr.read()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "Traceback" not in err
    assert not (reports / "validate").exists()  # no report rather than half of one
    assert _temporaries(user["root"]) == []
    runs = mlflow.search_runs(experiment_names=["semknobs"])
    validate = runs[runs["tags.semknobs.stage"] == "validate"]
    assert validate["status"].tolist() == ["KILLED"]  # stopped, not left RUNNING


def test_declared_outputs_are_the_dvc_outs():
    """``OUTS`` of a stage names the paths that hold dvc.yaml's outs of that stage: each out is
    a declared path or lies inside one, and each declared path holds an out."""
    import importlib
    import shlex

    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    checked = []
    for name, spec in stages.items():
        module = importlib.import_module(f"semknobs.stages.{name}")
        if not hasattr(module, "OUTS"):
            continue
        words = shlex.split(spec["cmd"])
        args = {words[i][2:]: words[i + 1] for i in range(len(words) - 1) if words[i][:2] == "--"}
        declared = [Path(args[field.replace("_", "-")]) for field in module.OUTS]
        outs = [Path(next(iter(o)) if isinstance(o, dict) else o) for o in spec.get("outs", [])]
        for out in outs:
            assert any(out == d or d in out.parents for d in declared), (name, out)
        for path in declared:
            assert any(out == path or path in out.parents for out in outs), (name, path)
        checked.append(name)
    assert {"tile", "validate"} <= set(checked)
