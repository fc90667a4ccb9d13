"""PNG figures a person would rather look at than read (matplotlib, headless)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

from lineage.registry.graph import PICTURE_FORMATS


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
    return save_figure(fig, path)


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
    return save_figure(fig, path)


def error_bars(
    panels: Mapping[str, Mapping[str, Mapping[str, Any]]], path: Path, *, title: str
) -> Path:
    """One panel per metric kind, one bar per name: ``{"mean", "sd", "values"}`` as mean ± sd
    with every seed's value as a dot. None values (e.g. "never reached") are left out of the
    bar and counted on it: "1/3" when one seed of three has a value, "none" when no seed has."""
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 4.5), squeeze=False)
    for ax, (kind, bars) in zip(axes[0], panels.items(), strict=True):
        names = list(bars)
        means = [np.nan if bars[n]["mean"] is None else bars[n]["mean"] for n in names]
        sds = [0.0 if bars[n]["sd"] is None else bars[n]["sd"] for n in names]
        ax.bar(range(len(names)), means, yerr=sds, capsize=4, color="tab:blue", alpha=0.6)
        for i, n in enumerate(names):
            dots = [v for v in bars[n]["values"] if v is not None]
            ax.plot([i] * len(dots), dots, "k.", ms=5)
            if len(dots) < len(bars[n]["values"]):
                label = f"{len(dots)}/{len(bars[n]['values'])}" if dots else "none"
                ax.text(i, 0.02, label, transform=ax.get_xaxis_transform(), ha="center", fontsize=8)
        if all(np.isnan(means)):  # no bar at all: an empty panel, not a range around 0
            ax.set_ylim(0, 1)
            ax.set_yticks([])
        ax.set_xticks(range(len(names)), names, rotation=60, ha="right", fontsize=8)
        ax.set_title(kind)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return save_figure(fig, path)


def save_figure(fig: Figure, path: Path) -> Path:
    """Write ``fig`` as a PNG at ``path`` (atomically) and release it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.tight_layout()
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    tmp.replace(path)
    return path


def lineage_picture(dot: str, path: Path, formats: Sequence[str] = PICTURE_FORMATS) -> list[Path]:
    """Draw the family's DOT text (``lineage.registry.graph.to_dot``) with Graphviz's layered
    layout (the ``dot`` engine: ranks follow the edges, crossings are minimised) to ``path``
    with each format's suffix (PNG and SVG by default); returns the files written."""
    import graphviz

    from lineage.errors import LineageError
    from lineage.files import atomic_write_bytes

    written = []
    for fmt in formats:
        if fmt not in PICTURE_FORMATS:
            raise LineageError(f"picture formats: {', '.join(PICTURE_FORMATS)}; got {fmt!r}")
        try:
            data = graphviz.Source(dot, engine="dot").pipe(format=fmt)
        except graphviz.ExecutableNotFound as exc:
            raise LineageError(
                "drawing the lineage needs Graphviz's `dot` program: install it "
                "(Debian/Ubuntu: apt-get install graphviz; macOS: brew install graphviz)"
            ) from exc
        target = path.with_suffix(f".{fmt}")
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(target, data)
        written.append(target)
    return written
