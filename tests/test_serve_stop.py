"""`semknobs serve` stops its whole server tree. Fast: the supervisor on a real process tree
whose grandchild ignores SIGTERM (forwarding, the bounded wait, SIGKILL of what is left).
Slow: a real `semknobs serve` (uvicorn running MLflow's scoring app behind our gate) of a tiny
registered regressor on loopback, SIGTERM to the `semknobs` process only; then nothing of the tree
may be left and the port must be closed."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from semknobs import registry, tracking
from semknobs.config import to_mapping
from semknobs.model_folder import save_model_dir
from semknobs.models.regressor import PeakStressRegressor, RegressorConfig
from semknobs.names import MODEL_NAMES
from semknobs.serving import regressor_model
from semknobs.serving.client import free_port, interpreter_env, wait_until_up
from semknobs.serving.supervise import _Stop

psutil = pytest.importorskip("psutil")


def _tiny_regressor(folder: Path) -> Path:
    torch.manual_seed(0)
    reg = PeakStressRegressor(RegressorConfig(preset="tiny", img_size=32), 40.0, 8.0).eval()
    config = {"model": to_mapping(reg.cfg), "img_size": 32, "target": {"mean": 40.0, "std": 8.0}}
    save_model_dir(folder, kind="regressor", weights={"regressor": reg}, config=config)
    return folder


def _answers(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _alive(procs: list) -> list:
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM])
def test_sigterm_stops_the_whole_server_tree(store: Path, tmp_path: Path, signum: int) -> None:
    folder = _tiny_regressor(tmp_path / "regressor")
    with tracking.stage_run("train_regressor", params={}):
        registry.log_model_dir(
            folder,
            name="regressor",
            spec=regressor_model.SPEC,
            registered_name=MODEL_NAMES["regressor"],
        )
    port = free_port()
    command = [
        sys.executable, "-m", "semknobs.cli", "serve", "--port", str(port),
        "--model", f"models:/{MODEL_NAMES['regressor']}@candidate",
    ]  # fmt: skip
    log_path = tmp_path / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=interpreter_env(), cwd=store
        )
    tree: list = []
    try:
        wait_until_up(f"http://127.0.0.1:{port}", timeout_s=180, proc=proc)
        tree = psutil.Process(proc.pid).children(recursive=True)
        names = " ".join(" ".join(p.cmdline()) for p in tree)
        assert "uvicorn" in names and "semknobs.serving.app" in names, names  # the served tree

        os.kill(proc.pid, signum)  # the semknobs process only, as `kill <pid>` does
        rc = proc.wait(timeout=60)
        deadline = time.monotonic() + 5  # the OS may take a moment to close the socket
        while _answers(port) and time.monotonic() < deadline:
            time.sleep(0.2)
        log_text = log_path.read_text()
        assert not _alive(tree), [" ".join(p.cmdline()) for p in _alive(tree)]
        assert not _answers(port), f"port {port} still answers after semknobs serve exited"
        assert rc == 0, log_text[-3000:]
        assert f"stopping the server ({signal.Signals(signum).name}" in log_text
    finally:
        for p in [psutil.Process(proc.pid), *tree] if proc.poll() is None else tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        proc.wait(timeout=30)


# A server stand-in: a parent that starts a grandchild which ignores SIGTERM and SIGINT (as a
# stuck worker would), prints both pids and waits.
_TREE = """
import signal, subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
    "signal.signal(signal.SIGINT, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"],
    stdout=subprocess.PIPE, text=True)
child.stdout.readline()
print(child.pid, flush=True)
END
"""
_DRIVER = (
    "import sys; from semknobs.serving.supervise import supervise; "
    "raise SystemExit(supervise([sys.executable, '-c', sys.argv[1]], stop_timeout_s=1.0))"
)


def _ignore_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # as a shell starts a background job


@pytest.mark.parametrize("started_in_background", [False, True])
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_supervisor_stops_a_tree_that_ignores_the_signal(
    signum: int, started_in_background: bool
) -> None:
    """The server stops on the forwarded signal (also when the supervisor was started with SIGINT
    ignored: the server must not inherit that); its grandchild, which ignores the signal, is
    killed after the grace period and named."""
    tree = _TREE.replace("END", "time.sleep(600)")
    argv = [sys.executable, "-c", _DRIVER, tree]
    preexec = _ignore_sigint if started_in_background else None
    driver = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, preexec_fn=preexec)
    try:
        grandchild = int(driver.stdout.readline())
        server = psutil.Process(grandchild).parent()
        assert server.ppid() == driver.pid and os.getpgid(grandchild) == server.pid
        t0 = time.monotonic()
        os.kill(driver.pid, signum)
        out, _ = driver.communicate(timeout=30)
        elapsed = time.monotonic() - t0
        assert driver.returncode == 0, out
        assert not psutil.pid_exists(grandchild) or (
            psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
        ), "the grandchild that ignored the signal outlived the supervisor"
        assert f"stopping the server ({signal.Signals(signum).name}" in out
        assert "did not stop in time" not in out, out  # the server itself obeyed the signal
        assert f"killed 1 server process(es) that outlived it: [{grandchild}]" in out, out
        assert 1.0 <= elapsed < 10, elapsed  # waited the grace period, no longer
    finally:
        if driver.poll() is None:
            driver.kill()
        with contextlib.suppress(Exception):
            os.killpg(os.getpgid(grandchild), signal.SIGKILL)


def test_a_server_that_dies_leaves_nothing_behind_and_reports_its_status() -> None:
    """No signal: the server exits by itself (status 3) and leaves a child; the child goes."""
    tree = _TREE.replace("END", "sys.exit(3)")
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, tree], capture_output=True, text=True, timeout=30
    )
    assert out.returncode == 3, out.stdout + out.stderr
    grandchild = int(out.stdout.splitlines()[0])
    assert "killed 1 server process(es)" in out.stdout
    assert not psutil.pid_exists(grandchild) or (
        psutil.Process(grandchild).status() == psutil.STATUS_ZOMBIE
    )


def test_two_signals_before_the_server_started_kill_it_once_it_has() -> None:
    """Asked twice while the server was still starting: it is killed, not asked politely."""
    stop = _Stop(timeout_s=10.0)
    stop.on_signal(signal.SIGTERM, None)
    stop.on_signal(signal.SIGTERM, None)  # no group yet: only recorded
    ignores = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)"
    server = subprocess.Popen([sys.executable, "-c", ignores], start_new_session=True)
    try:
        time.sleep(0.5)  # let it install its handler
        stop.pgid = server.pid
        stop.forward()
        assert server.wait(timeout=10) == -signal.SIGKILL
    finally:
        if server.poll() is None:
            server.kill()
