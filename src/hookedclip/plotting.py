"""Matplotlib figures: the one home of figure code. The helpers every result's ``plot`` draws with
(:func:`new_figure`, :func:`finish_figure`) and the figures the reports, segmentation and the
examples write as PNG files.

Figures are built with matplotlib's object API (``Figure``), never ``pyplot``: nothing global
is created or left open, no backend is chosen, and matplotlib is imported only when a figure
is drawn (``import hookedclip`` does not import it).
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np


# ---------------------------------------------------------------------------- helpers
def _figure(width: float, height: float):
    """An empty matplotlib ``Figure`` of ``width × height`` inches, outside pyplot."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def new_figure(width: float, height: float):
    """``(fig, ax)``: a matplotlib ``Figure`` with one axes, outside pyplot (nothing global to close)."""
    fig = _figure(width, height)
    return fig, fig.add_subplot()


def finish_figure(fig, path: str | Path | None):
    """Write ``fig`` to ``path`` (PNG at 130 dpi, tight) when given; return the figure."""
    if path is not None:
        fig.savefig(Path(path), dpi=130, bbox_inches="tight")
    return fig


def save_figure(fig, path: str | Path) -> Path:
    """Write ``fig`` to ``path`` (as :func:`finish_figure`); return the path."""
    finish_figure(fig, path)
    return Path(path)


def colormap(name: str):
    """The matplotlib colormap ``name`` (e.g. ``"Dark2"``, ``"tab20"``), a callable on values in [0, 1]."""
    from matplotlib import colormaps

    return colormaps[name]


