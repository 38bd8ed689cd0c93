"""Nearest-neighbour image search in a component space (``specs/pclens_textspan.md`` §4.9).

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
The search streams over batches keeping only the running top ``k`` (:class:`TopK`), so
memory does not grow with the dataset.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.components import ComponentLike
from hookedclip.decompose import decompose_image
from hookedclip.identity import ModelIdentity, model_identity
from hookedclip.results import Result

Score = Literal["score", "score_vis", "self"]
Space = Callable[[Tensor], Tensor]  # images [B, C, H, W] -> embeddings [B, d]


# ---------------------------------------------------------------------------- scores
def scores(
    embeddings: Float[Tensor, "batch d"],
    query: Float[Tensor, " d"] | None,
    score: Score = "score",
    full: Float[Tensor, "batch d_full"] | None = None,
) -> Float[Tensor, " batch"]:
    """One score per item: ``⟨x, q⟩``, ``cos(x, q)`` or ``⟨x, e(x)⟩`` (``full`` = ``e(x)``)."""
    if score == "self":
        if full is None:
            raise ValueError('score="self" needs the full embeddings e(x) of the batch')
        return (embeddings * full.to(embeddings)).sum(-1)
    if query is None:
        raise ValueError(f"score={score!r} needs a query")
    query = query.to(embeddings)
    if score == "score":
        return embeddings @ query
    if score == "score_vis":
        return F.normalize(embeddings, dim=-1) @ F.normalize(query, dim=0)
    raise ValueError(f"score must be 'score', 'score_vis' or 'self', got {score!r}")


# ---------------------------------------------------------------------------- streaming top-k
@dataclass(repr=False)
class Neighbours(Result):
    """The ``k`` best items: ``values [k]`` (best first) and their dataset ``indices [k]``;
    ``model``: the identity of the model whose space was searched, when it is recorded."""

    _kind = "neighbours"
    _tensor_fields = ("values", "indices")

    values: Float[Tensor, " k"]
    indices: Int[Tensor, " k"]
    model: ModelIdentity | None = None

    def __len__(self) -> int:
        return len(self.indices)

    # ---- the Result protocol
    def _title(self) -> str:
        return f"{len(self)} nearest neighbours ({self.model or 'no recorded model'})"

    def _table(self) -> tuple[list[str], list[list]]:
        return ["rank", "index", "score"], [[r + 1, int(i), float(v)] for r, (i, v) in
                                            enumerate(zip(self.indices.tolist(), self.values.tolist()))]

    def _repr_sizes(self) -> dict:
        return {"k": len(self)}


class TopK:
    """Running top-``k`` (or bottom-``k`` with ``largest=False``) of a stream of scores.

    Each update merges the batch with the current best ``k`` by one ``torch.topk``: memory
    is ``O(k + batch)`` however long the stream (the reference keeps a min-heap).
    """

    def __init__(self, k: int, largest: bool = True) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k, self.largest = k, largest
        self.values = torch.empty(0)
        self.indices = torch.empty(0, dtype=torch.long)
        self.seen = 0

    def update(self, batch_scores: Float[Tensor, " batch"], indices: Int[Tensor, " batch"] | None = None) -> None:
        """Add a batch; ``indices`` default to consecutive positions in the stream."""
        batch_scores = batch_scores.detach().flatten().cpu()
        if indices is None:
            indices = torch.arange(self.seen, self.seen + len(batch_scores))
        self.seen += len(batch_scores)
        values = torch.cat([self.values.to(batch_scores.dtype), batch_scores])
        ids = torch.cat([self.indices, torch.as_tensor(indices, dtype=torch.long).flatten().cpu()])
        best = torch.topk(values, min(self.k, len(values)), largest=self.largest, sorted=True)
        self.values, self.indices = best.values, ids[best.indices]

    def result(self) -> Neighbours:
        return Neighbours(self.values, self.indices)


# ---------------------------------------------------------------------------- spaces
def head_space(model, component: ComponentLike, normalize: bool = True) -> Space:
    """Images -> one component's direct contribution ``φ_c(x) [B, d']`` (CLS readout)."""

    def embed(images: Tensor) -> Tensor:
        stack = decompose_image(model, images, tokens="cls", components=[component], normalize=normalize)
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
    (PCLens §4.9 "per concept"): every analysed head keeps only its selected PCs
    (:func:`~hookedclip.methods.pclens.selection.selection_embeddings`), and with
    ``mean_ablate_all`` everything else is its dataset mean, so only the selected PCs vary.

    ``selection`` is anything :func:`~hookedclip.methods.pclens.keep` takes (a ``QueryResult``,
    ``[("L3H0", 2), ...]``, a ``PCSelection``; ``PCSelection.indicator(result, pcs).complement()``
    for "all NOT selected PCs"). ``centre`` subtracts the mean unit embedding ``mean ê``: with
    ``mean_ablate_all`` that leaves ``Σ_h ((φ_h − μ_h) V_kᵀ ⊙ w) Π V_k``, the images' positions
    in the selected subspace, so the dot product compares PC coordinates only.
    """
    from hookedclip.methods.pclens.selection import _as_selection, selection_embeddings

    result.check_model(model)
    sel = _as_selection(result, selection)  # checked against the result before any image is read
    heads = list(result.heads)
    if centre and result.image_mean is None:
        raise ValueError("centre=True needs the mean image embedding: fit the result with embedding statistics")

    @torch.no_grad()
    def embed(images: Tensor) -> Tensor:
        stack = decompose_image(model, images, tokens="cls", components=heads)
        e = selection_embeddings(stack, result, sel, mean_ablate_all)
        return e - result.image_mean.to(e) if centre else e

    return embed


# ---------------------------------------------------------------------------- search
def nearest(
    query: Float[Tensor, " d"] | None,
    embeddings: Iterable[Tensor | tuple[Tensor, Tensor]],
    k: int = 15,
    score: Score = "score",
    largest: bool = True,
) -> Neighbours:
    """Top-``k`` of precomputed embedding batches ``[B, d]`` (for ``"self"``: pairs
    ``(e'(x) [B, d], e(x) [B, d])``) against ``query``; indices count items in stream order."""
    top = TopK(k, largest)
    for batch in embeddings:
        emb, full = batch if isinstance(batch, tuple) else (batch, None)
        top.update(scores(emb, query, score, full))
    return top.result()


@torch.no_grad()
def nearest_images(
    model,
    query_image: Float[Tensor, "channel height width"] | None,
    image_batches: Iterable[Float[Tensor, "batch channel height width"]],
    space: Space,
    k: int = 15,
    score: Score = "score",
    largest: bool = True,
) -> Neighbours:
    """The ``k`` images of the stream nearest to ``query_image`` in ``space``.

    ``space(images) -> [B, d]`` is e.g. ``head_space(model, "L3H1")`` (TextSpan's per-head
    retrieval) or a rebuilt embedding from selected PCs (PCLens). ``"self"`` scores
    ``⟨space(x), e(x)⟩`` with the normalised full embedding and needs no query.
    """
    query = None
    if score != "self":
        query = space(query_image[None].to(model.device, model.dtype))[0]

    def stream():
        for images in image_batches:
            images = images.to(model.device, model.dtype)
            emb = space(images)
            yield (emb, model.encode_image(images, normalize=True)) if score == "self" else emb

    found = nearest(query, stream(), k, score, largest)
    found.model = model_identity(model)
    return found
