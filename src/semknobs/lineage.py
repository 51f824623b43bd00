"""Where a run's inputs come from: the git commit of the code and the DVC hashes of the data,
and what a rerun of the same inputs cannot reproduce.

* :func:`git_info` -- ``git.commit``, ``git.dirty`` (of the *sources*, not of the files DVC
  writes) and ``git.branch`` of the working tree;
* :func:`data_version` -- per input path the hash DVC recorded (``dvc.lock``: any stage's outs,
  then deps; or a ``<path>.dvc`` file written by ``dvc add``), read with a plain YAML load, and
  one ``data.version`` over them all;
* :func:`is_timing` / :func:`reproducible` -- the metric keys that measure the machine, not the
  result (wall times, throughputs): MLflow gets them, DVC metrics files and model folders do not,
  so a rerun of the same inputs rewrites those files byte for byte.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import posixpath
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

V = TypeVar("V")
UNTRACKED = "untracked"
_GIT_TIMEOUT_S = 5.0
_MAX_KEY = 250


def run_git(
    root: Path, *args: str, strip: bool = True, timeout: float = _GIT_TIMEOUT_S
) -> str | None:
    """``git -C root args`` output, or None when git is missing, fails or takes too long."""
    try:
        proc = subprocess.run(
            ["git", "-C", str(root), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env={**os.environ, "GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"},
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if proc.returncode != 0:
        return None
    return proc.stdout.strip() if strip else proc.stdout


def git_info(root: Path | str | None = None) -> dict[str, str]:
    """``git.commit`` (full sha or "unknown"), ``git.dirty`` ("true"/"false"/"unknown") and
    ``git.branch`` (name, "HEAD" when detached, or "unknown"). Never raises.

    ``git.dirty`` says whether the *sources* differ from the commit: every file git sees
    (tracked, or untracked and not ignored -- the commit alone would not reproduce a run that
    used an uncommitted file) except the files DVC itself writes while it runs the pipeline:
    ``dvc.lock``, the ``outs``/``metrics``/``plots`` that ``<root>/dvc.yaml`` declares (files,
    or everything under a folder) and the ``.gitignore`` files beside them, where DVC lists its
    cached outs (see :func:`dvc_written`). Those are results, versioned by their DVC hashes (the
    ``data.*`` tags), and DVC rewrites them mid-run: counting them made every stage after the
    first of a ``dvc repro`` dirty. An edited ``params.yaml``, ``dvc.yaml``, module or ``.dvc``
    file is dirty.
    """
    root = Path(root if root is not None else Path.cwd())
    commit = run_git(root, "rev-parse", "--verify", "--quiet", "HEAD^{commit}")
    branch = run_git(root, "symbolic-ref", "--quiet", "--short", "HEAD")
    if branch is None and commit:
        branch = "HEAD"
    changed = changed_sources(root)
    return {
        "git.commit": commit or "unknown",
        "git.dirty": "unknown" if changed is None else ("true" if changed else "false"),
        "git.branch": branch or "unknown",
    }


def changed_sources(root: Path | str) -> list[str] | None:
    """The paths (relative to the repository's top level) that make ``git.dirty`` true: what
    ``git status`` reports, less :func:`dvc_written` (see :func:`git_info`); None outside a git
    repository or when git fails."""
    root = Path(root)
    status = run_git(root, "status", "--porcelain=v1", "-z", "--untracked-files=all", strip=False)
    prefix = run_git(root, "rev-parse", "--show-prefix")
    if status is None or prefix is None:
        return None
    written = {prefix + p for p in dvc_written(root)}  # prefix: root below the top level
    parts = status.split("\0")
    changed: list[str] = []
    i = 0
    while i < len(parts):
        entry = parts[i]
        i += 1
        if len(entry) < 4:
            continue
        code, path = entry[:2], entry[3:]
        if "R" in code or "C" in code:
            i += 1  # a rename's or copy's original path follows: the new one is what counts
        if not any(path == w or path.startswith(f"{w}/") for w in written):
            changed.append(path)
    return changed


def dvc_written(root: Path | str) -> set[str]:
    """What ``dvc repro`` writes in the project ``root`` (paths relative to it, POSIX):
    ``dvc.lock``, every ``outs``/``metrics``/``plots`` entry of the stages of ``dvc.yaml`` and the
    ``.gitignore`` of each such entry's folder. ``${...}`` in a path is filled from
    ``params.yaml`` (DVC's templating); an entry that cannot be filled (``foreach`` items) is
    left out, so its files count as sources. Never raises: an unreadable dvc.yaml gives just
    ``dvc.lock``."""
    root = Path(root)
    written = {"dvc.lock"}
    try:
        pipeline = _load_yaml(root / "dvc.yaml") if (root / "dvc.yaml").is_file() else None
        stages = pipeline.get("stages") if isinstance(pipeline, dict) else None
        if not isinstance(stages, dict):
            return written
        params = _load_yaml(root / "params.yaml") if (root / "params.yaml").is_file() else None
        variables = params if isinstance(params, dict) else {}
        for stage in stages.values():
            for kind in ("outs", "metrics", "plots"):
                entries = stage.get(kind) if isinstance(stage, dict) else None
                for entry in entries if isinstance(entries, list) else ():
                    path = next(iter(entry), None) if isinstance(entry, dict) else entry
                    path = _fill(path, variables) if isinstance(path, str) else None
                    if path:
                        out = _norm(path)
                        written.add(out)
                        written.add(posixpath.join(posixpath.dirname(out), ".gitignore"))
    except Exception:
        return written
    return written


def _fill(path: str, variables: dict[str, Any]) -> str | None:
    """``path`` with every ``${a.b}`` replaced from ``variables``; None if one is missing."""

    def value(match: re.Match[str]) -> str:
        node: Any = variables
        for part in match.group(1).strip().split("."):
            if not isinstance(node, dict) or part not in node:
                raise KeyError(part)
            node = node[part]
        if isinstance(node, (dict, list)):
            raise KeyError(match.group(1))
        return str(node)

    try:
        return re.sub(r"\$\{([^}]*)\}", value, path)
    except KeyError:
        return None


# A metric key whose last part is ``wall_s`` or ``wall_s_<anything>``, or ends in ``_per_s``.
_TIMING = re.compile(r"(?:^|/)(?:wall_s(?:_\w*)?|\w+_per_s)$")


def is_timing(key: str) -> bool:
    """True for the metric keys that time the run (``train/wall_s``, ``oracle/wall_s``,
    ``train/wall_s_this_run``, ``train/steps_per_s``): they differ on every rerun of the same
    inputs, so they belong in MLflow, not in a DVC-tracked file. The one declaration of them."""
    return bool(_TIMING.search(key))


def reproducible(metrics: Mapping[str, V]) -> dict[str, V]:
    """``metrics`` without its :func:`is_timing` keys: what a DVC metrics file or a model
    folder's config may hold."""
    return {k: v for k, v in metrics.items() if not is_timing(k)}


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
