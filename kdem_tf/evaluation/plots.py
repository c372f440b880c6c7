"""Evaluation figures: a CMC curve and a retrieval montage (PNG files).

matplotlib is used through its object API on the Agg canvas (no display, no
pyplot state); the montage is composed with PIL so it stays pixel-exact.
"""
from __future__ import annotations

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

GREEN = (0, 170, 0)
RED = (215, 0, 0)
QUERY_BLUE = (30, 90, 200)


def plot_cmc(cmc_percent: Sequence[float], path: str, title: str = "CMC",
             per_trial: Optional[Sequence[Sequence[float]]] = None) -> str:
    """Writes the CMC curve (matching rate in % against rank 1..R) to `path` and returns it.

    Args:
        cmc_percent: [R] mean curve in percent.
        per_trial: optional [T, R] curves, drawn faint behind the mean.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    cmc = np.asarray(cmc_percent, dtype=np.float64)
    ranks = np.arange(1, len(cmc) + 1)
    fig = Figure(figsize=(6, 4.2), dpi=110)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    for curve in per_trial or ():
        ax.plot(ranks, curve, color="0.75", linewidth=0.8, zorder=1)
    ax.plot(ranks, cmc, marker="o", markersize=3.5, color="C0", linewidth=2,
            label=f"mean (Rank-1 {cmc[0]:.2f}%)", zorder=2)
    for k in (1, 5, 10, 20):
        if k <= len(cmc):
            ax.annotate(f"R{k} {cmc[k - 1]:.1f}", (k, cmc[k - 1]), textcoords="offset points",
                        xytext=(4, -13), ha="left" if k < len(cmc) else "right", fontsize=8)
    ax.set_xlabel("Rank")
    ax.set_ylabel("Matching rate (%)")
    ax.set_title(title, fontsize=10)
    ax.set_xlim(0.5, len(cmc) + 0.5)
    ax.set_ylim(max(0.0, float(cmc.min()) - 10.0), 100.5)
    ax.set_xticks([k for k in (1, 5, 10, 15, 20) if k <= len(cmc)] or [1])
    ax.grid(True, alpha=0.3)
    ax.legend(loc="lower right", fontsize=9)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    return path


def _thumbnail(data_root: str, rel_path: str, size: tuple) -> Image.Image:
    """The image scaled to `size` (width, height); a grey tile when it cannot be read."""
    try:
        with Image.open(os.path.join(data_root, rel_path)) as im:
            return im.convert("RGB").resize(size, Image.BILINEAR)
    except (OSError, ValueError):
        return Image.new("RGB", size, (128, 128, 128))


def retrieval_montage(data_root: str, query_paths: Sequence[str], query_labels: Sequence[str],
                      ranked_paths: Sequence[Sequence[str]], correct: Sequence[Sequence[bool]],
                      path: str, thumb: tuple = (64, 128), title: str = "") -> str:
    """Writes a grid: one row per query, the query (blue frame) then its top-k gallery images.

    Args:
        query_paths: [Q] paths relative to `data_root`; query_labels: [Q] row captions.
        ranked_paths: [Q][k] gallery paths in rank order; correct: [Q][k] same-identity flags
            (framed green when true, red when false).
        thumb: (width, height) of one tile.
    """
    font = ImageFont.load_default()
    w, h = thumb
    border, gap, caption = 4, 6, 14
    k = max((len(r) for r in ranked_paths), default=0)
    tile_w, tile_h = w + 2 * border, h + 2 * border
    top = caption + (caption if title else 0)
    width = gap + tile_w + 3 * gap + k * (tile_w + gap)
    height = top + len(query_paths) * (tile_h + caption + gap) + gap
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 2), title, fill="black", font=font)
    x0 = gap + tile_w + 3 * gap
    for j in range(k):
        draw.text((x0 + j * (tile_w + gap) + tile_w // 2 - 6, top - caption + 1), f"#{j + 1}",
                  fill="black", font=font)
    for i, (q_path, label) in enumerate(zip(query_paths, query_labels)):
        y = top + i * (tile_h + caption + gap)
        draw.rectangle([gap, y, gap + tile_w - 1, y + tile_h - 1], fill=QUERY_BLUE)
        canvas.paste(_thumbnail(data_root, q_path, thumb), (gap + border, y + border))
        draw.text((gap, y + tile_h + 1), str(label)[:max(8, tile_w // 6)], fill="black", font=font)
        for j, (g_path, ok) in enumerate(zip(ranked_paths[i], correct[i])):
            x = x0 + j * (tile_w + gap)
            draw.rectangle([x, y, x + tile_w - 1, y + tile_h - 1], fill=GREEN if ok else RED)
            canvas.paste(_thumbnail(data_root, g_path, thumb), (x + border, y + border))
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    canvas.save(path, format="PNG")
    return path


def save_figure(fig, path: str, title: Optional[str] = None, title_size: int = 10) -> str:
    """Lays out a matplotlib Figure (with an optional suptitle) and writes it to `path` as PNG, atomically
    (a temporary sibling, then a rename)."""
    if title:
        fig.suptitle(title, fontsize=title_size)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    temp = f"{path}.tmp.png"
    fig.savefig(temp)
    os.replace(temp, path)
    return path
