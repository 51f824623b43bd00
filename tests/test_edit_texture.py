"""The editor's region misses as explanations carry them (semknobs.explain.edit_texture)."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from semknobs.attributes import ATTRIBUTES
from semknobs.errors import DataError
from semknobs.explain.edit_texture import (
    CRYSTAL_MIN_SHARE,
    KEYS,
    NO_EDIT_MISS,
    caveat_summary,
    caveats,
    checks,
    crystal_from_metrics,
    crystal_line,
    from_file,
    from_metrics,
    region_metrics,
    summary_line,
    texture_line,
)
from semknobs.explain.knob_read import read_metrics

# the committed editor's evaluate_attgan figures, beside metrics of other kinds
STORED = {
    "test/psnr": 23.3,
    "texture/miss_size": 0.4,  # the whole-tile miss: not a region miss
    "texture/region_miss_size": 3.13,
    "texture/region_miss_porosity": 0.87,
    "texture/region_miss_dispersity": 0.79,
    "texture/region_miss_facetness": 1.73,
}


def test_from_metrics_flags_exactly_the_knobs_past_an_edit_that_changes_nothing() -> None:
    entry = from_metrics(STORED)
    assert list(entry) == list(ATTRIBUTES)
    assert {a: v["region_miss"] for a, v in entry.items()} == {
        "size": 3.13, "porosity": 0.87, "dispersity": 0.79, "facetness": 1.73,
    }  # fmt: skip
    assert [a for a, v in entry.items() if v["unlike_lots"]] == ["size", "facetness"]
    at_limit = STORED | {KEYS["porosity"]: NO_EDIT_MISS}  # as far off as no edit: not past it
    assert from_metrics(at_limit)["porosity"]["unlike_lots"] is False


def test_only_the_region_misses_are_kept_and_a_partial_or_missing_set_is_none() -> None:
    assert region_metrics(STORED) == {k: STORED[k] for k in KEYS.values()}
    assert region_metrics({"test/psnr": 23.3}) == {} and from_metrics({}) is None
    partial = {k: v for k, v in STORED.items() if k != KEYS["facetness"]}
    assert from_metrics(partial) is None  # an editor evaluated before the region report


def test_a_nan_miss_stored_as_null_is_not_flagged() -> None:
    entry = from_metrics(STORED | {KEYS["size"]: None})
    assert math.isnan(entry["size"]["region_miss"]) and entry["size"]["unlike_lots"] is False


def test_the_line_names_every_knob_and_marks_the_unlike_ones() -> None:
    line = texture_line(from_metrics(STORED))
    assert line == (
        "size 3.13 (unlike the lots), porosity 0.87, dispersity 0.79, "
        "facetness 1.73 (unlike the lots)"
    )


def test_the_printed_line_says_what_the_threshold_means() -> None:
    line = summary_line(from_metrics(STORED))
    assert line.endswith(texture_line(from_metrics(STORED)))
    assert f"past {NO_EDIT_MISS:g}: the edit is no material change a lot shows" in line


def test_from_file_reads_a_metrics_file_and_names_a_bad_one(tmp_path) -> None:
    good = tmp_path / "attgan.json"
    good.write_text(json.dumps(STORED))
    assert from_file(good) == from_metrics(STORED)
    for name, text in (("broken.json", "{not json"), ("list.json", "[1, 2]")):
        (tmp_path / name).write_text(text)
        with pytest.raises(DataError, match=name):
            from_file(tmp_path / name)
    with pytest.raises(DataError, match="absent.json"):
        from_file(tmp_path / "absent.json")


def test_the_caveats_name_each_knob_the_stored_checks_flag() -> None:
    read = pd.DataFrame(
        {"attribute": list(ATTRIBUTES), "read": [0.7, 2.0, 2.8, -0.3], "low": [0, 0, 0, 1]}
    ).astype({"low": bool})
    found = checks(read_metrics(read) | STORED)
    assert set(found) == {"knob_read", "edit_texture"}
    assert [caveats(a, found) for a in ATTRIBUTES] == [
        ["edits unlike lots"], [], [], ["low read", "edits unlike lots"]
    ]  # fmt: skip
    assert caveats("size", None) == [] and caveats("size", {"knob_read": found["knob_read"]}) == []
    assert caveat_summary(found) == "low read: facetness; edits unlike lots: size, facetness"
    only_texture = checks(STORED)  # an explain run without a meter: no read
    assert caveat_summary(only_texture) == "edits unlike lots: size, facetness"
    calm = STORED | {KEYS["size"]: 0.5, KEYS["facetness"]: 0.5}
    assert caveat_summary(checks(calm)) == "edits unlike lots: none"
    assert checks({}) == {} and caveat_summary({}) == ""


def test_the_crystal_read_flags_a_knob_read_mostly_in_the_edits_background() -> None:
    shares = dict(zip(ATTRIBUTES, (0.34, 1.0, 0.5, None)))  # None: NaN stored as null
    stored = {f"knob_gradient_crystal/whole/share_{a}": s for a, s in shares.items()}
    found = crystal_from_metrics(stored | STORED)
    assert [found[a]["background_read"] for a in ATTRIBUTES] == [True, False, False, False]
    assert found["size"]["crystal_share"] == 0.34 and math.isnan(
        found["facetness"]["crystal_share"]
    )
    assert crystal_from_metrics(STORED) is None  # an explain run before the crystal read
    del stored["knob_gradient_crystal/whole/share_facetness"]
    assert crystal_from_metrics(stored) is None  # a partial set
    both = checks(stored | {"knob_gradient_crystal/whole/share_facetness": 0.2} | STORED)
    assert [caveats(a, both) for a in ATTRIBUTES] == [
        ["edits unlike lots", "read in the edits' background"], [], [],
        ["edits unlike lots", "read in the edits' background"],
    ]  # fmt: skip
    assert caveat_summary(both) == (
        "edits unlike lots: size, facetness; read in the edits' background: size, facetness"
    )
    line = crystal_line(found)
    assert f"under {CRYSTAL_MIN_SHARE:g}" in line
    assert "size +0.34 (read in the edits' background), porosity +1.00" in line


def test_the_gradient_figure_writes_each_knobs_caveats_under_its_bars() -> None:
    """Read low and edits unlike the lots, as the bundle stores them, under each knob; a bundle
    without checks draws the plain names."""
    import numpy as np

    from semknobs.explain.files import gradient_figure

    read = {a: {"read": r, "low": r < 0.3} for a, r in zip(ATTRIBUTES, (0.7, 2.0, 2.8, -0.3))}
    given = {"knob_read": read, "edit_texture": from_metrics(STORED)}
    k = len(ATTRIBUTES)
    lot = pd.DataFrame({"attribute": list(ATTRIBUTES), "tiles": 6, "corrected_flag": False})
    for col in ("gradient", "gain_corrected", "corrected"):
        lot[col], lot[f"{col}_low"], lot[f"{col}_high"] = np.ones(k), np.zeros(k), 2 * np.ones(k)
    for found, expected in (
        (given, "facetness\nlow read\nedits unlike lots"),
        (None, "facetness"),
    ):
        left = gradient_figure("scan", lot, found).axes[0]
        labels = [t.get_text() for t in left.get_xticklabels()]
        assert labels[0] == ("size\nedits unlike lots" if found else "size")
        assert labels[1] == "porosity" and labels[3] == expected
