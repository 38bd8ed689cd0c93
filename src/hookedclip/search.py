"""Streaming top-k search: the ``k`` best items of a stream of scored batches.

Three scores of items ``x [B, d]`` against a query ``q``: ``"score"`` ``⟨x, q⟩`` (dot
product), ``"score_vis"`` ``cos(x, q)``, and ``"self"`` ``⟨x, e(x)⟩`` with each item's own full
embedding (no query). :class:`TopK` keeps only the running best ``k``, so memory does not grow
with the stream. The nearest-neighbour image search of :mod:`hookedclip.methods.neighbours`
and PCLens's ``nearest_neighbours`` run on it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_label
from hookedclip.results import Result

Score = Literal["score", "score_vis", "self"]


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
        return f"{len(self)} nearest neighbours ({model_label(self.model)})"

    def _table(self) -> tuple[list[str], list[list]]:
        return ["rank", "index", "score"], [
            [r + 1, int(i), float(v)] for r, (i, v) in enumerate(zip(self.indices.tolist(), self.values.tolist()))
        ]

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
