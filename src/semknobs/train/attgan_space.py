"""The AttGAN tuner's search space (``tune_attgan.space``, declared in ``params.yaml`` only):
each key names a ``train_attgan.train`` parameter (the architecture's under ``model:``) and gives
``[low, high]`` for a number (floats log-uniform, integers uniform) or the choices for a
true/false or text parameter. ``model.enc_layers`` is drawn first and sets ``dec_layers`` too,
and ``model.shortcut_layers`` is kept below the trial's number of layers; keys that are not
hyperparameters (``FIXED``) are refused. Every check runs before any trial trains, on each bound
and choice and on every combination of the choices.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import typing
from dataclasses import dataclass
from typing import Any

import optuna

from semknobs.errors import ParamsError
from semknobs.models.attgan import AttGANConfig
from semknobs.train.attgan_params import AttGANTrainParams

# train params a study may not vary, and why
FIXED = {
    "steps": "trials train trial_steps",
    "seed": "trials must differ in the params only",
    "device": "not a hyperparameter",
    "checkpoint_every": "not a hyperparameter",
    "log_every": "not a hyperparameter",
    "model.img_size": "the tiles' size",
    "model.channels": "the tiles' channels",
    "model.n_attrs": "the four concepts",
    "model.dec_layers": "follows model.enc_layers",
    "concept_knob_weight": "a list per knob; tune lambda_concept (README: editor runs)",
    "concept_off_knob_weight": "a list per knob; tune concept_off_weight (README: editor runs)",
}


@dataclass(frozen=True)
class Dimension:
    """One tuned parameter: ``key`` as in the space, its type and its range or choices."""

    key: str
    kind: type
    values: tuple[Any, ...]


def dimensions(space: dict[str, Any], where: str = "tune_attgan.space") -> list[Dimension]:
    """The space checked against ``AttGANTrainParams``: known keys, typed, finite, in order.
    Architecture keys sit under ``model:`` as in ``train_attgan.train``; a dimension's key (and
    its Optuna name) is ``model.<name>``."""
    train_types = typing.get_type_hints(AttGANTrainParams)
    model_types = typing.get_type_hints(AttGANConfig)
    del train_types["model"], train_types["concept"]  # nested sections: not tunable here
    dims = []
    model = space.get("model", {})
    if not isinstance(model, dict):
        raise ParamsError(f"{where}.model: expected a mapping of architecture keys, got {model!r}")
    dotted = [k for k in space if "." in k]
    if dotted:
        raise ParamsError(f"{where}.{dotted[0]}: nest architecture keys under model:")
    flat = {k: v for k, v in space.items() if k != "model"}
    flat |= {f"model.{k}": v for k, v in model.items()}
    for key in flat:
        if key in FIXED:
            raise ParamsError(f"{where}.{key}: not tunable ({FIXED[key]})")
    if "model.enc_layers" in flat:  # drawn first: shortcut_layers is bounded by it
        flat = {"model.enc_layers": flat.pop("model.enc_layers"), **flat}
    for key, values in flat.items():
        types = model_types if key.startswith("model.") else train_types
        name = key.removeprefix("model.")
        kind = types.get(name)
        if kind is None:
            known = sorted(train_types) + [f"model.{k}" for k in sorted(model_types)]
            raise ParamsError(f"{where}.{key}: not a train_attgan.train parameter; known: {known}")
        at = f"{where}.{key}"
        if not isinstance(values, list):
            raise ParamsError(f"{at}: expected [low, high] or a list of choices, got {values!r}")
        if kind in (int, float):
            if len(values) != 2 or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ParamsError(f"{at}: expected [low, high] numbers, got {values!r}")
            low, high = values
            if not (math.isfinite(low) and math.isfinite(high) and low <= high):
                raise ParamsError(f"{at}: expected finite low <= high, got {values!r}")
            if kind is int and not all(isinstance(v, int) for v in values):
                raise ParamsError(
                    f"{at}: an integer parameter needs integer bounds, got {values!r}"
                )
            if kind is float and low <= 0:
                raise ParamsError(f"{at}: log-uniform needs low > 0, got {values!r}")
            dims.append(Dimension(key, kind, (kind(low), kind(high))))
        else:
            allowed = typing.get_args(kind) if typing.get_origin(kind) is typing.Literal else None
            if not values or len(set(map(repr, values))) != len(values):
                raise ParamsError(f"{at}: expected distinct choices, got {values!r}")
            if not all(v in allowed if allowed else type(v) is kind for v in values):
                expected = list(allowed) if allowed else kind.__name__
                raise ParamsError(f"{at}: choices must be {expected}, got {values!r}")
            dims.append(Dimension(key, object, tuple(values)))
    if not dims:
        raise ParamsError(f"{where}: empty; declare at least one parameter to tune")
    return dims


def check_against(dims: list[Dimension], base: AttGANTrainParams) -> None:
    """Every bound and choice builds valid train params on ``base`` (e.g. a known ``condition``,
    ``shortcut_layers`` below the layers), and so does every combination of the choices (e.g.
    ``model.dis_projection: true`` with ``critic: wgan-gp``): a bad space fails here, before
    any trial trains."""
    layers = {d.key: d for d in dims}.get("model.enc_layers")
    for d in dims:
        for value in d.values:
            flat = {d.key: value}
            if layers is not None and d.key == "model.shortcut_layers":
                # the clamp in suggest keeps high below a trial's layers; low must fit the fewest
                flat["model.enc_layers"] = layers.values[0 if value == d.values[0] else 1]
            _check(base, flat, f"tune_attgan.space.{d.key}: {value!r}")
    # each choice is valid alone by now, so the product is small (true/false, a few names)
    choices = [d for d in dims if d.kind is object]
    if len(choices) > 1:
        for combo in itertools.product(*(d.values for d in choices)):
            flat = {d.key: v for d, v in zip(choices, combo, strict=True)}
            shown = ", ".join(f"{k}: {v!r}" for k, v in flat.items())
            _check(base, flat, f"tune_attgan.space: the combination {shown}")


def _check(base: AttGANTrainParams, flat: dict[str, Any], what: str) -> None:
    try:
        apply(base, nested(flat), base.steps)
    except (ValueError, TypeError) as exc:
        raise ParamsError(f"{what} is not valid: {exc}") from None


def suggest(trial: optuna.Trial, dims: list[Dimension], base: AttGANTrainParams) -> dict[str, Any]:
    """The flat overrides one trial tries (``model.<name>`` keys for the architecture)."""
    out: dict[str, Any] = {}
    for d in dims:
        if d.kind is float:
            out[d.key] = trial.suggest_float(d.key, *d.values, log=True)
        elif d.kind is int:
            low, high = d.values
            if d.key == "model.shortcut_layers":  # fewer than the trial's layers
                layers = out.get("model.enc_layers", base.model.enc_layers)
                high = max(low, min(high, layers - 1))
            out[d.key] = trial.suggest_int(d.key, low, high)
        else:
            out[d.key] = trial.suggest_categorical(d.key, list(d.values))
    return out


def baseline_trial(base: AttGANTrainParams, dims: list[Dimension]) -> dict[str, Any]:
    """Optuna params of ``base`` itself (enqueued first, so the study includes the default)."""
    return {
        d.key: getattr(base.model if d.key.startswith("model.") else base, d.key.split(".")[-1])
        for d in dims
    }


def nested(flat: dict[str, Any]) -> dict[str, Any]:
    """Flat trial params as the tuned-params file's mapping (``model.x`` -> ``{model: {x}}``)."""
    out: dict[str, Any] = {}
    model: dict[str, Any] = {}
    for key, value in flat.items():
        if key.startswith("model."):
            model[key.removeprefix("model.")] = value
        else:
            out[key] = value
    if "enc_layers" in model:
        model["dec_layers"] = model["enc_layers"]
    if model:
        out["model"] = model
    return out


def apply(base: AttGANTrainParams, overrides: dict[str, Any], steps: int) -> AttGANTrainParams:
    """``base`` with a trial's nested overrides, trained for ``steps``."""
    model = dataclasses.replace(base.model, **overrides.get("model", {}))
    flat = {k: v for k, v in overrides.items() if k != "model"}
    return dataclasses.replace(base, model=model, steps=steps, **flat)
