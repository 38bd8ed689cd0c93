"""The PCLens HTML report (written by ``hookedclip pclens report``, :mod:`hookedclip.cli.pclens`).

:func:`write_pclens_report` writes a folder: an overview page (strength curves, one row per
head) and one page per analysed head with its PCs, their text labels and strengths, and a
strip of the top / bottom images of each PC (scored by ``⟨ê, v⟩``, the cosine of the image's
unit embedding with the PC) and, when the heads' contributions are given, a second strip ranked
by the head's own centred coordinate along the PC (``(φ_h − μ) v``). Labels carry their cosines;
weak ones (low cosine, or words outside the world's vocabulary) are marked.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hookedclip import plotting
from hookedclip.identity import model_label
from hookedclip.methods.pclens import (
    LOW_COSINE,
    HeadPCA,
    PCLensResult,
    confidence_note,
    extremes,
    format_strength,
    head_scores,
    image_scores,
    label_text,
)
from hookedclip.report import viz

#: PCs holding less than this share (%) of a head's retained variance are listed apart.
MIN_STRENGTH = 1.0


@torch.no_grad()
def head_contributions(model, result: PCLensResult, batches) -> dict[str, torch.Tensor]:
    """``label -> [N, d']``: each analysed head's normalised CLS contribution on every image of
    ``batches`` (what PCLens was fitted on), for the second image ranking."""
    from hookedclip.methods.pclens.debias import decompose_batches

    stacks = decompose_batches(model, result, batches)
    labels = stacks[0].labels
    return {h: torch.cat([s.tensor[labels.index(h)] for s in stacks]) for h in result.heads}


def _label_cells(pca: HeadPCA, i: int, n: int, known_words=None, threshold: float = LOW_COSINE) -> tuple[str, str]:
    """PC ``i``'s two text lists with their cosines, the side with the larger |cos| first, weak
    labels marked."""
    if pca.pos_idx is None:
        return "", ""
    return pca.label_of(i, n).cells(n, threshold=threshold, known_words=known_words)


def _pc_rows(pca: HeadPCA, pcs: list[int], n_texts: int, known_words=None, threshold: float = LOW_COSINE):
    rel = pca.strength_rel.tolist()
    return [[str(i), format_strength(rel[i]), *_label_cells(pca, i, n_texts, known_words, threshold)] for i in pcs]


def _strip(pca, i, scores, images, out_dir: Path, name: str, n_images: int, what: str):
    """Draw one PC's top / bottom images by ``scores[:, i]`` and return ``(top, bottom)`` indices."""
    top, bottom = extremes(scores[:, i], n_images)
    idx = torch.cat([top, bottom]).tolist()
    captions = [
        f"{'top' if j < len(top) else 'bottom'} {1 + j % len(top)}: {what} {float(scores[k, i]):+.2f}"
        for j, k in enumerate(idx)
    ]
    plotting.image_grid(images[idx], captions, out_dir / name, cols=len(top))
    return set(top.tolist()), set(bottom.tolist())


def _projector_text(pca: HeadPCA) -> str:
    rank = int(torch.linalg.matrix_rank(pca.projector)) if pca.k else 0
    text = (
        f"The text projector Π ({pca.k}×{pca.k}) projects a head's PC coordinates onto the span of its PCs' "
        f"best positive texts (one text per PC); interventions reconstruct the head as μ + (φ − μ)V_kᵀ Π V_k. "
        f"Here rank Π = {rank} of k = {pca.k}"
    )
    if rank == pca.k:
        return text + ", so Π = I and keeping every PC is the plain rank-k PCA reconstruction."
    return text + (
        f": {pca.k - rank} dimension(s) are lost because several PCs share a best text (or their best "
        "texts are dependent), so keeping every PC is not the PCA reconstruction. A larger text pool "
        "makes this rarer; use_projector=False keeps Π = I."
    )


def head_page(
    pca: HeadPCA,
    out_dir: Path,
    images: np.ndarray,
    embeddings: torch.Tensor,
    n_pcs: int,
    n_images: int,
    n_texts: int,
    nav: str = "",
    min_strength: float = MIN_STRENGTH,
    contributions: torch.Tensor | None = None,
    known_words=None,
    min_cosine: float = LOW_COSINE,
) -> Path:
    """One head's page: its PCs holding at least ``min_strength`` % of the retained variance
    (the rest listed apart), an image strip per PC (top row: highest ``⟨ê, v⟩``), a second strip
    ranked by the head's own centred coordinate when its ``contributions [N, d']`` are given,
    and ``nav`` (HTML links) under the title. Labels with |cosine| below ``min_cosine`` or words
    outside ``known_words`` are marked."""
    out_dir.mkdir(parents=True, exist_ok=True)
    rel = pca.strength_rel.tolist()
    strong = [i for i in range(pca.k) if rel[i] >= min_strength] or list(range(min(1, pca.k)))
    weak = [i for i in range(pca.k) if i not in strong]
    header = ["PC", "strength %", "texts, stronger side (cos)", "texts, other side (cos)"]
    figures = []
    scores = image_scores(pca, embeddings.detach())  # [n, k]: ⟨ê, v⟩
    own = head_scores(pca, contributions.detach()) if contributions is not None else None
    for i in strong[:n_pcs]:
        top, bottom = _strip(pca, i, scores, images, out_dir, f"pc{i}.png", n_images, "cos")
        label = f"PC {i} ({format_strength(rel[i])}% of the retained variance)"
        if pca.pos_idx is not None:
            sides = pca.label_of(i, 1).sides()
            label += ": " + " / ".join(
                f"{sign} {label_text(*items[0], min_cosine, known_words)}" for sign, items in sides
            )
        figures.append(
            (
                f"pc{i}.png",
                label + ". Ranked by the full embedding: top row (the + side) the images whose unit embedding ê "
                "has the highest cosine with the PC (⟨ê, v⟩, the reference's score), bottom row the lowest.",
            )
        )
        if own is not None:
            top_own, bottom_own = _strip(pca, i, own, images, out_dir, f"pc{i}_head.png", n_images, "coord")
            shared, shared_bottom = len(top & top_own), len(bottom & bottom_own)
            figures.append(
                (
                    f"pc{i}_head.png",
                    f"PC {i} ranked by the head's own centred coordinate (φ_h − μ)·v instead: top row highest, "
                    f"bottom row lowest. The two rankings share {shared} of their {len(top)} top images and "
                    f"{shared_bottom} of their {len(bottom)} bottom images"
                    + (
                        " (the rankings disagree: ⟨ê, v⟩ also reads what the other heads write along v)."
                        if min(shared, shared_bottom) < len(top) / 2
                        else "."
                    ),
                )
            )
    kept = 100 * float(pca.singular_values.sum()) / max(pca.total_singular, 1e-30)
    text = [f"{pca.k} PCs keep {kept:.1f}% of ΣS over {pca.n} images.", _projector_text(pca)]
    if pca.pos_idx is not None:
        text.append(confidence_note(min_cosine, known_words))
    if weak:
        share = sum(rel[i] for i in weak)
        text.append(
            f"Listed: the {len(strong)} PCs holding at least {min_strength:g}% of the retained variance each; "
            f"the other {len(weak)} (together {format_strength(share)}%) are under “Weaker PCs” at the bottom."
        )
    rows = _pc_rows(pca, strong, n_texts, known_words, min_cosine)
    sections = [viz.Section(pca.label, text, figures, [(header, rows)])]
    if weak:
        sections.append(
            viz.Section(
                f"Weaker PCs ({len(weak)}, each below {min_strength:g}%)",
                [],
                [],
                [(header, _pc_rows(pca, weak, n_texts, known_words, min_cosine))],
            )
        )
    return viz.write_report(out_dir, f"PCLens: {pca.label}", sections, nav=nav)


def strength_plot(
    result: PCLensResult, path: str | Path, max_pcs: int = 40, min_strength: float = MIN_STRENGTH
) -> Path:
    """Relative strength (% of the retained variance) of each head's first PCs, log scale, with
    the listing threshold ``min_strength`` dashed (:meth:`PCLensResult.plot`)."""
    fig = result.plot(title="PC strengths per head", max_pcs=max_pcs, min_strength=min_strength)
    return plotting.save_figure(fig, path)


def write_pclens_report(
    result: PCLensResult,
    images: np.ndarray,
    embeddings: torch.Tensor,
    out: str | Path,
    n_pcs: int = 5,
    n_images: int = 8,
    n_texts: int = 3,
    min_strength: float = MIN_STRENGTH,
    progress: bool = False,
    contributions: dict[str, torch.Tensor] | None = None,
    known_words=None,
    min_cosine: float = LOW_COSINE,
) -> Path:
    """The report folder: ``index.html`` (overview) and ``<head>/index.html`` per analysed head,
    each linked to the overview and to the previous and next head.

    Args:
        images: uint8 ``[N, H, W, 3]`` of the images behind ``embeddings``.
        embeddings: ``[N, d']`` final image embeddings (normalised here).
        min_strength: PCs below this % of their head's retained variance are listed apart.
        progress: a progress bar over the head pages on stderr (each takes seconds).
        contributions: ``label -> [N, d']`` head contributions (:func:`head_contributions`): adds
            the second image ranking, by the head's own centred coordinate.
        known_words: the vocabulary of the images' world; labels with a word outside it, or with
            |cosine| below ``min_cosine``, are marked as weak.
    """
    from tqdm.auto import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    heads = list(result.heads.values()) + ([result.embedding] if result.embedding is not None else [])
    labels = [p.label for p in heads]
    for i, pca in enumerate(tqdm(heads, desc="head pages", disable=not progress)):
        own = None if contributions is None else contributions.get(pca.label)
        head_page(
            pca,
            out / pca.label,
            images,
            embeddings,
            n_pcs,
            n_images,
            n_texts,
            viz.head_nav(labels, i),
            min_strength,
            own,
            known_words,
            min_cosine,
        )
    strength_plot(result, out / "strengths.png", min_strength=min_strength)
    rows = [
        [
            p.label,
            str(p.k),
            str(sum(1 for r in p.strength_rel.tolist() if r >= min_strength)),
            format_strength(float(p.strength_rel[0])) if p.k else "-",
            *_label_cells(p, 0, 2, known_words, min_cosine),
        ]
        for p in heads
    ]
    overview = viz.Section(
        "Analysed heads",
        [
            f"{len(result)} heads, {result.n_pcs} PCs; rank rule {result.settings.get('threshold')} of "
            f"{'ΣS' if result.settings.get('energy') == 'singular' else 'ΣS²'}, cap {result.settings.get('max_pcs')}. "
            "Click a head for its PCs, labels and image strips. Label texts are cosines between the (pool-centred) "
            "texts and the PC; the side with the larger |cosine| is listed first. "
            + (confidence_note(min_cosine, known_words) if result.texts else "")
        ],
        [
            (
                "strengths.png",
                "Share of each head's retained variance held by its first PCs (log scale); head pages "
                "list the PCs above the dashed line and put the rest apart.",
            )
        ],
        [(["head", "k", f"PCs ≥ {min_strength:g}%", "PC0 strength %", "PC0 stronger side", "PC0 other side"], rows)],
    )
    path = viz.write_report(out, "PCLens report", [overview], meta=model_label(result.model))
    return viz.link_head_pages(path, [p.label for p in heads])


__all__ = ["head_contributions", "head_page", "strength_plot", "write_pclens_report", "MIN_STRENGTH"]
