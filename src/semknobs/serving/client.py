"""A minimal HTTP client for a served model (tests, benchmarks, and scripts that call it)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from semknobs.serving.supervise import signal_group


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def wait_until_up(
    base_url: str,
    timeout_s: float,
    proc: subprocess.Popen | None = None,
    path: str = "/ping",
) -> float:
    """Poll ``<base_url><path>`` until it answers 200 (``/ping`` for a model server,
    ``/health`` for an MLflow tracking server); returns the seconds waited.

    Raises RuntimeError if ``proc`` exits first or ``timeout_s`` passes.
    """
    start = time.monotonic()
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with status {proc.returncode} before answering")
        try:
            with urllib.request.urlopen(f"{base_url}{path}", timeout=5) as r:
                if r.status == 200:
                    return time.monotonic() - start
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        if time.monotonic() - start > timeout_s:
            raise RuntimeError(f"{base_url} did not answer {path} within {timeout_s:.0f} s")
        time.sleep(0.5)


def post(url: str, body: bytes, timeout_s: float = 300) -> tuple[int, str]:
    """POST JSON; (status, text) for successes and HTTP errors alike."""
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout_s) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def frame_request(frame: pd.DataFrame, **params: Any) -> bytes:
    """The ``/invocations`` body for a DataFrame input (``dataframe_split``) and params."""
    split = json.loads(frame.to_json(orient="split", index=False))
    payload: dict[str, Any] = {"dataframe_split": split}
    if params:
        payload["params"] = params
    return json.dumps(payload).encode()


def interpreter_env(**extra: str) -> dict[str, str]:
    """This process's environment with the interpreter's bin folder first on PATH, so that
    tools exec'd by name (``mlflow`` runs ``uvicorn``) come from the same venv without an
    activated shell; ``extra`` variables added."""
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, **extra}


@contextlib.contextmanager
def running_server(
    command: Sequence[str],
    *,
    base_url: str,
    log_path: Path,
    timeout_s: float,
    path: str = "/ping",
) -> Iterator[float]:
    """Start ``command`` (a server) in its own process group, wait until ``base_url + path``
    answers, yield the start-up seconds; stop the whole group afterwards.

    Output goes to ``log_path``; a server that does not come up raises RuntimeError with the
    log's tail. The interpreter's bin folder is put on PATH (servers exec ``uvicorn`` by name).
    """
    env = {
        **os.environ,
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]),
    }
    with Path(log_path).open("w") as log:
        proc = subprocess.Popen(
            list(command), stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
        try:
            try:
                startup = wait_until_up(base_url, timeout_s, proc, path=path)
            except RuntimeError as exc:
                log.flush()
                raise RuntimeError(f"{exc}\n{Path(log_path).read_text()[-3000:]}") from None
            yield startup
        finally:
            signal_group(proc.pid, signal.SIGTERM)  # the group may be gone already
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                signal_group(proc.pid, signal.SIGKILL)
                proc.wait()
