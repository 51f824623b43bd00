import pytest

from semknobs.config import from_mapping, load_section
from semknobs.data.synth import SynthParams
from semknobs.errors import ParamsError


def test_repo_params_load():
    params = load_section(SynthParams, "synthesize", "params.yaml")
    assert params.n_lots == 30 and params.law.k_hp > 0


@pytest.mark.parametrize(
    "mapping, message",
    [
        ({"n_lotz": 3}, "unknown parameter"),
        ({"n_lots": "many"}, "synthesize.n_lots: expected an integer"),
        ({"law": {"k_hp": "high"}}, "synthesize.law.k_hp: expected a number"),
        ({"bit_depth": 12}, "synthesize.bit_depth: expected one of"),
        ({"law": {"d_min_um": 9.0, "d_max_um": 3.0}}, "d_min_um < d_max_um"),
    ],
)
def test_bad_params_name_the_key(mapping, message):
    with pytest.raises(ParamsError, match=message):
        from_mapping(SynthParams, mapping, where="synthesize")
