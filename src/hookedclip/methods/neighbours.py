"""Nearest-neighbour image search in a component space (TextSpan's and PCLens's retrieval).

TextSpan retrieves, for a query image ``x_q``, the images whose contribution of one head
is most aligned with the query's: ``score(x) = ⟨φ(a^{l,h})(x), φ(a^{l,h})(x_q)⟩`` (a dot
product), top 15 over the dataset. PCLens does the same with an embedding ``e'(x)`` rebuilt
from selected principal components and three scores:

- ``"score"``:     ``⟨e'(x), q⟩``           (unnormalised dot product);
- ``"score_vis"``: ``cos(e'(x), q)``;
- ``"self"``:      ``⟨e'(x), e(x)⟩``        (needs the full embedding; ignores the query).

Any space works: a *space* is a function ``images [B, C, H, W] -> [B, d]``
(:func:`head_space`, :func:`embedding_space`, :func:`selection_space` for a PC selection's
rebuilt embedding, or your own).
The search streams over batches keeping only the running top ``k`` (:class:`TopK`, from the
core's :mod:`hookedclip.search`, re-exported here with :func:`nearest` and :func:`scores`), so
memory does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ComponentLike
from hookedclip.data.batches import iter_images
from hookedclip.decompose import decompose_image
from hookedclip.identity import model_identity
from hookedclip.search import Neighbours, Score, TopK, nearest, scores  # noqa: F401 (this module's API too)

Space = Callable[[Tensor], Tensor]  # images [B, C, H, W] -> embeddings [B, d]


# ---------------------------------------------------------------------------- spaces
def head_space(model, component: ComponentLike, normalize: bool = True) -> Space:
    """Images -> one component's direct contribution ``φ_c(x) [B, d']`` (CLS readout)."""

    def embed(images: Tensor) -> Tensor:
        stack = decompose_image(model, images, positions="cls", components=[component], normalize=normalize)
        return stack.tensor[0]

    return embed


def embedding_space(model, normalize: bool = True) -> Space:
    """Images -> the full image embedding ``e(x)`` (``ê`` when ``normalize``): the control."""

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        return model.encode_image(images, normalize=normalize)

    return embed


def selection_space(model, result, selection, mean_ablate_all: bool = True, centre: bool = False) -> Space:
    """Images -> the embedding ``e'(x) [B, d']`` rebuilt from selected principal components
    (PCLens's search "per concept"): every analysed head keeps only its selected PCs
    (:func:`hookedclip.methods.pclens.selection_embeddings`), and with
    ``mean_ablate_all`` everything else is its dataset mean, so only the selected PCs vary.

    ``selection`` is anything :func:`~hookedclip.methods.pclens.keep` takes (a ``QueryResult``,
    ``[("L3H0", 2), ...]``, a ``PCSelection``; ``PCSelection.indicator(result, pcs).complement()``
    for "all NOT selected PCs"). ``centre`` subtracts the mean unit embedding ``mean ê``: with
    ``mean_ablate_all`` that leaves ``Σ_h ((φ_h − μ_h) V_kᵀ ⊙ w) Π V_k``, the images' positions
    in the selected subspace, so the dot product compares PC coordinates only.
    """
    from hookedclip.methods import pclens

    result.check_model(model)
    sel = pclens.as_selection(result, selection)  # checked against the result before any image is read
    heads = list(result.heads)
    if centre and result.image_mean is None:
        raise ValueError("centre=True needs the mean image embedding: fit the result with embedding statistics")

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        stack = decompose_image(model, images, positions="cls", components=heads)
        e = pclens.selection_embeddings(stack, result, sel, mean_ablate_all)
        return e - result.image_mean.to(e) if centre else e

    return embed


# ---------------------------------------------------------------------------- search
@renamed_arguments(image_batches="batches")
@torch.no_grad()
def nearest_images(
    model,
    query_image: Float[Tensor, "channel height width"] | None,
    batches: Iterable[Float[Tensor, "batch channel height width"]],
    space: Space,
    k: int = 15,
    score: Score = "score",
    largest: bool = True,
) -> Neighbours:
    """The ``k`` images of ``batches`` (image tensors or ``(images, labels[, groups])`` tuples;
    see :mod:`hookedclip.data.batches`) nearest to ``query_image`` in ``space``.

    ``space(images) -> [B, d]`` is e.g. ``head_space(model, "L3H1")`` (TextSpan's per-head
    retrieval) or a rebuilt embedding from selected PCs (PCLens). ``"self"`` scores
    ``⟨space(x), e(x)⟩`` with the normalised full embedding and needs no query.
    """
    query = None
    if score != "self":
        query = space(query_image[None].to(model.device, model.dtype))[0]

    def stream():
        for images in iter_images(batches, model):
            emb = space(images)
            yield (emb, model.encode_image(images, normalize=True)) if score == "self" else emb

    found = nearest(query, stream(), k, score, largest)
    found.model = model_identity(model)
    return found
