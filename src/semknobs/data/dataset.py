"""Tiles + lot labels as tensors, restricted to a set of lots (a split).

Every tile carries its lot's labels: the four attributes normalised to [0, 1] with an
:class:`AttributeScaler` fitted on the *training* lots only, and the peak stress in MPa.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from semknobs.attributes import ATTRIBUTES, AttributeScaler
from semknobs.data.schemas import read_lots
from semknobs.data.tiles import load_tiles
from semknobs.errors import DataError
from semknobs.pixels import to_model


@dataclass
class TileSet:
    """Tiles of some lots: images uint8 (n, s, s), attributes (n, 4) in [0, 1], stress (n,)."""

    images: np.ndarray
    attrs: np.ndarray
    stress: np.ndarray
    manifest: pd.DataFrame

    def __len__(self) -> int:
        return len(self.images)

    def tensors(self, device: torch.device | str = "cpu") -> tuple[torch.Tensor, torch.Tensor]:
        """Images as float (n, 1, s, s) in [-1, 1] and attributes as float (n, 4)."""
        return to_model(self.images, device), torch.from_numpy(self.attrs).float().to(device)


def load_tileset(
    *, tiles_dir: str | Path, lots_csv: str | Path, lots: list[str], scaler: AttributeScaler
) -> TileSet:
    """The tiles of ``lots`` with their labels (attributes scaled by ``scaler``)."""
    labels = read_lots(lots_csv).set_index("lot")
    missing = sorted(set(lots) - set(labels.index))
    if missing:
        raise DataError(f"{lots_csv}: no label row for lots {missing}")
    manifest = pd.read_csv(Path(tiles_dir) / "manifest.csv", dtype={"lot": str})
    manifest = manifest[manifest["lot"].isin(lots)].reset_index(drop=True)
    absent = sorted(set(lots) - set(manifest["lot"]))
    if absent:
        raise DataError(f"{tiles_dir}: no tiles for lots {absent}")
    images, manifest = load_tiles(tiles_dir, manifest)
    rows = labels.loc[manifest["lot"]]
    attrs = np.clip(scaler.transform(rows[list(ATTRIBUTES)].to_numpy()), 0, 1).astype(np.float32)
    stress = rows["peak_stress"].to_numpy(dtype=np.float32)
    return TileSet(images=images, attrs=attrs, stress=stress, manifest=manifest)


def fit_scaler(lots_csv: str | Path, lots: list[str]) -> AttributeScaler:
    """Min/max of the expert scores over ``lots`` (the training lots)."""
    labels = read_lots(lots_csv).set_index("lot").loc[lots]
    return AttributeScaler.fit(labels[list(ATTRIBUTES)].to_numpy())
