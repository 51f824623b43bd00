"""The served explainer's HTTP app: MLflow's scoring server behind a strict request gate.

``semknobs serve`` runs ``uvicorn semknobs.serving.app:app`` (not ``mlflow models serve``)
because MLflow's server drops unknown params with a log line, refuses numeric values for a
string param and parses ``NaN``/``Infinity``: a request must either mean what it says or get a
400 that names what is wrong. The gate, before any work:

* bodies over ``SEMKNOBS_MAX_BODY_MB`` (default 64) are refused;
* ``params`` must be an object whose keys the model's params schema declares;
* numbers must be finite; a numeric ``target`` is accepted and passed on as text (the schema
  declares ``target`` a string: "higher", "lower" or a stress in MPa).

Everything else (ranges, tile count, the per-request deadline that stops the search) is the
model's own check (:class:`semknobs.explain.limits.SearchLimits`), so Python callers get it too.
The model folder comes from the variable MLflow's own app reads; model_config from
``SERVING_MODEL_CONFIG`` (JSON), as ``mlflow models serve`` passes it; :func:`serve_command` sets
both.
"""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path
from typing import Any

from mlflow.pyfunc import scoring_server

MAX_BODY_MB = float(os.environ.get("SEMKNOBS_MAX_BODY_MB", "64"))


def check_request(body: bytes, known: set[str], max_bytes: int) -> bytes:
    """The body to pass on, or ValueError saying what is wrong with it."""
    if len(body) > max_bytes:
        raise ValueError(
            f"request body is {len(body) / 2**20:.1f} MiB; at most {max_bytes / 2**20:g}"
        )
    try:
        payload = json.loads(body, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"request body is not valid JSON ({exc})") from None
    if not isinstance(payload, dict) or "params" not in payload:
        return body
    params = payload["params"]
    if not isinstance(params, dict):
        raise ValueError(f"'params' must be an object, got {type(params).__name__}")
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown params {unknown}; known: {sorted(known)}")
    for name, value in params.items():
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"param {name!r} must be finite, got {value}")
    target = params.get("target")
    if isinstance(target, (int, float)) and not isinstance(target, bool):
        params["target"] = repr(float(target))
        return json.dumps(payload).encode()
    return body


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON allows (non-finite values are refused)")


def gate(app: Any, known: set[str], max_bytes: int) -> Any:
    """ASGI middleware: POST /invocations bodies through :func:`check_request`."""

    async def gated(scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] != "/invocations":
            return await app(scope, receive, send)
        chunks, size = [], 0
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            if size > max_bytes:
                return await _refuse(send, f"request body over {max_bytes / 2**20:g} MiB")
            if not message.get("more_body"):
                break
        try:
            body = check_request(b"".join(chunks), known, max_bytes)
        except ValueError as exc:
            return await _refuse(send, str(exc))
        sent = False

        async def replay() -> dict:
            nonlocal sent
            if sent:
                return await receive()
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}

        headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-length"]
        headers.append((b"content-length", str(len(body)).encode()))
        await app({**scope, "headers": headers}, replay, send)

    return gated


async def _refuse(send: Any, message: str) -> None:
    body = json.dumps({"error_code": "INVALID_PARAMETER_VALUE", "message": message}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 400, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def serve_command(
    model_dir: str | Path,
    *,
    host: str,
    port: int,
    workers: int = 1,
    deadline_s: float | None = None,
) -> tuple[list[str], dict[str, str]]:
    """The uvicorn command line and environment that serve the model folder ``model_dir``.

    ``deadline_s`` overrides the bundle's ``limits.deadline_s``; MLflow's own request timeout
    is set beyond it, so the search stops (504 naming the deadline) before MLflow gives up on it.
    """
    from semknobs.serving.client import interpreter_env

    config = {} if deadline_s is None else {"deadline_s": float(deadline_s)}
    env = interpreter_env(
        **{
            scoring_server._SERVER_MODEL_PATH: str(model_dir),
            scoring_server.SERVING_MODEL_CONFIG: json.dumps(config),
        }
    )
    argv = [sys.executable, "-m", "uvicorn", "--host", host, "--port", str(port),
            "--workers", str(workers), "semknobs.serving.app:app"]  # fmt: skip
    return argv, env


def build() -> Any:
    model = scoring_server.load_model_with_mlflow_config(
        os.environ[scoring_server._SERVER_MODEL_PATH]
    )
    # MLflow's request timeout (read by init) beyond the model's own deadline, which already
    # holds the --deadline override: the search answers 504 before MLflow gives up on it
    try:
        deadline = float(getattr(model.unwrap_python_model(), "deadline_s", 30.0))
    except Exception:  # not a python model
        deadline = 30.0
    os.environ["MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT"] = str(int(max(60.0, 2 * deadline + 10)))
    schema = model.metadata.get_params_schema()
    known = {p.name for p in schema.params} if schema else set()
    return gate(scoring_server.init(model), known, int(MAX_BODY_MB * 2**20))


app = build() if scoring_server._SERVER_MODEL_PATH in os.environ else None
