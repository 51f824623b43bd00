"""AttGAN (He et al. 2019, "AttGAN: Facial Attribute Editing by Only Changing What You Want")
for greyscale SEM tiles and four continuous attributes in [0, 1].

Generator: a strided-conv encoder (batch norm, leaky ReLU) and a transposed-conv decoder (batch
norm, ReLU, tanh output). The attribute vector, mapped to [-1, 1], is tiled over the bottleneck;
``shortcut_layers`` decoder layers also see the encoder feature map of their resolution (U-Net
style, for detail), and ``inject_layers`` decoder layers see the attributes again.
Discriminator: strided convs with instance norm, then two heads on a shared trunk: an adversarial
critic (trained as R1 or WGAN-GP: :mod:`semknobs.train.attgan`) and an attribute head that
regresses the four attributes (logits; trained with binary cross-entropy against soft targets in
[0, 1]).

A critic that judges a tile against its attributes (``dis_projection``, Miyato & Koyama 2018,
"cGANs with Projection Discriminator"): the critic's score gains ``<E (y - 0.5), h(x)>``, with
``h`` the adversarial head's hidden features and ``E`` a learnt map of the attributes ``y`` (a
real tile's lot labels, an edit's target), so an edit at ``b`` must look like a real tile *at*
``b``, in everything the critic sees, not only like some real tile. Linear in ``y``: the critic
cannot single out the few training lots' label vectors. Without ``y`` the score leaves the term
out (the attribute head, which :mod:`semknobs.explain` reads, does not need it).

Conditioning that can move layout (``film``): every decoder level is also modulated
feature-wise by the attributes (FiLM: ``h * (1 + gamma(a)) + beta(a)``, initialised to the
identity), so a knob can change the structure a level builds, not only add texture through the
concatenated attribute planes.

Conditioning on the change (``condition: change``, STGAN: Liu et al. 2019): the decoder sees
``b - a``, the requested change from the tile's own attributes ``a``, instead of the target
``b``. Reconstruction is then the zero change for every tile, so the generator need not infer a
tile's attributes from its pixels to know how far to move them. Every call then passes ``a``
(``source``); the absolute design ignores it. STGAN's selective transfer units are not used.
``condition: both`` gives the decoder the target and the change side by side (twice the
attribute planes and FiLM inputs): the level a tile is taken to, and how far from its own
(measured against the other two: ``benchmarks/gain_level_rules.md``, Rule O).

Structure where the tile has none (``noise``, after StyleGAN's noise inputs, Karras et al. 2019):
each decoder level adds a fixed N(0, 1) map (seeded by ``NOISE_SEED``, the same for every tile,
so an edit stays a deterministic function of the tile and the knobs) times a per-channel scale
that is linear in the requested change ``b - a`` (zero at initialisation, and exactly zero for a
reconstruction). Without it every spatial detail an edit can draw comes from the encoder's maps
of the tile itself, and FiLM scales what is there: measured on the default study, the porosity,
dispersity and facetness edits of low-level lots deliver a third of what those of high-level
lots do (``benchmarks/gain_level.py``). Every call passes ``source``, as with ``change``.

Departures from the paper: attributes are continuous scores, not binary flags, so the attribute
head's loss is cross-entropy with soft targets, and target attributes during training are drawn as
described in :mod:`semknobs.train.attgan`; FiLM is ours (STGAN/StyleGAN-style conditioning).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

CONDITIONS = ("absolute", "change", "both")
NOISE_SEED = 0  # the fixed noise maps (``noise``) are part of the design, not of a training run


@dataclass(frozen=True)
class AttGANConfig:
    img_size: int = 64
    channels: int = 1
    n_attrs: int = 4
    enc_dim: int = 16
    enc_layers: int = 3
    dec_dim: int = 16
    dec_layers: int = 3
    shortcut_layers: int = 1
    inject_layers: int = 2
    dis_dim: int = 16
    dis_layers: int = 4
    dis_fc_dim: int = 128
    max_dim: int = 512
    film: bool = True  # FiLM modulation of every decoder level by the attributes
    condition: str = "absolute"  # absolute: the decoder sees b; change: b - a (STGAN); both
    dis_projection: bool = False  # the critic's score also judges the tile against its attributes
    noise: bool = False  # a fixed noise map per decoder level, scaled by the requested change

    def __post_init__(self) -> None:
        if self.img_size % 2**self.enc_layers:
            raise ValueError(f"img_size {self.img_size} must be divisible by 2**enc_layers")
        if self.dec_layers != self.enc_layers:
            raise ValueError("dec_layers must equal enc_layers (the decoder mirrors the encoder)")
        if self.img_size % 2**self.dis_layers:
            raise ValueError(f"img_size {self.img_size} must be divisible by 2**dis_layers")
        if not 0 <= self.shortcut_layers < self.dec_layers:
            raise ValueError("need 0 <= shortcut_layers < dec_layers")
        if not 0 <= self.inject_layers < self.dec_layers:
            raise ValueError("need 0 <= inject_layers < dec_layers")
        if self.condition not in CONDITIONS:
            raise ValueError(f"condition {self.condition!r}: expected one of {CONDITIONS}")

    @property
    def edits_from_source(self) -> bool:
        """The decoder sees the change from the tile's own attributes (``condition`` change or
        both, or ``noise`` scaled by it): every call needs them."""
        return self.condition != "absolute" or self.noise

    @property
    def cond_dim(self) -> int:
        """Width of what the decoder sees of the attributes: the target, the change, or both."""
        return self.n_attrs * (2 if self.condition == "both" else 1)


def _down(c_in: int, c_out: int, norm: type[nn.Module] | None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, stride=2, padding=1, bias=norm is None)]
    if norm is not None:
        layers.append(norm(c_out, affine=True) if norm is nn.InstanceNorm2d else norm(c_out))
    # out of place: in place after instance norm acts on a view, and autograd then records a
    # copy per layer that the gradient penalty's double backward multiplies (measured: +5 %)
    layers.append(nn.LeakyReLU(0.2))
    return nn.Sequential(*layers)


def _up(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


def _tile(attrs: torch.Tensor, size: int) -> torch.Tensor:
    """(B, A) -> (B, A, size, size)."""
    return attrs[:, :, None, None].expand(-1, -1, size, size)


class Generator(nn.Module):
    def __init__(self, cfg: AttGANConfig):
        super().__init__()
        self.cfg = cfg
        widths = [min(cfg.enc_dim * 2**i, cfg.max_dim) for i in range(cfg.enc_layers)]
        self.encoder = nn.ModuleList()
        c = cfg.channels
        for w in widths:  # each halves the side: 64 -> 32 -> 16 -> 8 -> 4
            self.encoder.append(_down(c, w, nn.BatchNorm2d))
            c = w
        self.decoder = nn.ModuleList()
        c = widths[-1] + cfg.cond_dim
        for i in range(cfg.dec_layers - 1):
            w = min(cfg.dec_dim * 2 ** (cfg.dec_layers - i - 1), cfg.max_dim)
            self.decoder.append(_up(c, w))
            c = w
            if i < cfg.shortcut_layers:  # concat the encoder map of the same resolution
                c += widths[-2 - i]
            if i < cfg.inject_layers:
                c += cfg.cond_dim
        self.to_image = nn.Sequential(
            nn.ConvTranspose2d(c, cfg.channels, 4, stride=2, padding=1), nn.Tanh()
        )
        self.film = nn.ModuleList()
        if cfg.film:  # one (gamma, beta) per decoder level, from the attributes
            for layer in self.decoder:
                width = layer[0].out_channels
                film = nn.Linear(cfg.cond_dim, 2 * width)
                nn.init.zeros_(film.weight)
                nn.init.zeros_(film.bias)
                self.film.append(film)
        self.noise = nn.ModuleList()
        if cfg.noise:  # per level: a fixed N(0, 1) map (a buffer) and its per-channel scale
            g = torch.Generator().manual_seed(NOISE_SEED)
            side = cfg.img_size // 2**cfg.enc_layers
            for i, layer in enumerate(self.decoder):
                side *= 2
                self.register_buffer(f"noise_map{i}", torch.randn(1, 1, side, side, generator=g))
                scale = nn.Linear(cfg.n_attrs, layer[0].out_channels, bias=False)
                nn.init.zeros_(scale.weight)  # starts as the design without noise
                self.noise.append(scale)

    @property
    def noise_maps(self) -> list[torch.Tensor]:
        return [getattr(self, f"noise_map{i}") for i in range(len(self.noise))]

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Image (B, C, S, S) in [-1, 1] -> encoder maps, finest first (each halves the side)."""
        feats = []
        for layer in self.encoder:
            x = layer(x)
            feats.append(x)
        return feats

    def conditioning(self, attrs: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        """What the decoder sees, (B, cond_dim) in [-1, 1]: the target, its change from
        ``source``, or both side by side."""
        if attrs.shape != source.shape:
            raise ValueError(f"attrs {tuple(attrs.shape)} and source {tuple(source.shape)} differ")
        target, change = attrs * 2 - 1, attrs - source
        if self.cfg.condition == "both":
            return torch.cat([target, change], dim=1)
        return change if self.cfg.condition == "change" else target

    def decode(
        self, feats: list[torch.Tensor], attrs: torch.Tensor, source: torch.Tensor
    ) -> torch.Tensor:
        """Encoder maps + target attributes (B, A) in [0, 1] and the tile's own ``source``
        attributes (B, A) in [0, 1] -> image (B, C, S, S) in [-1, 1]."""
        a = self.conditioning(attrs, source)
        z = feats[-1]
        h = torch.cat([z, _tile(a, z.shape[-1])], dim=1)
        for i, layer in enumerate(self.decoder):
            h = layer(h)  # (B, w, s, s)
            if self.film:
                gamma, beta = self.film[i](a)[:, :, None, None].chunk(2, dim=1)
                h = h * (1 + gamma) + beta
            if self.noise:  # (B, w, 1, 1) * (1, 1, s, s): nothing where b = a
                h = h + self.noise[i](attrs - source)[:, :, None, None] * self.noise_maps[i]
            if i < self.cfg.shortcut_layers:
                h = torch.cat([h, feats[-2 - i]], dim=1)
            if i < self.cfg.inject_layers:
                h = torch.cat([h, _tile(a, h.shape[-1])], dim=1)
        return self.to_image(h)

    def forward(self, x: torch.Tensor, attrs: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x), attrs, source)


