"""PNG figures a person would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np


def heatmap(
    matrix: np.ndarray | Sequence[Sequence[float]],
    rows: Sequence[str],
    cols: Sequence[str],
    path: Path,
    *,
    title: str,
    fmt: str = "{:.1%}",
    cmap: str = "viridis",
    colorbar_label: str = "",
) -> Path:
    """An annotated heatmap, written to ``path`` (PNG)."""
    data = np.asarray(matrix, dtype=float)
    assert data.shape == (len(rows), len(cols)), (data.shape, len(rows), len(cols))
    # Room for the longest row label and the title, then ~1.1 inch per column.
    label_in = 0.08 * max((len(r) for r in rows), default=4)
    width = max(label_in + 1.6 + 1.1 * len(cols), 0.09 * len(title) + 1.0)
    fig, ax = plt.subplots(figsize=(width, 1.0 + 0.8 * len(rows)))
    image = ax.imshow(data, cmap=cmap)
    ax.set_xticks(range(len(cols)), labels=list(cols), rotation=30, ha="right")
    ax.set_yticks(range(len(rows)), labels=list(rows))
    finite = data[np.isfinite(data)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for i in range(data.shape[0]):
        for j in range(data.shape[1]):
            if np.isfinite(data[i, j]):
                color = "black" if data[i, j] > middle else "white"
                ax.text(j, i, fmt.format(data[i, j]), ha="center", va="center", color=color)
    fig.colorbar(image, ax=ax, label=colorbar_label, shrink=0.8)
    ax.set_title(title)
    return _save(fig, path)


def curves(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: Path,
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
) -> Path:
    """One line per named (x, y) series."""
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, (xs, ys) in series.items():
        ax.plot(list(xs), list(ys), marker=".", label=name)
    ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def error_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, *, title: str
) -> Path:
    """One panel per metric kind, one bar per name: ``{"mean", "sd", "values"}`` as mean ± sd
    with every seed's value as a dot (None values, e.g. "never reached", are left out)."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), squeeze=False)
    for ax, (kind, bars) in zip(axes[0], panels.items(), strict=True):
        names = list(bars)
        means = [np.nan if bars[n]["mean"] is None else bars[n]["mean"] for n in names]
        sds = [0.0 if bars[n]["sd"] is None else bars[n]["sd"] for n in names]
        ax.bar(range(len(names)), means, yerr=sds, capsize=4, color="tab:blue", alpha=0.6)
        for i, n in enumerate(names):
            dots = [v for v in bars[n]["values"] if v is not None]
            ax.plot([i] * len(dots), dots, "k.", ms=5)
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(kind)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


EDGE_COLORS = {"ki": "tab:blue", "grow": "tab:green", "adapt": "tab:gray", "adapter": "tab:purple"}


def lineage_graph(
    nodes: Sequence[str],
    edges: Sequence[tuple[str, str, str]],
    generation: Mapping[str, int],
    path: Path,
    *,
    title: str = "model lineage",
) -> Path:
    """Models in columns by generation, edges coloured by kind (ki, grow, adapt, adapter)."""
    columns: dict[int, list[str]] = {}
    for name in nodes:
        columns.setdefault(generation[name], []).append(name)
    pos = {}
    for g, names in columns.items():
        for i, name in enumerate(sorted(names)):
            pos[name] = (g, -i + (len(names) - 1) / 2)
    height = max((len(v) for v in columns.values()), default=1)
    fig, ax = plt.subplots(figsize=(3.2 * max(columns, default=1) + 1, 0.9 * height + 1.5))
    for parent, child, kind in edges:
        (x0, y0), (x1, y1) = pos[parent], pos[child]
        ax.annotate(
            "",
            xy=(x1, y1),
            xytext=(x0, y0),
            arrowprops={
                "arrowstyle": "-|>",
                "color": EDGE_COLORS.get(kind, "black"),
                "linestyle": "--" if kind == "ki" else "-",
                "shrinkA": 28,
                "shrinkB": 28,
                "connectionstyle": "arc3,rad=0.08",
            },
        )
    for name, (x, y) in pos.items():
        ax.text(
            x,
            y,
            name,
            ha="center",
            va="center",
            fontsize=8,
            bbox={"boxstyle": "round", "facecolor": "white", "edgecolor": "0.4"},
        )
    for kind, color in EDGE_COLORS.items():
        ax.plot([], [], color=color, linestyle="--" if kind == "ki" else "-", label=kind)
    ax.legend(loc="upper left", fontsize=8, frameon=False)
    ax.set_xticks(sorted(columns), labels=[f"G{g}" for g in sorted(columns)])
    ax.set_yticks([])
    ax.set_xlim(min(columns, default=1) - 0.6, max(columns, default=1) + 0.6)
    ax.set_ylim(-height / 2 - 0.5, height / 2 + 0.5)
    for side in ("top", "right", "left"):
        ax.spines[side].set_visible(False)
    ax.set_title(title)
    return _save(fig, path)
