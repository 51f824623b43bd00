"""Run a server command as a process tree that stops as one (``semknobs serve``).

A server is a process tree: ``uvicorn`` (ours, or the one ``mlflow models serve`` and ``mlflow
ui`` start) with, for ``--workers`` > 1, worker processes. Killing only the process we started
leaves the rest running and answering on the port. So the server is started in its own session
(process group), and :func:`supervise`:

* forwards SIGINT and SIGTERM (SIGHUP as SIGTERM) to the whole group; a second signal sends
  SIGKILL;
* once the server process has exited -- asked to or not -- signals whatever is left of the group
  with SIGTERM, waits up to ``stop_timeout_s`` and kills the rest with SIGKILL;
* on Linux also sets the server's parent-death signal, so even a ``kill -9`` of the supervisor
  takes the server (and, through mlflow's own parent-death signal, its uvicorn) down.

The supervisor's handlers are installed before the server starts, so the server never inherits
an *ignored* SIGINT (a shell starts background jobs so; the server would then ignore the SIGINT
forwarded to it and be killed at the end of the grace period instead of stopping).

Exit status: 0 when a signal asked for the stop (the server stopping as asked is a success,
as for uvicorn and gunicorn); otherwise the server's own status.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

# The signal the server group gets for each signal the supervisor receives.
FORWARDED = {signal.SIGINT: signal.SIGINT, signal.SIGTERM: signal.SIGTERM}
if hasattr(signal, "SIGHUP"):
    FORWARDED[signal.SIGHUP] = signal.SIGTERM  # the terminal went away: stop
_PR_SET_PDEATHSIG = 1
_POLL_S = 0.1


def group_members(pgid: int) -> list[int]:
    """The live (not zombie) processes of process group ``pgid``.

    Read from ``/proc`` on Linux: a zombie whose parent does not reap it (an orphan in a
    container whose init does not reap) would otherwise count as alive for ever. Elsewhere
    ``killpg(pgid, 0)`` answers whether any member exists (then ``[pgid]`` stands for them).
    """
    proc = Path("/proc")
    if not (proc / "self" / "stat").exists():
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # exited meanwhile
            continue
        # pid (comm) state ppid pgrp ...; comm may contain spaces and parentheses
        fields = stat[stat.rfind(")") + 2 :].split()
        if len(fields) >= 3 and int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            members.append(int(entry.name))
    return members


def signal_group(pgid: int, signum: int) -> None:
    """Send ``signum`` to process group ``pgid``; a group already gone is fine."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def stop_group(pgid: int, timeout_s: float, signum: int | None = signal.SIGTERM) -> list[int]:
    """Signal the group with ``signum`` (None: it has been signalled already), wait up to
    ``timeout_s`` for it to empty, then SIGKILL what is left; returns the pids that had to be
    killed (empty: the group stopped by itself)."""
    if signum is not None and group_members(pgid):
        signal_group(pgid, signum)
    deadline = time.monotonic() + timeout_s
    while (left := group_members(pgid)) and time.monotonic() < deadline:
        time.sleep(_POLL_S)
    if left:
        signal_group(pgid, signal.SIGKILL)
        deadline = time.monotonic() + 5.0
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(_POLL_S)
    return left


def _parent_death_signal() -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child get SIGTERM when its parent dies (Linux), or None.

    libc is loaded here, in the parent: the function that runs between fork and exec only makes
    the one system call.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM))

    return preexec


def _say(message: str) -> None:
    print(message, flush=True)


class _Stop:
    """What the signal handler records (it only records and forwards: printing from a signal
    handler can collide with the main thread's own output)."""

    def __init__(self, timeout_s: float) -> None:
        self.pgid: int | None = None  # set once the server has started
        self.timeout_s = timeout_s
        self.signals: list[int] = []
        self.deadline: float | None = None
        self.forced = False

    def on_signal(self, signum: int, _frame: object) -> None:
        self.signals.append(signum)
        if len(self.signals) == 1:
            self.deadline = time.monotonic() + self.timeout_s
        else:  # asked twice: no more waiting
            self.forced = True
        self.forward()

    def forward(self) -> None:
        """Pass the stop on to the server group, once it exists: the first signal forwarded,
        SIGKILL once asked twice."""
        if self.pgid is not None and self.signals:
            signal_group(self.pgid, signal.SIGKILL if self.forced else FORWARDED[self.signals[0]])


def supervise(
    command: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stop_timeout_s: float = 10.0,
    log: Callable[[str], None] | None = None,
) -> int:
    """Run ``command`` in its own process group until it exits or a stop signal arrives; stop
    the whole group either way (see the module docstring). Returns the exit status to use.
    ``log`` gets the supervisor's messages (default: printed, flushed)."""
    log = log or _say
    stop = _Stop(stop_timeout_s)
    announced = False

    def announce() -> None:
        nonlocal announced
        if stop.signals and not announced:
            name = signal.Signals(stop.signals[0]).name
            log(f"semknobs: stopping the server ({name}; waiting up to {stop_timeout_s:g} s)")
            announced = True

    previous = {s: signal.signal(s, stop.on_signal) for s in FORWARDED}
    proc: subprocess.Popen | None = None
    try:
        proc = subprocess.Popen(
            list(command),
            env=dict(env) if env is not None else None,
            start_new_session=True,  # its own group: signals reach every process of the server
            preexec_fn=_parent_death_signal(),
        )
        stop.pgid = proc.pid
        stop.forward()  # a signal that came while the server was starting
        while True:
            announce()
            try:
                status = proc.wait(timeout=_POLL_S)
                break
            except subprocess.TimeoutExpired:
                pass
            if stop.deadline is not None and time.monotonic() > stop.deadline and not stop.forced:
                left = group_members(proc.pid)
                log(f"semknobs: the server did not stop in time; killing its processes {left}")
                stop.forced = True
                signal_group(proc.pid, signal.SIGKILL)
        announce()
        # The server process is gone; the rest of its group (uvicorn, workers) must go too: on a
        # requested stop within what is left of the grace period, without signalling again (a
        # second SIGINT makes uvicorn skip its graceful shutdown).
        if stop.deadline is None:
            killed = stop_group(proc.pid, stop_timeout_s)
        elif stop.forced:
            killed = stop_group(proc.pid, 2.0, signum=signal.SIGKILL)
        else:
            killed = stop_group(proc.pid, max(stop.deadline - time.monotonic(), 0.5), None)
        if killed:
            log(f"semknobs: killed {len(killed)} server process(es) that outlived it: {killed}")
    finally:
        if proc is not None and proc.poll() is None:  # leaving on an exception: stop the server
            stop_group(proc.pid, 2.0)
            proc.wait()
        for s, handler in previous.items():
            signal.signal(s, handler)
    if stop.signals:
        log("semknobs: server stopped")
        return 0
    return status if status >= 0 else 128 - status  # killed by a signal: 128 + its number
