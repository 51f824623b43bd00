"""The peak-stress regressor: timm's ``wide_resnet50_2`` for one-channel SEM tiles, one output.

The architecture is always ``timm.create_model("wide_resnet50_2", pretrained=False, in_chans=1,
num_classes=1, ...)``: Bottleneck blocks, wide (``base_width`` 128) 3x3 convolutions. Named
presets shrink it for a 2-core CPU through the keyword arguments timm's ``ResNet`` accepts
(checked against timm 1.0.31 ``timm/models/resnet.py``):

* ``layers`` (blocks per stage) and ``channels`` (planes per stage; a Bottleneck stage outputs
  4x that) -- exactly four entries each: timm's ``ResNet.forward_features`` calls
  ``layer1``..``layer4`` by name, so fewer stages build but fail in ``forward``;
* ``base_width`` (bottleneck width factor: planes * base_width / 64; 128 = "wide");
* ``stem_type`` / ``stem_width``: timm *ignores* ``stem_width`` with the default stem
  (``stem_type=""``: a 7x7 conv with a hard-wired 64 channels); it only takes effect with a
  deep stem (``"deep"``: three 3x3 convs of stem_width, stem_width, 2 * stem_width). The small
  presets therefore use ``stem_type="deep"``;
* ``output_stride`` (8, 16 or 32; later stages dilate instead of striding) and ``drop_rate``
  (dropout before the classifier).

``output_stride`` is a preset field because a later GradCAM needs a final feature map finer
than 2x2: a 64-px tile gives 8x8 maps at stride 8, 4x4 at 16, but only 2x2 at timm's default
32. :class:`RegressorConfig` refuses a combination that would end at 2x2 or coarser.

The ``paper`` preset is the full ``wide_resnet50_2`` (layers 3-4-6-3, channels 64-512, 7x7
stem) with stride 16 (4x4 maps on 64-px tiles, 16x16 on 256-px tiles).

Targets are standardised with the mean/std of the training tiles' stress; the module keeps
them as buffers (so they travel with the weights), its ``forward`` returns the standardised
output and :meth:`PeakStressRegressor.predict_mpa` / :func:`predict` return MPa. GradCAM's
target layer is ``model.net.layer4`` (its output: ``cfg.feature_px`` squared positions).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from semknobs.pixels import to_model

ARCH = "wide_resnet50_2"


@dataclass(frozen=True)
class ResNetPreset:
    """timm ResNet overrides of one named size."""

    layers: tuple[int, ...]
    channels: tuple[int, ...]
    base_width: int = 128
    stem_type: str = "deep"
    stem_width: int = 16
    output_stride: int = 8
    drop_rate: float = 0.0


PRESETS: dict[str, ResNetPreset] = {
    # Training speed: 64-px tiles, batch 64, one CPU thread of this project's 2-core machine.
    # 0.12 M parameters; ~1100 tiles/s
    "tiny": ResNetPreset(layers=(1, 1, 1, 1), channels=(8, 16, 24, 32), stem_width=8),
    # 0.31 M parameters; ~800 tiles/s (the CPU profile's default)
    "small": ResNetPreset(layers=(1, 1, 1, 1), channels=(8, 16, 32, 64), stem_width=8),
    # 2.4 M parameters, two blocks per stage; ~190 tiles/s (GPU or a patient CPU)
    "medium": ResNetPreset(layers=(2, 2, 2, 2), channels=(16, 32, 64, 128), stem_width=16),
    # the real wide_resnet50_2 (~67 M parameters), stride 16 for GradCAM-able maps.
    "paper": ResNetPreset(
        layers=(3, 4, 6, 3),
        channels=(64, 128, 256, 512),
        base_width=128,
        stem_type="",
        stem_width=64,
        output_stride=16,
    ),
}

_STEM_TYPES = ("", "deep", "deep_tiered")


@dataclass(frozen=True)
class RegressorConfig:
    """A preset plus optional overrides of its fields (``None`` = the preset's value)."""

    preset: str = "small"
    img_size: int = 64
    layers: tuple[int, ...] | None = None
    channels: tuple[int, ...] | None = None
    base_width: int | None = None
    stem_type: str | None = None
    stem_width: int | None = None
    output_stride: int | None = None
    drop_rate: float | None = None

    def __post_init__(self) -> None:
        if self.preset not in PRESETS:
            raise ValueError(f"preset: unknown preset {self.preset!r} (known: {sorted(PRESETS)})")
        r = self.resolved()
        if len(r.layers) != 4 or len(r.channels) != 4:
            # timm's ResNet.forward_features calls layer1..layer4 by name: always four stages
            raise ValueError(
                f"layers {r.layers} and channels {r.channels}: timm's ResNet needs exactly 4 "
                "stages (one entry per stage in each)"
            )
        if min(r.layers) < 1 or min(r.channels) < 1 or r.base_width < 1:
            raise ValueError("layers, channels and base_width must be positive")
        if r.stem_type not in _STEM_TYPES:
            raise ValueError(f"stem_type: expected one of {list(_STEM_TYPES)}, got {r.stem_type!r}")
        if r.output_stride not in (8, 16, 32):
            raise ValueError(f"output_stride: expected 8, 16 or 32, got {r.output_stride}")
        if not 0.0 <= r.drop_rate < 1.0:
            raise ValueError(f"drop_rate: expected a value in [0, 1), got {r.drop_rate}")
        if self.feature_px <= 2:
            raise ValueError(
                f"img_size {self.img_size} with output_stride {self.output_stride_eff} gives "
                f"{self.feature_px}x{self.feature_px} feature maps; GradCAM needs finer than "
                "2x2: lower output_stride or use larger tiles"
            )

    def resolved(self) -> ResNetPreset:
        """The preset with this config's overrides applied."""
        base = PRESETS[self.preset]
        overrides = {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(ResNetPreset)
            if getattr(self, f.name) is not None
        }
        return dataclasses.replace(base, **overrides)

    @property
    def output_stride_eff(self) -> int:
        return self.resolved().output_stride

    @property
    def feature_px(self) -> int:
        """Side of the last stage's feature map for ``img_size`` tiles."""
        r = self.resolved()
        # stride 4 after stem + max pool, x2 in stages 2-4 until output_stride is reached
        stride = r.output_stride
        return -(-self.img_size // stride)

    def timm_kwargs(self) -> dict[str, Any]:
        r = self.resolved()
        return {
            "layers": tuple(r.layers),
            "channels": tuple(r.channels),
            "base_width": r.base_width,
            "stem_type": r.stem_type,
            "stem_width": r.stem_width,
            "output_stride": r.output_stride,
            "drop_rate": r.drop_rate,
        }


@dataclass(frozen=True)
class TargetStats:
    """The training tiles' stress statistics the regressor standardises with (MPa)."""

    mean: float
    std: float


def build_backbone(cfg: RegressorConfig) -> nn.Module:
    """The timm ``wide_resnet50_2`` with the config's overrides; random init, never downloads."""
    import timm

    return timm.create_model(ARCH, pretrained=False, in_chans=1, num_classes=1, **cfg.timm_kwargs())


class PeakStressRegressor(nn.Module):
    """Tile -> peak stress. ``forward`` gives the standardised target, ``predict_mpa`` MPa."""

    def __init__(self, cfg: RegressorConfig, target_mean: float = 0.0, target_std: float = 1.0):
        super().__init__()
        if not target_std > 0:
            raise ValueError(f"target_std must be positive, got {target_std}")
        self.cfg = cfg
        self.net = build_backbone(cfg)
        self.register_buffer("target_mean", torch.tensor(float(target_mean)))
        self.register_buffer("target_std", torch.tensor(float(target_std)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1, S, S) in [-1, 1] -> standardised stress (n,)."""
        return self.net(x).squeeze(-1)

    def predict_mpa(self, x: torch.Tensor) -> torch.Tensor:
        return self(x) * self.target_std + self.target_mean

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """(n, 1, S, S) -> (n, F): the pooled features the head reads (what the regressor sees)."""
        return self.net.forward_head(self.net.forward_features(x), pre_logits=True)

    def mpa_from_features(self, feats: torch.Tensor) -> torch.Tensor:
        """(n, F) pooled features -> MPa (n,), the head alone."""
        return self.net.get_classifier()(feats).squeeze(-1) * self.target_std + self.target_mean

    def standardise(self, stress_mpa: torch.Tensor) -> torch.Tensor:
        """MPa (on any device) -> standardised target, on the model's device."""
        stress_mpa = stress_mpa.to(self.target_mean.device)
        return (stress_mpa - self.target_mean) / self.target_std

    @property
    def target_stats(self) -> dict[str, float]:
        return {"mean": float(self.target_mean), "std": float(self.target_std)}


@torch.no_grad()
def _batched(model: PeakStressRegressor, images, batch_size: int, head) -> list[torch.Tensor]:
    """``head(model, x)`` over uint8 tiles (n, S, S) in batches, eval mode, on the CPU."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        return [
            head(model, to_model(images[i : i + batch_size], device)).cpu()
            for i in range(0, len(images), batch_size)
        ]
    finally:
        model.train(was_training)


def predict(model: PeakStressRegressor, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predicted peak stress in MPa, float64 (n,), for uint8 tiles (n, S, S); eval mode."""
    out = _batched(model, images, batch_size, lambda m, x: m.predict_mpa(x).double())
    return torch.cat(out).numpy() if out else np.zeros(0)


def pooled_features(model: PeakStressRegressor, images, batch_size: int = 256) -> torch.Tensor:
    """The pooled features (n, F) of uint8 tiles (n, S, S), as the head reads them; eval mode."""
    return torch.cat(_batched(model, images, batch_size, PeakStressRegressor.features))