class Discriminator(nn.Module):
    def __init__(self, cfg: AttGANConfig):
        super().__init__()
        layers = []
        c = cfg.channels
        for i in range(cfg.dis_layers):
            w = min(cfg.dis_dim * 2**i, cfg.max_dim)
            layers.append(_down(c, w, nn.InstanceNorm2d))
            c = w
        self.trunk = nn.Sequential(*layers, nn.Flatten())  # (B, c * (S / 2**L)**2)
        flat = c * (cfg.img_size // 2**cfg.dis_layers) ** 2

        def head(n_out: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(flat, cfg.dis_fc_dim),
                nn.LeakyReLU(0.2),
                nn.Linear(cfg.dis_fc_dim, n_out),
            )

        self.adversarial = head(1)
        self.attributes = head(cfg.n_attrs)
        self.projection = (
            nn.Linear(cfg.n_attrs, cfg.dis_fc_dim, bias=False) if cfg.dis_projection else None
        )

    def forward(
        self, x: torch.Tensor, attrs: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Image (and, with ``dis_projection``, its attributes (B, A) in [0, 1]) -> (critic
        score (B,), attribute logits (B, A))."""
        h = self.trunk(x)
        if self.projection is None or attrs is None:
            return self.adversarial(h).squeeze(1), self.attributes(h)
        hidden = self.adversarial[:-1](h)  # (B, dis_fc_dim)
        judged = (self.projection(attrs.to(hidden.dtype) - 0.5) * hidden).sum(dim=1)
        return self.adversarial[-1](hidden).squeeze(1) + judged, self.attributes(h)


def gradient_penalty(
    dis: Discriminator, real: torch.Tensor, fake: torch.Tensor, alpha: torch.Tensor | None = None
) -> torch.Tensor:
    """WGAN-GP: (||grad_x D(x_hat)|| - 1)^2 on interpolates ``alpha real + (1 - alpha) fake``."""
    if alpha is None:
        alpha = torch.rand(real.shape[0], 1, 1, 1, device=real.device)
    x_hat = (alpha * real + (1 - alpha) * fake).requires_grad_(True)
    score, _ = dis(x_hat)
    (grad,) = torch.autograd.grad(score.sum(), x_hat, create_graph=True)
    return ((grad.flatten(1).norm(dim=1) - 1) ** 2).mean()


def r1_penalty(
    dis: Discriminator, real: torch.Tensor, attrs: torch.Tensor | None = None
) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): E ||grad_x D(x)||^2 on real images (with their attributes,
    for a projection critic)."""
    x = real.detach().requires_grad_(True)
    score, _ = dis(x, attrs)
    (grad,) = torch.autograd.grad(score.sum(), x, create_graph=True)
    return grad.flatten(1).pow(2).sum(dim=1).mean()
