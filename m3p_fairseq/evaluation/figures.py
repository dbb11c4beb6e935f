"""The paper's figures as PNG files (matplotlib, Agg backend: no display needed)."""

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

from ..atomic_io import atomic_path  # noqa: E402

MARKERS = "os^Dvx*P"


def save_figure(figure, path: Path) -> Path:
    """Written to a temporary name and renamed, so a reader never sees half a PNG."""
    path = Path(path)
    try:
        with atomic_path(path) as tmp:
            figure.savefig(tmp, format="png", dpi=120, bbox_inches="tight")
    finally:
        plt.close(figure)
    return path


def plot_curves(curves: Dict[str, Sequence[Tuple[float, float]]], path: Path, xlabel: str,
                ylabel: str = "BLEU", title: Optional[str] = None, percent: bool = True,
                log_x: bool = False) -> Path:
    """One line per system through its (x, y) points; x in [0, 1] drawn as percentages, on a
    logarithmic axis with ``log_x`` (shares from 1 % to 100 % spread evenly)."""
    figure, axes = plt.subplots(figsize=(5, 3.6))
    measured = set()
    for number, (system, points) in enumerate(curves.items()):
        xs, ys = zip(*sorted(points))
        xs = [100 * x for x in xs] if percent else list(xs)
        measured.update(xs)
        axes.plot(xs, ys, marker=MARKERS[number % len(MARKERS)], label=system)
    if log_x:
        axes.set_xscale("log")
        ticks = sorted(measured)
        axes.set_xticks(ticks, [f"{x:g}" for x in ticks])
        axes.xaxis.set_minor_formatter(NullFormatter())  # only the shares measured are labelled
    axes.set_xlabel(xlabel)
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(alpha=0.3)
    axes.legend()
    return save_figure(figure, path)


def plot_tsne(panels: Dict[str, Tuple[np.ndarray, Sequence[str]]], path: Path, title: Optional[str] = None) -> Path:
    """One scatter plot per system: 2-d points coloured by their language label."""
    figure, axes_row = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 4), squeeze=False)
    languages = sorted({label for _, labels in panels.values() for label in labels})
    colours = {lang: plt.get_cmap("tab10")(i % 10) for i, lang in enumerate(languages)}
    for axes, (system, (points, labels)) in zip(axes_row[0], panels.items()):
        labels = np.asarray(labels)
        for lang in languages:
            chosen = labels == lang
            axes.scatter(points[chosen, 0], points[chosen, 1], s=9, alpha=0.7, color=colours[lang], label=lang)
        axes.set_title(system, fontsize=10)
        axes.set_xticks([])
        axes.set_yticks([])
    handles, names = axes_row[0][0].get_legend_handles_labels()
    figure.legend(handles, names, title="source language", loc="lower center", ncol=len(languages),
                  bbox_to_anchor=(0.5, -0.1), markerscale=2)
    if title:
        figure.suptitle(title, y=1.06)
    return save_figure(figure, path)


def plot_attention(rows: List[Tuple[str, List[str], np.ndarray]], grid: Tuple[int, int], path: Path,
                   image: Optional[np.ndarray] = None, title: Optional[str] = None,
                   sentences: Optional[Dict[str, str]] = None) -> Path:
    """One row per sentence (label, word labels, weights [words, patches]): the image (or the
    empty patch grid), the sentence average, then one heat map per word. Weights are drawn over
    the image, each map scaled to its own maximum (brighter = more attention); ``sentences``
    (label -> text) are written under their rows."""
    columns = 2 + max(len(tokens) for _, tokens, _ in rows)
    figure, axes = plt.subplots(len(rows), columns, figsize=(1.6 * columns, 2.1 * len(rows)), squeeze=False)
    extent = (0, grid[1], grid[0], 0)
    for r, (label, tokens, weights) in enumerate(rows):
        maps = [("(image)", None), ("sentence average", weights.mean(axis=0))] + list(zip(tokens, weights))
        for c in range(columns):
            ax = axes[r][c]
            ax.set_xticks([])
            ax.set_yticks([])
            if c >= len(maps):
                ax.axis("off")
                continue
            name, values = maps[c]
            if image is not None:
                ax.imshow(image, extent=extent)
            else:
                ax.imshow(np.ones(grid), cmap="gray", vmin=0, vmax=1, extent=extent)
                ax.set_xticks(np.arange(grid[1] + 1), minor=True)
                ax.set_yticks(np.arange(grid[0] + 1), minor=True)
                ax.grid(which="minor", color="0.7", linewidth=0.5)
            if values is not None:
                heat = values.reshape(grid)
                ax.imshow(heat / max(float(heat.max()), 1e-9), cmap="inferno", alpha=0.65 if image is not None else 1.0,
                          vmin=0, vmax=1, extent=extent, interpolation="nearest")
            ax.set_title(name, fontsize=9)
        axes[r][0].set_ylabel(label, fontsize=12, fontweight="bold")
        if sentences and label in sentences:
            axes[r][1].text(0, -0.12, sentences[label], transform=axes[r][1].transAxes, fontsize=8,
                            va="top", ha="left", style="italic")
    if title:
        figure.suptitle(title, fontsize=10)
    return save_figure(figure, path)
