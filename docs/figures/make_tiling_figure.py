"""Draw docs/figures/tiling.png: the tile grid, the edge policy and a blend window. Run from the repo root."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.patches import Rectangle  # noqa: E402

from geoseg.blend import tile_weights, window_1d  # noqa: E402
from geoseg.tiling import TileGrid  # noqa: E402


def main(out: Path = Path(__file__).with_name("tiling.png")) -> Path:
    h, w, size, overlap, align = 379, 578, 256, 64, 8
    g = TileGrid(h, w, size, overlap, align)
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.6), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    ax = axes[0]
    ax.add_patch(Rectangle((0, 0), w, h, fill=False, lw=2, color="black"))
    colours = plt.cm.tab10.colors
    for n, t in enumerate(g):
        ax.add_patch(Rectangle((t.col + 2, t.row + 2), size - 4, size - 4, fill=True, alpha=0.12,
                               color=colours[n % 10]))
        ax.add_patch(Rectangle((t.col + 2, t.row + 2), size - 4, size - 4, fill=False, lw=1.5,
                               color=colours[n % 10]))
        ax.text(t.col + 10, t.row + 25, f"({t.row},{t.col})", color=colours[n % 10], fontsize=8)
    ax.add_patch(Rectangle((w, 0), 6, h + 6, color="grey", alpha=0.4, hatch="//"))
    ax.set_xlim(-10, w + 20)
    ax.set_ylim(h + 20, -10)
    ax.set_aspect("equal")
    ax.set_title(f"{w}x{h} raster, tile {size}, overlap {overlap}, align {align}\n"
                 f"last tiles move inward onto the pooling grid; grey: reflected overhang", fontsize=9)
    x = np.arange(size)
    ax = axes[1]
    for kind in ["hann", "triangular", "uniform", "crop"]:
        ax.plot(x, window_1d(kind, size, overlap), label=kind)
    ax.plot(x, window_1d("hann", size, overlap, at_start=True), ":", color="black", lw=2,
            label="hann at a raster border")
    ax.set_title("1-D blend windows (floor 1e-3, max 1)", fontsize=9)
    ax.set_xlabel("pixel in tile")
    ax.legend(fontsize=8)
    ax = axes[2]
    ax.imshow(tile_weights("hann", size, size, overlap, top=True, bottom=False, left=True, right=False),
              cmap="viridis")
    ax.set_title("2-D hann weights of a top-left tile\n(flat towards the raster border)", fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=80)
    return out


if __name__ == "__main__":
    print(main())
