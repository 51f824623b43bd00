"""The oracle referee: what the regressor really does when the material changes. EVALUATION ONLY.

On a synthetic study the renderer can draw scans at *any* true attributes, so the regressor's
response to a material change is measurable instead of assumed. :class:`Oracle` renders small
scans with the study's own renderer and microscope (:func:`semknobs.data.synth.scan_image`), tiles
them with the pipeline's own tiling (:func:`semknobs.data.tiles.tile_scan`), and scores the tiles
with the regressor:

* :meth:`Oracle.gradient` -- ``g_R = dR/dt`` at a tile's true attributes ``t`` by central
  differences ``(R(t + h e_k) - R(t - h e_k)) / 2h`` (one-sided at the [0, 1] bounds), averaged over
  ``seeds`` renders; the two sides of a difference share their random numbers (common random
  numbers), and the spread over seeds gives each component's standard error;
* :meth:`Oracle.effect` -- ``R(t') - R(t)`` for a proposed change (counterfactual validity), also
  with common random numbers;
* :meth:`Oracle.sweep` -- rendered tiles along one attribute (the meter's ceiling for concept
  control: true interventions instead of AttGAN edits).

Only evaluation code may import this module (``tests/test_truth_isolation.py``): on real SEM data
there is no renderer, so nothing that trains or explains may lean on it.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from semknobs.attributes import ATTRIBUTES
from semknobs.data.synth import SynthParams, scan_image
from semknobs.data.tiles import TileParams, tile_scan
from semknobs.errors import ParamsError

K = len(ATTRIBUTES)


@dataclass(frozen=True)
class OracleParams:
    step: float = 0.1  # h: half-step of the central differences, true-attribute units
    seeds: int = 4  # renders per point; their spread is the oracle's own noise
    fields: tuple[int, int] = (2, 2)  # fields per rendered scan (rows, columns): tiles per render
    seed: int = 0
    n_jobs: int = 2  # render processes
    chunk: int = 16  # renders per job

    def __post_init__(self) -> None:
        if not 0 < self.step <= 0.5:
            raise ValueError("oracle.step must be in (0, 0.5]")
        if self.seeds < 2:
            raise ValueError("oracle.seeds must be >= 2 (the spread over seeds is the noise)")
        if min(self.fields) < 1:
            raise ValueError("oracle.fields must be >= 1 each")


@dataclass(frozen=True)
class Synthetic:
    """How a synthetic study was made (its ``synthesize`` and ``tile`` sections): what the
    evaluation stages need, beside the truth files, to render interventions. Never handed to
    training or explanation code."""

    study: SynthParams
    tiling: TileParams

    @classmethod
    def from_params(cls, params_file: str | Path) -> Synthetic:
        from semknobs.config import load_section

        return cls(
            study=load_section(SynthParams, "synthesize", params_file),
            tiling=load_section(TileParams, "tile", params_file),
        )


@dataclass
class OracleGradient:
    gradient: np.ndarray  # (n, 4) dR/dt, MPa per unit of true attribute
    se: np.ndarray  # (n, 4) its standard error over seeds
    per_seed: np.ndarray  # (n, 4, seeds)

    def halves(self) -> tuple[np.ndarray, np.ndarray]:
        """The gradient from the first and from the second half of the seeds, (n, 4) each."""
        half = self.per_seed.shape[-1] // 2
        return self.per_seed[..., :half].mean(axis=-1), self.per_seed[..., half:].mean(axis=-1)


Predict = Callable[[np.ndarray], np.ndarray]  # uint8 tiles (m, s, s) -> MPa (m,)


class Oracle:
    """Renders, tiles and scores interventions. Use as a context manager (it holds the render
    processes): ``with Oracle(study, tiling, predict, params) as oracle: oracle.gradient(t, ids)``.

    ``ids`` (one int per explained tile) seed the renders, so every quantity for a tile uses the
    same random numbers whatever the batch, and its ± points share them.
    """

    def __init__(
        self,
        study: SynthParams,
        tiling: TileParams,
        predict: Predict | None,
        params: OracleParams = OracleParams(),
        progress: bool = True,
    ):
        ny, nx = params.fields
        if ny * study.field_px < tiling.tile_px or nx * study.field_px < tiling.tile_px:
            raise ParamsError(
                f"oracle.fields {list(params.fields)} x {study.field_px} px fields are smaller "
                f"than one {tiling.tile_px}-px tile"
            )
        self.study = study
        self.tiling = tiling
        self.predict = predict
        self.params = params
        self.progress = progress
        self._pool: ProcessPoolExecutor | None = None
        self.renders = 0

    def __enter__(self) -> Oracle:
        if self.params.n_jobs > 1:
            # spawn: the parent holds torch's thread pools, which do not survive a fork
            ctx = multiprocessing.get_context("spawn")
            self._pool = ProcessPoolExecutor(self.params.n_jobs, mp_context=ctx)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None

    # -- rendering ---------------------------------------------------------------------------
    def render(self, attrs: np.ndarray, keys: Sequence[tuple[int, ...]], desc: str) -> np.ndarray:
        """Tiles of one rendered scan per row of ``attrs`` (m, 4): uint8 (m, tiles, s, s)."""
        attrs = np.clip(np.asarray(attrs, dtype=float), 0, 1)
        if len(attrs) == 0:
            raise ValueError("nothing to render")
        jobs = [
            (
                self.study,
                self.tiling,
                self.params.fields,
                attrs[i : i + self.params.chunk],
                [(self.params.seed, *k) for k in keys[i : i + self.params.chunk]],
            )
            for i in range(0, len(attrs), self.params.chunk)
        ]
        results = self._pool.map(_render_job, jobs) if self._pool else map(_render_job, jobs)
        bar = tqdm(total=len(attrs), desc=desc, unit="scan", disable=not self.progress)
        parts = []
        for part in results:
            parts.append(part)
            bar.update(len(part))
        bar.close()
        self.renders += len(attrs)
        return np.concatenate(parts)

    def responses(
        self, attrs: np.ndarray, keys: Sequence[tuple[int, ...]], desc: str
    ) -> np.ndarray:
        """Mean prediction (MPa) over the tiles of one render per row of ``attrs``: (m,)."""
        if self.predict is None:
            raise ValueError("this oracle renders only (no regressor given)")
        tiles = self.render(attrs, keys, desc)
        m, per = tiles.shape[:2]
        return self.predict(tiles.reshape(m * per, *tiles.shape[2:])).reshape(m, per).mean(axis=1)

    # -- the referee's quantities ------------------------------------------------------------
    def gradient(self, truth: np.ndarray, ids: Sequence[int]) -> OracleGradient:
        """``dR/dt`` at each row of ``truth`` (n, 4), central differences over ``seeds``."""
        truth = np.asarray(truth, dtype=float)
        n, s, h = len(truth), self.params.seeds, self.params.step
        lo = np.clip(truth - h, 0, 1)
        hi = np.clip(truth + h, 0, 1)
        points = np.repeat(truth[:, None, None, None, :], 2, axis=2)  # (n, 1, 2, 1, 4)
        points = np.broadcast_to(points, (n, K, 2, s, K)).copy()
        for k in range(K):
            points[:, k, 0, :, k] = hi[:, k, None]
            points[:, k, 1, :, k] = lo[:, k, None]
        keys = [
            (1, int(ids[i]), j)
            for i in range(n)
            for _k in range(K)
            for _side in range(2)
            for j in range(s)
        ]
        r = self.responses(points.reshape(-1, K), keys, "oracle gradient").reshape(n, K, 2, s)
        per_seed = (r[:, :, 0] - r[:, :, 1]) / (hi - lo)[:, :, None]
        return OracleGradient(
            gradient=per_seed.mean(axis=-1),
            se=per_seed.std(axis=-1, ddof=1) / np.sqrt(s),
            per_seed=per_seed,
        )

    def effect(
        self, start: np.ndarray, end: np.ndarray, ids: Sequence[int]
    ) -> tuple[np.ndarray, np.ndarray]:
        """``R(end) - R(start)`` per row (mean over seeds, and its standard error)."""
        start, end = np.asarray(start, dtype=float), np.asarray(end, dtype=float)
        n, s = len(start), self.params.seeds
        points = np.stack([np.repeat(start, s, axis=0), np.repeat(end, s, axis=0)], axis=1)
        keys = [(2, int(ids[i]), j) for i in range(n) for j in range(s) for _side in range(2)]
        r = self.responses(points.reshape(-1, K), keys, "oracle effect").reshape(n, s, 2)
        diff = r[:, :, 1] - r[:, :, 0]
        return diff.mean(axis=1), diff.std(axis=1, ddof=1) / np.sqrt(s)

    def sweep(
        self, truth: np.ndarray, attribute: int, levels: np.ndarray, ids: Sequence[int]
    ) -> np.ndarray:
        """Rendered tiles with ``attribute`` set to each of ``levels`` (n, points) and the others
        at ``truth`` (n, 4); one seed per row, shared along its sweep: uint8 (n, points, tiles,
        s, s)."""
        truth = np.asarray(truth, dtype=float)
        levels = np.asarray(levels, dtype=float)
        n, p = levels.shape
        points = np.repeat(truth[:, None, :], p, axis=1)
        points[:, :, attribute] = levels
        keys = [(3, int(ids[i])) for i in range(n) for _ in range(p)]
        tiles = self.render(points.reshape(-1, K), keys, f"oracle sweep {ATTRIBUTES[attribute]}")
        return tiles.reshape(n, p, *tiles.shape[1:])


def _render_job(job: tuple) -> np.ndarray:
    study, tiling, (ny, nx), attrs, keys = job
    out = []
    for a, key in zip(attrs, keys):
        rng = np.random.default_rng(list(key))
        fields = np.broadcast_to(a, (ny, nx, K))
        scan = scan_image(np.ascontiguousarray(fields), study, rng, "oracle")
        tiles, _ = tile_scan(scan, tiling, Path("<oracle render>"))
        out.append(tiles)
    return np.stack(out)
