"""The latent gallery of a sparse autoencoder (written by ``hookedclip sae gallery``,
:mod:`hookedclip.cli.sae_gallery`).

:func:`write_gallery` writes a folder: ``index.html``, one card per latent (its top images with
their activations, its label with the alignment score and the runner-up, its clarity and mean
activation), the alignment-vs-clarity scatter (``labels.png``) and the images it shows
(``img/<dataset index>.png``, each written once). Latents are listed most aligned first, then the
semantic outliers (clear latents that no text of the vocabulary describes) apart.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from hookedclip.identity import model_label
from hookedclip.methods.sae import LatentLabels
from hookedclip.report import viz

_CSS = """
.latent { border: 1px solid #ddd; border-radius: 6px; padding: .5em .8em; margin: 1em 0; }
.latent h3 { margin: .1em 0 .3em; font-size: 1.05em; }
.latent .facts { color: #444; font-size: .9em; margin: 0 0 .5em; }
.label { font-weight: 600; color: #14508c; }
.strip { display: flex; flex-wrap: wrap; gap: 8px; }
.strip figure { margin: 0; text-align: center; }
.strip img { width: 96px; height: 96px; image-rendering: pixelated; border: 1px solid #ccc; }
.strip figcaption { font-size: .8em; color: #333; font-variant-numeric: tabular-nums; }
.strip .silent img { opacity: .35; }
.index { line-height: 2.1; font-size: .88em; }
.chip { display: inline-block; border: 1px solid #ccc; border-radius: 4px; padding: 0 .45em; margin: 0 .3em .2em 0;
        text-decoration: none; color: #222; white-space: nowrap; }
"""


def _save_images(images_of: Callable[[list[int]], np.ndarray], indices: list[int], folder: Path) -> None:
    """``img/<index>.png`` for every index not yet written."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    missing = [i for i in dict.fromkeys(indices) if not (folder / f"{i}.png").exists()]
    for start in range(0, len(missing), 256):
        chunk = missing[start : start + 256]
        for i, image in zip(chunk, images_of(chunk)):
            Image.fromarray(np.asarray(image, dtype=np.uint8)).save(folder / f"{i}.png")


def _card(labels: LatentLabels, j: int, top: int) -> str:
    score, clear = float(labels.score[j]), float(labels.clarity[j])
    facts = (
        f"alignment <b>{score:.3f}</b> (runner-up “{html.escape(labels.runner_up_of(j))}” "
        f"{float(labels.runner_up_score[j]):.3f}) · clarity <b>{clear:.2f}</b> · mean activation of the top "
        f"{labels.top_values.shape[0]}: {float(labels.mean_activation[j]):.3g}"
    )
    cells = []
    for value, index in zip(labels.top_values[:top, j].tolist(), labels.top_indices[:top, j].tolist()):
        silent = " class='silent'" if value <= 0 else ""  # the latent does not fire on this image
        cells.append(
            f"<figure{silent}><img src='img/{index}.png' alt='image {index}'>"
            f"<figcaption>{value:.3g}<br><span class='meta'>#{index}</span></figcaption></figure>"
        )
    return (
        f"<div class='latent' id='latent{j}'><h3>latent {j}: <span class='label'>{html.escape(labels.label_of(j))}"
        f"</span></h3><p class='facts'>{facts}</p><div class='strip'>{''.join(cells)}</div></div>"
    )


def _index(labels: LatentLabels, latents: Sequence[int]) -> str:
    """A compact, wrapping list of links: latent, label, alignment."""
    chips = "".join(
        f"<a class='chip' href='#latent{j}'><b>{j}</b> {html.escape(labels.label_of(j))} "
        f"<span class='meta'>{float(labels.score[j]):.2f}</span></a>"
        for j in latents
    )
    return f"<p class='index'>{chips}</p>"


def write_gallery(
    labels: LatentLabels,
    images_of: Callable[[list[int]], np.ndarray],
    out: str | Path,
    top: int = 8,
    latents: Sequence[int] | None = None,
    max_latents: int = 64,
    n_outliers: int = 6,
    min_clarity: float = 0.4,
    title: str = "Latent gallery",
) -> Path:
    """Write the gallery folder (module docstring); returns the path of ``index.html``.

    Args:
        images_of: uint8 images ``[m, H, W, 3]`` of the given dataset indices (for display).
        top: images shown per latent (at most the ``n`` the labels were computed from).
        latents: which latents to show (default: the live ones, most aligned first, at most
            ``max_latents``).
        n_outliers, min_clarity: the semantic outliers listed apart: the ``n_outliers`` least
            aligned latents whose clarity exceeds ``min_clarity``.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    top = min(top, labels.top_indices.shape[0])
    live = labels.most_aligned(len(labels)).tolist()
    shown = list(latents) if latents is not None else live[:max_latents]
    outliers = [j for j in labels.semantic_outliers(n_outliers, min_clarity=min_clarity).tolist()]
    everyone = list(dict.fromkeys(shown + outliers))
    _save_images(images_of, labels.top_indices[:top, everyone].flatten().tolist(), out / "img")
    labels.plot(out / "labels.png", min_clarity=min_clarity)

    s = labels.settings
    dead = len(labels) - len(live)
    intro = (
        f"{len(labels)} latents of the autoencoder on layer {s.get('layer')} ({s.get('token')} token); "
        f"{len(live)} fire on some image, {dead} on none of the {s.get('samples')} samples. Each latent is labelled "
        f"by the text of a {len(labels.concepts)}-text vocabulary closest to the mean embedding of its top {s.get('n')} "
        f"images (embedded by {s.get('embedder')}): alignment = cos(ϑ, T(text)) − cos(ϑ, T(empty text)), so 0 means "
        "no closer than an empty text and the maximum is 2. Clarity is the mean pairwise cosine of those images' "
        "embeddings (1: alike). Under each image: the latent's activation and the image's dataset index; faded "
        "images are ones it does not fire on."
    )
    which = (
        "chosen latents" if latents is not None else f"most aligned first ({len(shown)} of {len(live)} live latents)"
    )
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'>",
        f"<title>{html.escape(title)}</title><style>{viz._CSS}{_CSS}</style></head><body>",
        f"<h1>{html.escape(title)}</h1><p class='meta'>model: {html.escape(model_label(labels.model))}</p>",
        f"<p>{html.escape(intro)}</p>",
        "<figure><img src='labels.png' alt='alignment against clarity'><figcaption>Alignment against clarity, one "
        "dot per live latent; circled: the semantic outliers listed below.</figcaption></figure>",
        f"<h2>Latents, {html.escape(which)}</h2>",
        _index(labels, shown),
        *(_card(labels, j, top) for j in shown),
        f"<h2>Semantic outliers: clear (clarity &gt; {min_clarity:g}) but least aligned</h2>",
        "<p>Latents whose top images are alike, yet no text of the vocabulary is much closer to them than the "
        "empty text: a concept the vocabulary lacks, or a feature without a name.</p>",
        *([_card(labels, j, top) for j in outliers] or ["<p>none</p>"]),
        "</body></html>",
    ]
    path = out / "index.html"
    path.write_text("\n".join(parts))
    return path


__all__ = ["write_gallery"]
