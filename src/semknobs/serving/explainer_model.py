"""MLflow models-from-code entry point for the explainer bundle (kind ``explainer``).

``semknobs-explainer`` = AttGAN + regressor + the Eq. 2 knob search (see
:mod:`semknobs.explain.bundle`). Weights come from the model's safetensors artifacts; nothing is
unpickled.

Input: a DataFrame with a column ``image`` (base64 PNG or TIFF tiles at the model's tile size)
and optionally ``size``, ``porosity``, ``dispersity``, ``facetness`` (the tiles' expert scores;
estimated by the AttGAN discriminator when absent). In Python a uint8 array (n, S, S) works
too, either as ``tiles_frame(array)`` (:mod:`semknobs.serving.tile_codec`) or directly through
``model.unwrap_python_model().predict(None, array, params)``; MLflow's own ``model.predict``
enforces the logged DataFrame schema and refuses a bare array.
Params: ``target`` ("higher", "lower" or a stress in MPa), ``lam``, ``steps``, ``delta``,
``restarts``; defaults are the ``explain`` stage's settings stored in the bundle, and each has
a range (the bundle's ``limits``, from ``explain.limits``) checked before any work. A request
whose search runs past ``limits.deadline_s`` (model_config ``deadline_s`` overrides it) is
stopped and answered ``DEADLINE_EXCEEDED`` (HTTP 504).
Output: one row per tile (see :meth:`semknobs.explain.bundle.KnobExplainer.attribute`), then
``lot`` (the input's ``lot`` column, or ``all``: every tile of the request is one lot), each
tile's knob gradient ``gradient_<a>`` and its edits' meter-read gains ``gain_<a>``, and its lot's
gain-corrected knob gradient with a 95 % interval, mean gain and ``J^-T``-corrected attribution
(``lot_<value>_<a>``, ``lot_condition``: :mod:`semknobs.explain.lot_gradient`) and, with a
meter in the bundle, its lot's meter regression (``lot_meter_regression_{slope,low,high}_<a>``,
:mod:`semknobs.explain.natural`; empty for a lot of fewer than ``min_tiles`` tiles) and the sign
the two agree on (``lot_agreed_sign_<a>``: +1 or -1, 0 where they disagree or the lot has no
meter regression; :mod:`semknobs.explain.agreement`); without a meter in the bundle both the
meter-regression and the agreed-sign columns are empty. Param
``gradient=false`` skips that work (the columns come back empty). Last, the same on every row
and at no cost: the bundle's knob read (``knob_read_<a>``, and ``knob_read_low_<a>`` 1 where
the explain stage reported it low; empty for a bundle without one): how strongly the regressor
reads each knob's edits, over the lots the explain stage explained
(:func:`semknobs.explain.knob_read.from_metrics`), and its AttGAN's region misses
(``region_miss_<a>``, ``region_unlike_<a>`` 1 past an edit that changes nothing:
:mod:`semknobs.explain.edit_texture`; empty for a bundle without them) and the share of each
knob's read kept without the edits' background part (``crystal_share_<a>``,
``crystal_background_<a>`` 1 under half; empty for a bundle from before it).
Bad input raises an ``INVALID_PARAMETER_VALUE`` error (HTTP 400 from ``mlflow models serve``).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
import pandas as pd

from semknobs.attributes import ATTRIBUTES
from semknobs.model_folder import CONFIG_FILE, img_size
from semknobs.registry import ModelKind

KIND = "explainer"
SERVED_CHECKS = {  # edit_texture.checks section: ((its field, the served column's prefix), ...)
    "knob_read": (("read", "knob_read"), ("low", "knob_read_low")),
    "edit_texture": (("region_miss", "region_miss"), ("unlike_lots", "region_unlike")),
    "crystal_read": (("crystal_share", "crystal_share"), ("background_read", "crystal_background")),
}
READ_COLUMNS = [
    f"{name}_{a}" for fields in SERVED_CHECKS.values() for _, name in fields for a in ATTRIBUTES
]
SEARCH = ("target", "lam", "steps", "delta", "restarts")
PARAMS = (*SEARCH, "gradient")


def _signature(config: Mapping[str, Any]):
    """Columns: ``image`` (base64 PNG/TIFF) + optional attribute scores -> one row per tile;
    params: the Eq. 2 settings, defaulting to the bundle's."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, ParamSchema, ParamSpec, Schema

    from semknobs.config import from_mapping
    from semknobs.explain.counterfactual import CounterfactualParams

    inputs = Schema(
        [ColSpec("string", "image")]
        + [ColSpec("double", a, required=False) for a in ATTRIBUTES]
        + [ColSpec("string", "lot", required=False)]
    )
    numbers = ["prediction_mpa", "baseline_mpa", "target_mpa", "achieved_mpa", "distance"]
    columns = [ColSpec("double", c) for c in numbers]
    columns += [ColSpec("boolean", "success"), ColSpec("string", "attributes_from")]
    for a in ATTRIBUTES:
        kinds = ("start", "new", "change", "knob_delta", "measured_delta")
        columns += [ColSpec("double", f"{k}_{a}") for k in kinds]
    columns += [ColSpec("double", "measured_cosine"), ColSpec("string", "lot")]
    columns += [ColSpec("double", f"{k}_{a}") for k in ("gradient", "gain") for a in ATTRIBUTES]
    for name in served_names():
        kind = "boolean" if name.startswith("lot_corrected_flag_") else "double"
        columns += [ColSpec(kind, name)]
    columns += [ColSpec("double", name) for name in READ_COLUMNS]
    cf = from_mapping(CounterfactualParams, config.get("counterfactual") or {})
    params = ParamSchema(
        [
            ParamSpec("target", "string", str(cf.value if cf.target == "value" else cf.target)),
            ParamSpec("lam", "double", float(cf.lam)),
            ParamSpec("steps", "long", int(cf.steps)),
            ParamSpec("delta", "double", float(cf.delta)),
            ParamSpec("restarts", "long", int(cf.restarts)),
            ParamSpec("gradient", "boolean", True),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=Schema(columns), params=params)


def _example(config: Mapping[str, Any]) -> Any:
    from semknobs.serving.tile_codec import tiles_frame

    size = img_size(config, "explainer")
    yy, xx = np.mgrid[:size, :size]
    tile = (127 + 100 * np.sin(xx / 3.0) * np.cos(yy / 4.0)).round().astype(np.uint8)
    return tiles_frame(tile[None])


SPEC = ModelKind(
    KIND,
    "semknobs.serving.explainer_model",
    _signature,
    _example,
    ("timm", "pandas", "pillow", "tifffile"),
)


class ExplainerModel(mlflow.pyfunc.PythonModel):
    """Explains peak-stress predictions of SEM tiles in knob changes."""

    # No type hint on predict(), as in semknobs.serving.attgan_model: the logged signature rules.
    _skip_type_hint_validation = True

    def load_context(self, context: mlflow.pyfunc.PythonModelContext) -> None:
        import torch

        from semknobs.explain.bundle import KnobExplainer

        options = dict(context.model_config or {})
        torch.set_num_threads(int(options.get("threads", torch.get_num_threads())))
        folder = Path(context.artifacts[CONFIG_FILE]).parent
        self.explainer = KnobExplainer.from_folder(
            folder, batch_size=int(options.get("batch_size", 64))
        )
        self.deadline_s = float(options.get("deadline_s", self.explainer.limits.deadline_s))

    def predict(self, context, model_input, params: dict[str, Any] | None = None) -> pd.DataFrame:
        import time

        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import DEADLINE_EXCEEDED, INVALID_PARAMETER_VALUE

        from semknobs.explain.agreement import lot_agreement
        from semknobs.explain.counterfactual import SearchDeadline
        from semknobs.serving.tile_codec import decode_frame, decode_lots

        explainer = self.explainer
        deadline = time.monotonic() + self.deadline_s
        try:
            params = dict(params or {})
            unknown = set(params) - set(PARAMS)
            if unknown:
                raise ValueError(f"unknown params {sorted(unknown)}; known: {list(PARAMS)}")
            gradient = _flag(params.pop("gradient", True), "gradient")
            search = explainer.settings(**params)
            lots = None
            if isinstance(model_input, pd.DataFrame):
                if len(model_input) > explainer.limits.max_tiles:
                    raise ValueError(
                        f"{len(model_input)} tiles in one request; at most "
                        f"{explainer.limits.max_tiles}"
                    )
                percentiles = explainer.tile.get("percentiles", (0.5, 99.5))
                tiles, attributes = decode_frame(model_input, explainer.img_size, percentiles)
                lots = decode_lots(model_input)
            else:
                tiles, attributes = np.asarray(model_input), None
            explainer.check_tiles(tiles)  # count, dtype and shape, before any work
            readings = explainer.read_meter(tiles) if attributes is None else None
            (res,) = explainer.attribute_all(tiles, attributes, [search], deadline, readings)
            table = res.table
            table["lot"] = lots or "all"
            parts = [table]
            if gradient:
                lot = explainer.knob_gradient(tiles, attributes, table["lot"], deadline, readings)
                parts += [lot.tiles.drop(columns="lot"), lot.served_columns()]
                natural = explainer.meter_regression(
                    tiles, table["lot"], readings=readings, predictions=table["prediction_mpa"],
                    deadline=deadline,
                )  # fmt: skip
                if natural is not None:
                    fitted = natural.rows(table["lot"]).drop(columns="tiles")
                    parts.append(fitted.add_prefix("lot_meter_regression_"))
                    signs = lot_agreement(lot, natural).set_index("lot").loc[table["lot"]]
                    parts.append(signs.reset_index(drop=True).add_prefix("lot_"))
            out = pd.concat(parts, axis=1)  # without the gradient: its columns come back empty
            out = out.reindex(columns=[*table.columns, *_gradient_columns()])
            return out.join(_read_columns(explainer, out.index))
        except ValueError as exc:
            raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        except SearchDeadline as exc:
            raise MlflowException(
                f"{exc} ({self.deadline_s:g} s: explain.limits.deadline_s, or "
                "`semknobs serve --deadline`); ask for fewer tiles, steps or restarts",
                error_code=DEADLINE_EXCEEDED,
            ) from None


def _read_columns(explainer: Any, index: pd.Index) -> pd.DataFrame:
    """:data:`READ_COLUMNS` from the bundle's stored knob checks (:data:`SERVED_CHECKS`), the
    same on every row (NaN without; a flag as 0 / 1)."""
    from semknobs.explain.edit_texture import checks

    values = dict.fromkeys(READ_COLUMNS, np.nan)
    found = checks(explainer.metrics)
    for section, fields in SERVED_CHECKS.items():
        for a, entry in found.get(section, {}).items():
            values |= {f"{name}_{a}": float(entry[field]) for field, name in fields}
    return pd.DataFrame(values, index=index)


def _gradient_columns() -> list[str]:
    per_tile = [f"{k}_{a}" for k in ("gradient", "gain") for a in ATTRIBUTES]
    return per_tile + served_names()


def served_names() -> list[str]:
    from semknobs.explain.lot_gradient import SERVED

    natural = [
        f"lot_meter_regression_{k}_{a}" for k in ("slope", "low", "high") for a in ATTRIBUTES
    ] + [f"lot_agreed_sign_{a}" for a in ATTRIBUTES]
    return [f"lot_{col}_{a}" for col in SERVED for a in ATTRIBUTES] + ["lot_condition", *natural]


def _flag(value: Any, name: str) -> bool:
    """A boolean param as MLflow passes it (bool, or a string from a JSON request)."""
    if isinstance(value, bool | np.bool_):
        return bool(value)
    text = str(value).strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise ValueError(f"{name}={value!r}: expected true or false")


MODEL = ExplainerModel()
mlflow.models.set_model(MODEL)
