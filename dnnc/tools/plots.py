"""Pictures of training: loss and accuracy curves (matplotlib, the optional extra
`dnnc[plot]`) and a layer's learned filters as a grid (Pillow, `dnnc[images]`)."""
from __future__ import annotations

import io

import numpy as np

from ..base.errors import DnncError
from ..base.fileio import atomic_write
from ..io.images import write_png


def curves(history: list[dict], path, title: str) -> None:
    """Train and test loss (left axis) and test accuracy (right axis) per epoch, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise DnncError("--plot needs matplotlib: pip install 'dnnc[plot]'") from None

    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6.4, 4.0), dpi=100)
    ax.plot(epochs, [h["train_loss"] for h in history], "o-", label="train loss")
    if all("test_loss" in h for h in history):
        ax.plot(epochs, [h["test_loss"] for h in history], "s-", label="test loss")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    lines, labels = ax.get_legend_handles_labels()
    if all("accuracy" in h for h in history):
        acc = ax.twinx()
        acc.plot(epochs, [100 * h["accuracy"] for h in history], "^-", color="tab:green", label="test accuracy")
        acc.set_ylabel("test accuracy (%)")
        more, names = acc.get_legend_handles_labels()
        lines, labels = lines + more, labels + names
    ax.legend(lines, labels, loc="center right")
    ax.set_title(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write(path, buf.getvalue())


def filter_grid(w: np.ndarray, path, scale: int = 8, gap: int = 2) -> tuple[int, int]:
    """A conv weight [filters, channels, k, k] as a grid of tiles, one per filter: colour when
    it has 3 input channels, else one tile per (filter, channel) pair in gray. Each tile is
    scaled to its own range (like the lecture's first-layer filter pictures)."""

    if w.ndim != 4:
        raise DnncError(f"a filter grid needs a conv weight [filters, channels, k, k]; this one is {list(w.shape)}")
    f, c, kh, kw = w.shape
    tiles = [w[i] for i in range(f)] if c == 3 else [w[i, j][None] for i in range(f) for j in range(c)]
    cols = int(np.ceil(np.sqrt(len(tiles))))
    rows = int(np.ceil(len(tiles) / cols))
    ch = 3 if c == 3 else 1
    th, tw = kh * scale, kw * scale
    out = np.ones((ch, rows * (th + gap) + gap, cols * (tw + gap) + gap))
    for k, t in enumerate(tiles):
        lo, hi = float(t.min()), float(t.max())
        t = (t - lo) / (hi - lo) if hi > lo else np.full_like(t, 0.5)
        t = np.kron(t, np.ones((scale, scale)))
        r, q = divmod(k, cols)
        out[:, gap + r * (th + gap): gap + r * (th + gap) + th, gap + q * (tw + gap): gap + q * (tw + gap) + tw] = t
    write_png(path, out)
    return rows, cols
