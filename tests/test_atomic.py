"""Atomic outputs under real interrupts: a process killed mid-write leaves no temporary files
(SIGINT, SIGTERM: at once; SIGKILL: at the next write of the same output) and the previous
output, if any, whole."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from semknobs.atomic import _host, atomic_path, remove_stale

WRITER = """
import sys, time
from semknobs.atomic import atomic_path
target, kind = sys.argv[1], sys.argv[2]
with atomic_path(target, directory=kind == "dir") as tmp:
    (tmp / "part" if kind == "dir" else tmp).write_text("half")
    print(tmp, flush=True)
    time.sleep(60)
"""


def _interrupted_writer(target: Path, kind: str, sig: int) -> tuple[int, Path, str]:
    """(exit status, the temporary path it wrote, stderr) of a writer killed mid-write."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(target), kind],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        tmp = Path(proc.stdout.readline().strip())
        assert tmp.exists() and tmp.parent == target.parent  # it is mid-write now
        proc.send_signal(sig)
        proc.wait(timeout=30)
    finally:
        proc.kill()
        proc.wait()
    return proc.returncode, tmp, proc.stderr.read()


def _leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.parametrize("kind", ["file", "dir"])
@pytest.mark.parametrize(
    "sig, status",
    [(signal.SIGINT, -signal.SIGINT), (signal.SIGTERM, 128 + signal.SIGTERM)],
    ids=["SIGINT", "SIGTERM"],
)
def test_interrupt_removes_the_temporary_and_keeps_the_old_output(tmp_path, kind, sig, status):
    target = tmp_path / ("out.json" if kind == "file" else "out")
    if kind == "dir":
        target.mkdir()
        (target / "old").write_text("previous run")
    else:
        target.write_text("previous run")
    returncode, tmp, err = _interrupted_writer(target, kind, sig)
    assert returncode == status, err
    assert "Traceback" not in err or sig == signal.SIGINT  # Python prints one for Ctrl-C
    assert not tmp.exists() and _leftovers(tmp_path) == []
    old = target / "old" if kind == "dir" else target
    assert old.read_text() == "previous run"


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_sigkill_leftovers_go_at_the_next_write(tmp_path, kind):
    target = tmp_path / ("out.json" if kind == "file" else "out")
    returncode, tmp, _ = _interrupted_writer(target, kind, signal.SIGKILL)
    assert returncode == -signal.SIGKILL
    assert tmp.exists() and not target.exists()  # nothing can clean up after SIGKILL...
    with atomic_path(target, directory=kind == "dir") as new:
        (new / "part" if kind == "dir" else new).write_text("whole")
    assert not tmp.exists() and _leftovers(tmp_path) == []  # ...but the next write does
    assert (target / "part" if kind == "dir" else target).read_text() == "whole"


def test_only_temporaries_of_dead_processes_of_this_host_are_removed(tmp_path):
    code = "import os; print(os.getpid())"
    dead_pid = int(subprocess.run([sys.executable, "-c", code], capture_output=True).stdout)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        names = {
            "dead": f".x.csv.abc123.{_host()}.{dead_pid}.tmp",
            "live": f".x.csv.abc123.{_host()}.{live.pid}.tmp",
            "other_host": f".x.csv.abc123.elsewhere.{dead_pid}.tmp",
            "other_target": f".x.csv.bak.abc123.{_host()}.{dead_pid}.tmp",  # of x.csv.bak
            "old_swap": f".x.csv.old.{_host()}.{dead_pid}.tmp",
        }
        for name in names.values():
            (tmp_path / name).write_text("")
        (tmp_path / names["old_swap"]).unlink()
        (tmp_path / names["old_swap"]).mkdir()  # a folder swapped aside, then killed
        removed = remove_stale(tmp_path / "x.csv")
    finally:
        live.kill()
        live.wait()
    assert sorted(p.name for p in removed) == sorted([names["dead"], names["old_swap"]])
    assert _leftovers(tmp_path) == sorted(
        [names["live"], names["other_host"], names["other_target"]]
    )


def test_an_exception_mid_write_leaves_nothing(tmp_path):
    with pytest.raises(ValueError), atomic_path(tmp_path / "out", directory=True) as tmp:
        (tmp / "part").write_text("half")
        raise ValueError("bad input found halfway")
    assert list(tmp_path.iterdir()) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # the handler is only temporary
