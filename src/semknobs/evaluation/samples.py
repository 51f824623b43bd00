"""AttGAN edits as uint8 tiles, and the Figure-2-style sample grid the trainer logs while it
trains. Light on purpose: training imports this, not the evaluation with its meter and SciPy."""

from __future__ import annotations

import numpy as np
import torch
from matplotlib.figure import Figure

from semknobs.attributes import ATTRIBUTES
from semknobs.models.attgan import Generator
from semknobs.pixels import to_model, to_uint8


@torch.no_grad()
def generate(
    gen: Generator,
    images: np.ndarray,
    attrs: np.ndarray,
    source: np.ndarray,
    batch_size: int = 64,
) -> np.ndarray:
    """Edits G(I; A) as uint8 tiles; ``attrs`` (n, 4) in [0, 1], one row per image, and
    ``source`` (n, 4) each tile's own attributes (what a change-conditioned generator moves
    from)."""
    device = next(gen.parameters()).device
    was_training = gen.training
    gen.eval()
    out = []
    for i in range(0, len(images), batch_size):
        x = to_model(images[i : i + batch_size], device)
        a, s = (
            torch.as_tensor(v[i : i + batch_size], dtype=torch.float32, device=device)
            for v in (attrs, source)
        )
        out.append(to_uint8(gen(x, a, s)))
    gen.train(was_training)
    return np.concatenate(out)


def sample_grid(gen: Generator, images: np.ndarray, attrs: np.ndarray) -> Figure:
    """Figure-2 style: original | reconstruction | each attribute pushed to 0 and to 1."""
    columns = ["original", "reconstruction"]
    cols = [images, generate(gen, images, attrs, attrs)]
    for k, name in enumerate(ATTRIBUTES):
        for value in (0.0, 1.0):
            edit = attrs.copy()
            edit[:, k] = value
            cols.append(generate(gen, images, edit, attrs))
            columns.append(f"{name} {'low' if value == 0 else 'high'}")
    n = len(images)
    fig = Figure(figsize=(1.1 * len(cols), 1.1 * n + 0.5), layout="constrained")
    axes = fig.subplots(n, len(cols), squeeze=False)
    for j, (title, col) in enumerate(zip(columns, cols)):
        for i in range(n):
            ax = axes[i, j]
            ax.imshow(col[i], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0, j].set_title(title, fontsize=7)
    return fig
