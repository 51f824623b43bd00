"""Write outputs under a temporary name and rename on success: no half-written files or folders.

An interrupted write leaves nothing behind either:

* an exception, Ctrl-C (``KeyboardInterrupt``) or ``SIGTERM`` (``kill``, a CI cancel, DVC's or a
  scheduler's stop) removes the temporary sibling; ``SIGTERM`` is turned into
  ``SystemExit(143)`` while a write is open, so the cleanup and every ``finally`` run (an MLflow
  run ends FAILED, not RUNNING);
* ``SIGKILL`` (the OOM killer) cannot be caught: the temporary name carries host and process id,
  and the next write of the same target removes those of processes that no longer exist.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(target: str | os.PathLike, *, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of ``target``; on success it replaces ``target``, else vanishes.

    With ``directory=True`` the yielded path is an empty folder. The rename is atomic for files on
    POSIX; a folder replacing an existing folder is swapped via a second temporary name (if the
    swap itself is interrupted, the old folder is put back).
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target)
    owner = _owner()
    if directory:
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=owner, dir=target.parent))
        os.chmod(tmp, 0o755)  # mkdtemp makes it private; outputs are ordinary folders
    else:
        fd, name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=owner, dir=target.parent)
        os.close(fd)
        tmp = Path(name)
    old: Path | None = None
    with sigterm_exits():
        try:
            yield tmp
            if directory:
                if target.exists():
                    old = target.with_name(f".{target.name}.old{owner}")
                    os.replace(target, old)
                os.replace(tmp, target)
                if old is not None:
                    _remove(old)
            else:
                os.chmod(tmp, 0o644)
                os.replace(tmp, target)
        except BaseException:
            if old is not None and old.exists() and not target.exists():
                os.replace(old, target)  # interrupted mid-swap: the previous output stays whole
            for leftover in (tmp, old):
                if leftover is not None:
                    _remove(leftover)
            raise


def write_text(target: str | os.PathLike, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text)


def remove_stale(target: str | os.PathLike) -> list[Path]:
    """Remove the temporary siblings of ``target`` left by dead processes of this host (a
    ``SIGKILL`` mid-write); return them. Those of live processes (a concurrent writer) stay."""
    target = Path(target)
    if not target.parent.is_dir():
        return []
    pattern = re.compile(
        rf"\.{re.escape(target.name)}\.[a-z0-9_]+\.(?P<host>[A-Za-z0-9_-]+)\.(?P<pid>\d+)\.tmp"
    )
    host, removed = _host(), []
    with os.scandir(target.parent) as entries:
        names = [e.name for e in entries if e.name.startswith(f".{target.name}.")]
    for name in names:
        match = pattern.fullmatch(name)
        if match and match["host"] == host and not _alive(int(match["pid"])):
            _remove(target.parent / name)
            removed.append(target.parent / name)
    return removed


def _owner() -> str:
    """``.<host>.<pid>.tmp``: whose temporary file this is (the suffix of every temporary name)."""
    return f".{_host()}.{os.getpid()}.tmp"


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9-]", "_", socket.gethostname()) or "host"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, another user's
        pass
    return True


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextlib.contextmanager
def sigterm_exits() -> Iterator[None]:
    """While open, ``SIGTERM`` raises ``SystemExit(143)`` in the main thread, so ``except``/
    ``finally`` blocks run: the ones above remove the temporary files, a stage's MLflow run
    ends KILLED (:func:`semknobs.tracking.stage_run`). Only where SIGTERM still has its default
    action (killing without any cleanup): a handler someone installed is kept."""
    main = threading.current_thread() is threading.main_thread()
    if not main or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _exit_on_sigterm(signum: int, frame: object) -> None:
    print("terminated (SIGTERM): cleaning up", file=sys.stderr)
    raise SystemExit(128 + signum)
