"""Where a run's inputs come from: the git commit of the code and the DVC hashes of the data.

* :func:`git_info` -- ``git.commit``, ``git.dirty`` and ``git.branch`` of the working tree;
* :func:`data_version` -- per input path the hash DVC recorded (``dvc.lock``: any stage's outs,
  then deps; or a ``<path>.dvc`` file written by ``dvc add``), read with a plain YAML load, and
  one ``data.version`` over them all.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import subprocess
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

UNTRACKED = "untracked"
_GIT_TIMEOUT_S = 5.0
_MAX_KEY = 250


def _git(root: Path, *args: str) -> str | None:
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=_GIT_TIMEOUT_S,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return proc.stdout.strip() if proc.returncode == 0 else None


def git_info(root: Path | str | None = None) -> dict[str, str]:
    """``git.commit`` (full sha or "unknown"), ``git.dirty`` ("true"/"false"/"unknown") and
    ``git.branch`` (name, "HEAD" when detached, or "unknown"). Never raises.

    Untracked files count as dirty: the commit alone would not reproduce the run.
    """
    root = Path(root if root is not None else Path.cwd())
    commit = _git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    status = _git(root, "status", "--porcelain")
    branch = _git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    if branch is None and commit:
        branch = "HEAD"
    return {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if status is None else ("true" if status else "false"),
        "git.branch": branch or "unknown",
    }


def _norm(path: str | os.PathLike[str], base: Path | None = None) -> str:
    """A dependency path as DVC writes it: relative to ``base``, POSIX separators, no './'."""
    p = Path(path)
    if p.is_absolute() and base is not None:
        with contextlib.suppress(ValueError):
            p = p.relative_to(base.resolve())
    return posixpath.normpath(p.as_posix())


def _entry_hash(entry: Any) -> str | None:
    """The content hash of one ``outs``/``deps`` entry of dvc.lock or a .dvc file.

    DVC 3 writes ``md5`` plus ``hash: md5`` (the algorithm's name); cloud-versioned entries may
    carry ``etag``/``checksum`` instead.
    """
    if not isinstance(entry, dict):
        return None
    for key in ("md5", "checksum", "etag", "hash"):
        value = entry.get(key)
        if isinstance(value, str) and value and value.lower() not in ("md5", "md5-dos2unix"):
            return value
    return None


def _load_yaml(path: Path) -> Any:
    import yaml

    try:
        return yaml.load(path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return None


def _lock_hashes(lock: Any) -> tuple[dict[str, str], dict[str, str]]:
    """(outs, deps): path -> hash over every stage of a parsed dvc.lock."""
    outs: dict[str, str] = {}
    deps: dict[str, str] = {}
    stages = lock.get("stages") if isinstance(lock, dict) else None
    if not isinstance(stages, dict):
        return outs, deps
    for stage in stages.values():
        if not isinstance(stage, dict):
            continue
        for kind, table in (("outs", outs), ("deps", deps)):
            entries = stage.get(kind)
            if not isinstance(entries, list):
                continue
            for entry in entries:
                digest = _entry_hash(entry)
                path = entry.get("path") if isinstance(entry, dict) else None
                if digest and isinstance(path, str):
                    table.setdefault(_norm(path), digest)
    return outs, deps


def _dvc_file_hash(base: Path, path: str) -> str | None:
    """The hash recorded in ``<path>.dvc`` (as written by ``dvc add``), if there is one."""
    dvc_file = base / f"{path}.dvc"
    if not dvc_file.is_file():
        return None
    data = _load_yaml(dvc_file)
    entries = data.get("outs") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        return None
    name = posixpath.basename(path)
    hashes = [
        (e.get("path"), _entry_hash(e)) for e in entries if isinstance(e, dict) and _entry_hash(e)
    ]
    for out_path, digest in hashes:
        if isinstance(out_path, str) and posixpath.normpath(out_path) == name:
            return digest
    return hashes[0][1] if len(hashes) == 1 else None


def _ancestors(path: str) -> Iterator[str]:
    """``a/b/c`` -> ``a/b/c``, ``a/b``, ``a``."""
    while path and path not in (".", "/"):
        yield path
        parent = posixpath.dirname(path)
        if parent == path:
            return
        path = parent


def _lookup(path: str, base: Path, outs: dict[str, str], deps: dict[str, str]) -> str:
    # Exact path first, then the nearest tracked parent directory (a file inside a DVC-tracked
    # directory is versioned by the directory's hash). For each, a producing stage's output is
    # freshest, then a .dvc file; a stage's recorded dep hash is from that stage's last run.
    for candidate in _ancestors(path):
        digest = outs.get(candidate) or _dvc_file_hash(base, candidate) or deps.get(candidate)
        if digest:
            return digest
    return UNTRACKED


def data_version(
    deps: Iterable[str | os.PathLike[str]], lock_path: str | os.PathLike[str] = "dvc.lock"
) -> dict[str, str]:
    """Data-version tags for ``deps``: ``data.<path>`` = hash (or "untracked"), ``data.version``.

    Hashes come from ``dvc.lock`` (any stage's outs, then deps) or a ``<path>.dvc`` file; paths
    are taken relative to the lock file's directory, as DVC writes them. ``data.version`` is the
    first 12 hex digits of sha256 over the sorted ``path=hash`` lines, so equal inputs give an
    equal version. A missing or malformed lock just means "untracked"; this never raises.
    """
    lock_file = Path(lock_path)
    base = lock_file.parent
    try:
        lock = _load_yaml(lock_file) if lock_file.is_file() else None
        outs, dep_hashes = _lock_hashes(lock)
    except Exception:
        outs, dep_hashes = {}, {}
    versions: dict[str, str] = {}
    for dep in deps:
        path = _norm(dep, base)
        try:
            versions[path] = _lookup(path, base, outs, dep_hashes)
        except Exception:
            versions[path] = UNTRACKED
    summary = "\n".join(f"{p}={h}" for p, h in sorted(versions.items()))
    tags = {_safe_key(f"data.{p}"): h for p, h in versions.items()}
    tags["data.version"] = hashlib.sha256(summary.encode()).hexdigest()[:12]
    return tags


def _safe_key(key: str) -> str:
    """An MLflow-acceptable param/tag/metric key: bad characters become '_', length capped."""
    key = re.sub(r"[^/\w.\- :]", "_", key)
    key = re.sub(r"/{2,}", "/", key).strip("/") or "_"
    if posixpath.normpath(key) != key:  # e.g. 'a/./b' or 'a/../b'
        key = key.replace("/", "_")
    if len(key) > _MAX_KEY:
        digest = hashlib.sha256(key.encode()).hexdigest()[:8]
        key = f"{key[: _MAX_KEY - 9]}~{digest}"
    return key
