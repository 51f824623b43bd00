"""The ground-truth peak-stress law of the synthetic lots, with its closed-form gradient.

With true attributes ``a = (s, p, q, f)`` in [0, 1] (size, porosity, dispersity, facetness) and the
mean particle diameter ``d(s) = d_min + s (d_max - d_min)`` in micrometres::

    sigma(a) = (sigma0 + k_hp / sqrt(d(s))) * exp(-b p) + c_q q + c_f f + c_qf q f     [MPa]

* Hall–Petch in size: finer particles are stronger (``k_hp > 0``), with diminishing returns;
* Ryshkewitch-type exponential weakening with porosity (``b > 0``) that scales the size term, so
  size and porosity interact multiplicatively;
* a dispersity x facetness interaction ``c_qf``: broad size distributions of faceted crystals pack
  and interlock better.

Every coefficient is a parameter; flip a sign to get a different law (the explanations must
recover whatever law generated the data). A lot's measured peak stress is ``sigma`` at its true
attributes plus Gaussian noise of ``noise_mpa``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class StressLaw:
    sigma0_mpa: float = 20.0
    k_hp: float = 90.0  # MPa * um^0.5
    d_min_um: float = 4.0
    d_max_um: float = 10.0
    porosity_decay: float = 0.6
    c_dispersity: float = 6.0
    c_facetness: float = 4.0
    c_dispersity_facetness: float = 6.0
    noise_mpa: float = 1.5

    def __post_init__(self) -> None:
        if not 0 < self.d_min_um < self.d_max_um:
            raise ValueError("law needs 0 < d_min_um < d_max_um")
        if self.noise_mpa < 0:
            raise ValueError("law.noise_mpa must be >= 0")

    def diameter_um(self, size: np.ndarray) -> np.ndarray:
        return self.d_min_um + np.asarray(size) * (self.d_max_um - self.d_min_um)

    def __call__(self, attrs: np.ndarray) -> np.ndarray:
        """Noise-free peak stress (MPa) for attributes of shape (..., 4)."""
        s, p, q, f = np.moveaxis(np.asarray(attrs, dtype=float), -1, 0)
        base = self.sigma0_mpa + self.k_hp / np.sqrt(self.diameter_um(s))
        return (
            base * np.exp(-self.porosity_decay * p)
            + self.c_dispersity * q
            + self.c_facetness * f
            + self.c_dispersity_facetness * q * f
        )

    def gradient(self, attrs: np.ndarray) -> np.ndarray:
        """d sigma / d a, shape (..., 4), in MPa per unit of each [0, 1] attribute."""
        s, p, q, f = np.moveaxis(np.asarray(attrs, dtype=float), -1, 0)
        d = self.diameter_um(s)
        decay = np.exp(-self.porosity_decay * p)
        base = self.sigma0_mpa + self.k_hp / np.sqrt(d)
        d_size = -0.5 * self.k_hp * d**-1.5 * (self.d_max_um - self.d_min_um) * decay
        d_por = -self.porosity_decay * base * decay
        d_disp = self.c_dispersity + self.c_dispersity_facetness * f
        d_facet = self.c_facetness + self.c_dispersity_facetness * q
        return np.stack(np.broadcast_arrays(d_size, d_por, d_disp, d_facet), axis=-1)