# ---------------------------------------------------------------------------- report figures
def image_grid(images: np.ndarray, captions: Sequence[str], path: str | Path, cols: int = 8) -> Path:
    """uint8 images ``[N, H, W, 3]`` with a wrapped caption under each."""
    n = len(images)
    rows = int(np.ceil(n / cols))
    fig = _figure(1.9 * cols, 2.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax in axes:
        ax.axis("off")
    for ax, image, text in zip(axes, images, captions):
        ax.imshow(image, interpolation="nearest")
        ax.set_title("\n".join(textwrap.wrap(text, 22)), fontsize=7.5)
    return save_figure(fig, path)


def bar_chart(
    values: dict[str, float],
    path: str | Path,
    ylabel: str,
    title: str,
    chance: dict[str, float] | None = None,
    percent: bool = True,
    n: int | None = None,
) -> Path:
    """One bar per key, value printed on top; optional chance level per bar as a tick; with
    ``n`` (the items each accuracy was measured on), the 95% Wilson interval as an error bar."""
    names = list(values)
    scale = 100 if percent else 1
    fig, ax = new_figure(max(4.0, 0.9 * len(names) + 1.5), 3.2)
    heights = [scale * values[k] for k in names]
    errors = None
    if n and not percent:
        raise ValueError("interval error bars (n=) need percent=True: the values are accuracies")
    if n:
        low, high = zip(*(wilson(values[k], n) for k in names))
        errors = [[h - lo for h, lo in zip(heights, low)], [hi - h for h, hi in zip(heights, high)]]  # %
    bars = ax.bar(names, heights, color="#4C72B0", yerr=errors, capsize=3, ecolor="#333333")
    for bar, k in zip(bars, names):
        top = wilson(values[k], n)[1] if n else bar.get_height()
        ax.text(bar.get_x() + bar.get_width() / 2, top + 1, f"{scale * values[k]:.1f}", ha="center", fontsize=8)
        if chance and k in chance:
            ax.hlines(scale * chance[k], bar.get_x(), bar.get_x() + bar.get_width(), colors="#C44E52", linestyles="--")
    if chance:
        ax.plot([], [], "--", color="#C44E52", label="chance")
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the axes: never over a bar
    ax.set_ylim(0, 108 if percent else None)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def stacked_layer_shares(
    shares: dict[str, np.ndarray],
    labels: Sequence[str],
    path: str | Path,
    title: str,
    single: dict[str, float] | None = None,
) -> Path:
    """Per-layer bars split into parts (e.g. ``{"attention": [...], "MLP": [...]}``), after
    optional ``single`` bars (e.g. ``{"embed": share}``, grey); values in [0, 1] drawn as % and
    printed on each bar."""
    single = single or {}
    fig, ax = new_figure(max(4.5, 0.7 * (len(labels) + len(single)) + 2), 3.4)
    width = 0.8 / len(shares)
    x = np.arange(len(labels)) + len(single)
    bars = []
    for i, value in enumerate(single.values()):
        bars += ax.bar([i], [100 * value], width, color="#8C8C8C")
    for i, (name, vals) in enumerate(shares.items()):
        bars += ax.bar(x + (i - (len(shares) - 1) / 2) * width, 100 * np.asarray(vals), width, label=name)
    for bar in bars:
        height = bar.get_height()
        ax.text(bar.get_x() + bar.get_width() / 2, max(height, 0) + 0.4, f"{height:.1f}", ha="center", fontsize=7)
    ax.axhline(0, color="black", linewidth=0.8)
    ax.set_xticks(np.arange(len(single) + len(labels)), [*single, *labels])
    ax.set_ylabel("share of the image embedding (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    ax.margins(y=0.08)
    return save_figure(fig, path)


def head_heatmaps(
    scores: dict[str, np.ndarray],
    path: str | Path,
    title: str,
    vmin: float = 0.0,
    baseline: dict[str, float] | None = None,
    baseline_label: str = "chance",
    vmax: float = 1.0,
    value_label: str = "probe accuracy (%)",
    digits: int = 0,
    half_widths: dict[str, np.ndarray] | None = None,
) -> Path:
    """One ``[layer, head]`` heatmap per key, the value (%, ``digits`` decimals) written in each
    cell; ``baseline`` (e.g. the majority-class rate) is named in each panel's title as
    ``baseline_label``; the colour scale runs from ``vmin`` to ``vmax`` (fractions).
    ``half_widths``: per key, a ``[layer, head]`` array of each value's uncertainty (fractions, e.g.
    half a 95% interval's width), written after the value as ``"93 ±2"``."""
    n = len(scores)
    first = next(iter(scores.values()))
    fig = _figure(1.4 + 0.95 * first.shape[1] * n + 0.7 * n, 0.75 * first.shape[0] + 1.9)
    axes = fig.subplots(1, n, squeeze=False)
    for ax, (name, grid) in zip(axes[0], scores.items()):
        im = ax.imshow(100 * grid, vmin=100 * vmin, vmax=100 * vmax, cmap="viridis", aspect="auto")
        for (i, j), val in np.ndenumerate(grid):
            light = (val - vmin) / max(vmax - vmin, 1e-12) >= 0.7  # dark text on the bright end of viridis
            text = f"{100 * val:.{digits}f}"
            if half_widths is not None:
                text += f" ±{100 * half_widths[name][i, j]:.{digits}f}"
            ax.text(
                j,
                i,
                text,
                ha="center",
                va="center",
                fontsize=10,
                color="black" if light else "white",
            )
        subtitle = name + (f"\n({baseline_label} {100 * baseline[name]:.0f}%)" if baseline and name in baseline else "")
        ax.set_title(subtitle, fontsize=10)
        ax.set_xticks(range(grid.shape[1]), [f"H{h}" for h in range(grid.shape[1])], fontsize=9)
        ax.set_yticks(range(grid.shape[0]), [f"L{l}" for l in range(grid.shape[0])], fontsize=9)
        ax.set_xlabel("head", fontsize=9)
        ax.set_ylabel("layer", fontsize=9)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label=value_label)
    fig.suptitle(title, fontsize=11, y=1.0 + 0.35 / fig.get_figheight())  # above the two-line panel titles
    return save_figure(fig, path)


def line_curves(
    curves: dict[str, Sequence[float]],
    xlabels: Sequence[str],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str = "zero-shot top-1 (%)",
    chance: dict[str, float] | None = None,
    n: int | None = None,
) -> Path:
    """Several curves over the same steps (values in [0, 1], drawn as percentages); with ``n``
    (the items each accuracy was measured on), each curve's 95% Wilson interval shaded."""
    fig, ax = new_figure(max(4.5, 0.38 * len(xlabels) + 2.5), 3.4)
    for name, values in curves.items():
        (line,) = ax.plot(range(len(values)), [100 * v for v in values], marker="o", markersize=3.5, label=name)
        if n:
            low, high = zip(*(wilson(v, n) for v in values))
            ax.fill_between(range(len(values)), low, high, color=line.get_color(), alpha=0.15, linewidth=0)
        if chance and name in chance:
            ax.axhline(100 * chance[name], color=line.get_color(), linestyle=":", linewidth=1)
    if max(map(len, xlabels), default=0) > 3:  # rotate only labels that would collide
        ax.set_xticks(range(len(xlabels)), xlabels, rotation=45, ha="right", fontsize=8)
    else:
        ax.set_xticks(range(len(xlabels)), xlabels, fontsize=9)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(0, 102)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    legend_title = "; ".join(t for t, on in (("dotted: chance", chance), ("shaded: 95% interval", n)) if on)
    ax.legend(fontsize=8, title=legend_title or None, title_fontsize=7)
    return save_figure(fig, path)


def wilson(value: float, n: int | None) -> tuple[float, float]:
    """The 95% Wilson interval (in %) of an accuracy ``value`` (a fraction) measured on ``n`` items."""
    from hookedclip.zeroshot import accuracy_interval

    low, high = accuracy_interval(round(value * n), n)
    return 100 * low, 100 * high


# ---------------------------------------------------------------------------- segmentation, neighbours
def blend_heatmap(image: np.ndarray, heat: np.ndarray, alpha: float = 0.6, cmap: str = "jet") -> np.ndarray:
    """uint8 ``[H, W, 3]``: the image tinted by the colour-mapped heat map ``[H, W]`` in [0, 1],
    the tint's opacity ``alpha · heat``: where the map is 0 the image is unchanged, so the
    cold part of a map hides nothing."""
    colours = colormap(cmap)(np.clip(heat, 0, 1))[..., :3]
    weight = alpha * np.clip(heat, 0, 1)[..., None]
    out = (1 - weight) * (np.asarray(image, dtype=np.float64) / 255) + weight * colours
    return np.round(255 * out).astype(np.uint8)


def heatmap_overlays(
    images: np.ndarray,
    maps: np.ndarray,
    masks: np.ndarray | None,
    path: str | Path,
    captions: Sequence[str] | None = None,
    cols: int = 6,
    alpha: float = 0.6,
) -> Path:
    """Pairs of panels per image: the uint8 image ``[N, H, W, 3]`` with the ground-truth
    contour (white), and the image tinted by its heat map ``[N, H, W]`` in [0, 1]
    (:func:`blend_heatmap`: red = high, untinted = 0) with the binarised foreground
    (``map > mean``, cyan dashed contour). A legend under the grid says so."""
    n = len(images)
    cols = max(1, min(cols, n))
    rows = int(np.ceil(n / cols))
    fig = _figure(1.45 * 2 * cols, 1.8 * rows + 0.45)
    axes = fig.subplots(rows, 2 * cols, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for i in range(n):
        left, right = axes[i // cols, 2 * (i % cols)], axes[i // cols, 2 * (i % cols) + 1]
        left.imshow(images[i], interpolation="nearest")
        right.imshow(blend_heatmap(images[i], maps[i], alpha), interpolation="nearest")
        if maps[i].max() > maps[i].min():
            right.contour(maps[i] > maps[i].mean(), levels=[0.5], colors="cyan", linewidths=1.0, linestyles="--")
        if masks is not None:
            for ax in (left, right):
                ax.contour(masks[i].astype(float), levels=[0.5], colors="white", linewidths=1.0)
        if captions is not None:
            left.set_title("\n".join(textwrap.wrap(captions[i], 26)), fontsize=6.5, loc="left", x=0.0)
    from matplotlib.lines import Line2D

    handles = [
        Line2D([], [], color="white", linewidth=1.5, label="true outline"),
        Line2D([], [], color="cyan", linewidth=1.5, linestyle="--", label="binarised map (Res > mean)"),
        Line2D([], [], color="#d62728", linewidth=6, alpha=0.7, label="heat map tint (red = high)"),
    ]
    legend = fig.legend(
        handles=handles,
        loc="lower center",
        ncol=3,
        fontsize=7.5,
        frameon=True,
        bbox_to_anchor=(0.5, 0.0),
        facecolor="#555555",
        labelcolor="white",
        edgecolor="none",
    )
    legend.get_frame().set_alpha(1.0)
    fig.subplots_adjust(bottom=0.45 / (1.8 * rows + 0.45) + 0.02)
    return save_figure(fig, path)


def attention_grid(
    images: np.ndarray, maps: np.ndarray, row_labels: Sequence[str], path: str | Path, alpha: float = 0.65
) -> Path:
    """Rows of images tinted by an attention map: ``maps [rows, N, h, w]`` (e.g. one row per
    head, the CLS token's attention over the patch grid), each panel scaled to its own maximum
    and upsampled to the image; ``row_labels`` name the rows."""
    rows, n = maps.shape[:2]
    size = images.shape[1]
    fig = _figure(1.5 * (n + 1), 1.55 * rows)
    axes = fig.subplots(rows, n + 1, squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for j in range(n):
        axes[0, j + 1].set_title(f"image {j + 1}", fontsize=8)
    for r in range(rows):
        axes[r, 0].text(0.5, 0.5, row_labels[r], ha="center", va="center", fontsize=9, transform=axes[r, 0].transAxes)
        for j in range(n):
            heat = maps[r, j] / max(float(maps[r, j].max()), 1e-12)
            up = np.kron(heat, np.ones((size // heat.shape[0], size // heat.shape[1])))
            axes[r, j + 1].imshow(blend_heatmap(images[j], up, alpha), interpolation="nearest")
    return save_figure(fig, path)


def neighbour_grid(
    query: np.ndarray,
    neighbours: np.ndarray,
    captions: Sequence[str],
    path: str | Path,
    title: str = "",
    query_caption: str = "query",
    cols: int = 8,
    scores: Sequence[float] | None = None,
    score_name: str = "score",
) -> Path:
    """The query image (left, boxed) and its neighbours ``[k, H, W, 3]`` in rank order, each
    titled ``#rank`` and, with ``scores``, ``score_name = value`` above its caption."""
    k = len(neighbours)
    rows = int(np.ceil(k / cols))
    fig = _figure(1.5 * (cols + 1.3), 1.9 * rows + 0.5)
    grid = fig.add_gridspec(rows, cols + 1, width_ratios=[1.3] + [1] * cols, wspace=0.15, hspace=0.6)
    ax = fig.add_subplot(grid[:, 0])
    ax.imshow(query, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_edgecolor("#C44E52")
        side.set_linewidth(2.5)
    ax.set_title("query\n" + "\n".join(textwrap.wrap(query_caption, 18)), fontsize=7.5)
    for i in range(k):
        ax = fig.add_subplot(grid[i // cols, 1 + i % cols])
        ax.imshow(neighbours[i], interpolation="nearest")
        ax.axis("off")
        head = f"#{i + 1}" + (f"  {score_name} {float(scores[i]):.3g}" if scores is not None else "")
        ax.set_title(head + "\n" + "\n".join(textwrap.wrap(captions[i], 18)), fontsize=6.5)
    if title:
        fig.suptitle(title, fontsize=10, y=1.0 + 0.12 / rows)
    return save_figure(fig, path)
