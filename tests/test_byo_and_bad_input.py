"""Bring-your-own data and bad input, through the real stage scripts (in-process, real MLflow).

A user dataset: a few 16-bit TIFF scans with an information bar per lot folder, plus lots.csv.
Every bad input must give exit status 2, a message naming the culprit, and no partial outputs.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml
from PIL import Image

from semknobs.data.render import RenderParams, render_scan

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
