"""The served explainer's request gate and search limits: hostile settings are refused before
any work, with a message naming them (the loopback test is in test_lifecycle.py)."""

import json
import re

import pytest

from semknobs.explain.counterfactual import CounterfactualParams
from semknobs.explain.limits import SearchLimits, search_params
from semknobs.serving.app import check_request

KNOWN = {"target", "lam", "steps", "delta", "restarts"}
MAX = 2**20


def _body(**params) -> bytes:
    return json.dumps(
        {"dataframe_split": {"columns": ["image"], "data": [["x"]]}, "params": params}
    ).encode()


@pytest.mark.parametrize(
    ("body", "named"),
    [
        (_body(stepz=3), "stepz"),
        (b'{"params": {"lam": NaN}}', "NaN"),
        (b'{"params": {"lam": Infinity}}', "Infinity"),
        (b'{"params": {"lam": -Infinity}}', "Infinity"),
        (b'{"params": [1, 2]}', "object"),
        (b"{not json", "JSON"),
        (b" " * (MAX + 1), "MiB"),
    ],
)
def test_the_gate_refuses_and_names(body: bytes, named: str) -> None:
    with pytest.raises(ValueError, match=named):
        check_request(body, KNOWN, MAX)


def test_a_numeric_target_passes_as_text_and_the_rest_untouched() -> None:
    out = json.loads(check_request(_body(target=70, steps=5), KNOWN, MAX))
    assert out["params"] == {"target": "70.0", "steps": 5}
    same = _body(target="higher")
    assert check_request(same, KNOWN, MAX) is same


DEFAULTS = CounterfactualParams()


@pytest.mark.parametrize(
    ("changes", "named"),
    [
        ({"steps": 10_000_000}, "steps=10000000"),
        ({"restarts": 0}, "restarts=0"),
        ({"lam": -1.0}, "lam=-1.0"),
        ({"lam": float("nan")}, "lam=nan"),
        ({"delta": float("inf")}, "delta=inf"),
        ({"delta": 0.0}, "delta=0.0"),
        ({"target": "nan"}, "target=nan"),
        ({"target": "inf"}, "target=inf"),
        ({"target": "-5"}, "target=-5.0"),
        ({"target": "sideways"}, "higher"),
        ({"steps": 2.5}, "whole number"),
        ({"steps": True}, "number"),
        ({"lam": "1"}, "number"),
        ({"stepz": 3}, "stepz"),
        ({"optimizer": "sgd"}, "optimizer='sgd' (allowed adam, bfgs)"),
        ({"first_step": 0.0}, "first_step=0.0"),
        ({"first_step": float("inf")}, "first_step=inf"),
    ],
)
def test_search_settings_out_of_range_are_refused(changes: dict, named: str) -> None:
    with pytest.raises(ValueError, match=re.escape(named)):
        search_params(DEFAULTS, **changes)


def test_every_problem_is_named_at_once_and_good_settings_pass() -> None:
    with pytest.raises(ValueError) as err:
        search_params(DEFAULTS, steps=0, restarts=99, lam=1e9)
    assert all(k in str(err.value) for k in ("steps=0", "restarts=99", "lam="))
    params = search_params(DEFAULTS, target=70, steps=50, limits=SearchLimits(max_steps=50))
    assert (params.target, params.value, params.steps) == ("value", 70.0, 50)
    with pytest.raises(ValueError, match="allowed 1..50"):
        search_params(DEFAULTS, steps=51, limits=SearchLimits(max_steps=50))
