"""The AttGAN trainer's params (:mod:`semknobs.train.attgan` documents the losses they weigh)
and the ``train_attgan`` params section."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from semknobs.meter import MeterParams
from semknobs.models.attgan import AttGANConfig
from semknobs.train.base import fingerprint
from semknobs.train.concept import ConceptParams
from semknobs.train.texture import region_list


@dataclass(frozen=True)
class AttGANTrainParams:
    model: AttGANConfig = field(default_factory=AttGANConfig)
    steps: int = 3000  # generator updates
    batch_size: int = 32
    lr: float = 5e-4
    # the last share of the steps over which both learning rates fall linearly toward 0 (0: off)
    lr_decay_share: float = 0.0
    beta1: float = 0.5
    beta2: float = 0.999
    n_critic: int = 1  # critic updates per generator update
    lambda_rec: float = 10.7
    lambda_att_g: float = 0.0
    lambda_att_d: float = 0.0
    lambda_gp: float = 10.0
    critic: Literal["wgan-gp", "r1"] = "r1"
    r1_gamma: float = 1.0  # critic "r1": weight of the R1 penalty
    r1_every: int = 4  # critic "r1": lazy regularisation interval
    lambda_concept: float = 30.0  # 0: no concept network
    concept_rec_grad: bool = True  # the concept loss also moves the reconstruction
    concept_off_weight: float = 1.0  # concept loss weight on knobs an edit leaves alone (b = a)
    # concept loss weight per knob column (size, porosity, dispersity, facetness): README
    concept_knob_weight: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    # per column, times concept_off_weight: "stay put" on that knob when an edit leaves it alone
    concept_off_knob_weight: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
    lambda_count: float = 0.0  # C's particle-count read: the count changes as across real lots
    lambda_regressor: float = 0.0  # regressor-feature reconstruction (README: measured, off)
    lambda_texture: float = 2.0  # texture statistics of edits move as across real lots
    ema_decay: float = 0.0  # generator weight averaging (0: off, the trained weights are kept)
    texture_levels: int = 4  # Laplacian pyramid bands of T: 1, 2, 4, 8 px (train/texture.py)
    # T also per crystal interior / outline / background (true), or per the regions listed
    texture_regions: bool | tuple[str, ...] = False
    concept: ConceptParams = field(default_factory=ConceptParams)
    one_knob_share: float = 0.5  # rows whose target turns one knob
    one_knob_delta: float = 0.5
    resample_prob: float = 0.5
    seed: int = 0
    device: str = "auto"
    checkpoint_every: int = 200
    log_every: int = 10

    def __post_init__(self) -> None:
        region_list(self.texture_regions)  # a clear error for an unknown or repeated region
        for name in ("concept_knob_weight", "concept_off_knob_weight"):
            weights = getattr(self, name)
            if len(weights) != self.model.n_attrs or not all(0 <= w < math.inf for w in weights):
                raise ValueError(
                    f"{name} must be {self.model.n_attrs} finite numbers >= 0 (one per knob), "
                    f"got {list(weights)}"
                )
        if not 0 <= self.lr_decay_share < 1:
            raise ValueError(
                f"lr_decay_share must be a number in [0, 1) (the last share of the steps over "
                f"which the learning rates fall to 0), got {self.lr_decay_share}"
            )
        for name in ("concept_off_weight", "lambda_count"):
            if not 0 <= getattr(self, name) < math.inf:
                raise ValueError(f"{name} must be a finite number >= 0, got {getattr(self, name)}")
        if self.model.dis_projection and self.critic != "r1":
            raise ValueError(
                "model.dis_projection judges a tile against its attributes, which the WGAN-GP "
                "penalty's interpolates do not have: it needs critic: r1"
            )
        if self.lambda_count > 0 and self.lambda_concept <= 0:
            raise ValueError(
                "lambda_count > 0 reads the count with the concept network: it needs "
                "lambda_concept > 0"
            )

    def fingerprint(self, data_key: str = "") -> str:
        """Identifies the run a checkpoint belongs to (params that change the result + data)."""
        return fingerprint(self, data_key, ignore=("checkpoint_every", "log_every"))


@dataclass(frozen=True)
class TrainAttGANStageParams:
    """The ``train_attgan`` params section."""

    train: AttGANTrainParams = field(default_factory=AttGANTrainParams)
    sample_every: int = 500  # log a sample grid every N steps
    sample_tiles: int = 6
    meter: MeterParams | None = None  # the measure stage's meter (for the concept network)
