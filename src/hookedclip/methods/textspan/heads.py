"""TextSpan for many heads at once: on a model (one streaming pass over images) or from an
:class:`~hookedclip.data.store.ActivationStore`. Each head is reduced to the first two moments of
its direct contributions (:mod:`hookedclip.methods._common`), then
:func:`~hookedclip.methods.textspan.text_span_from_moments` chooses its texts.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_HEADS
from hookedclip.data.stats import RunningMoments
from hookedclip.identity import ModelIdentity, model_identity
from hookedclip.methods import _common
from hookedclip.methods.textspan.fit import text_span_from_moments
from hookedclip.methods.textspan.greedy import Criterion
from hookedclip.methods.textspan.result import TextSpanResult


@renamed_arguments(data="batches")
def text_span_heads(
    model,
    batches,
    texts: Sequence[str],
    components=ALL_HEADS,
    n_texts: int = 20,
    rank: int | None = 80,
    criterion: Criterion = "unnormalized_std",
    text_batch_size: int = 256,
    text_embeddings: Float[Tensor, "m_pool d"] | None = None,
) -> dict[str, TextSpanResult]:
    """TextSpan for every chosen component, from one streaming pass over ``batches``.

    Args:
        batches: image tensors ``[B, C, H, W]`` or ``(images, labels[, groups])`` tuples (labels
            unused; see :mod:`hookedclip.data.batches`).
        texts: the text pool (the names of the chosen texts).
        components: parsed by :func:`hookedclip.components.select`; default every head
            (``"heads"``). The paper analyses the last four layers:
            ``components=LAST_4_LAYERS`` (``"L-4-"``).
        n_texts: ``m``, the size of each head's text basis (the reference README uses 20).
            PCLens's ``n_texts`` (5) is another quantity: the texts labelling each side of a PC.
        rank, criterion: as in :func:`~hookedclip.methods.textspan.text_span`.
        text_embeddings: ``[M, d']`` precomputed embeddings of ``texts`` (L2-normalised
            ``encode_text`` outputs); by default the pool is embedded once with ``model``.
    """
    if len(texts) == 0:
        raise ValueError("the text pool is empty")
    if isinstance(n_texts, bool) or not isinstance(n_texts, int) or not 0 <= n_texts <= len(texts):
        raise ValueError(f"n_texts={n_texts!r} must be an int from 0 to the text pool's size ({len(texts)} texts)")
    texts, pool = _common.text_pool(model, texts, text_embeddings, text_batch_size)
    per_head, _ = _common.head_moments(model, batches, components)
    return _per_head(
        per_head, model_identity(model), pool.to(torch.float64), texts, n_texts, rank=rank, criterion=criterion
    )


# --------------------------------------------------------------------------------------
# From an ActivationStore
# --------------------------------------------------------------------------------------


@renamed_arguments(heads="components")
def text_span_from_store(
    store,
    text_embeddings: Float[Tensor, "m_pool d"] | None,
    texts: Sequence[str],
    components=ALL_HEADS,
    target: str = "heads",
    n_texts: int = 20,
    model=None,
    **options,
) -> dict[str, TextSpanResult]:
    """:func:`text_span_from_moments` for the chosen heads of a store's decomposition ``target``
    (default every head it holds; :func:`hookedclip.methods.store_heads`), from the store's
    moments: the rows are never loaded together. ``text_embeddings=None`` embeds ``texts``
    with ``model``. ``n_texts`` as in :func:`text_span_heads`. ``options``: ``rank``,
    ``criterion``, ``center_texts``, ``span_from``. With ``model`` (the one that embedded the
    texts) a store of another model is refused (:class:`~hookedclip.data.store.StoreMismatch`)."""
    texts, text_embeddings = _common.text_pool(model, texts, text_embeddings)
    store.check(model=model, targets=[target], text_embeddings=text_embeddings)
    labels = _common.store_heads(store, target, components, model)
    moments = _common.store_moments(store, labels, target)
    return _per_head(moments, store.model, text_embeddings, texts, n_texts, **options)


def _per_head(
    moments: Mapping[str, RunningMoments],
    model: ModelIdentity | None,
    text_embeddings: Tensor,
    texts: list[str],
    n_texts: int,
    **options,
) -> dict[str, TextSpanResult]:
    """:func:`~hookedclip.methods.textspan.text_span_from_moments` on each head's moments, each
    result recording ``model``."""
    results = {
        label: text_span_from_moments(m.mean, m.second_moment(), m.n, text_embeddings, texts, n_texts, **options)
        for label, m in moments.items()
    }
    for result in results.values():
        result.model = model
    return results


def head_moments(model, batches, components=ALL_HEADS) -> tuple[list[str], RunningMoments]:
    """Deprecated: use :func:`hookedclip.methods.head_moments` (a ``label -> RunningMoments``
    dict and the embedding's moments). Labels and one ``[component, d']`` accumulator."""
    warnings.warn(
        "textspan.head_moments is deprecated; use hookedclip.methods.head_moments", DeprecationWarning, stacklevel=2
    )
    per_head, _ = _common.head_moments(model, batches, components)
    first = next(iter(per_head.values()))
    mean = torch.stack([m.mean for m in per_head.values()])
    m2 = torch.stack([m.m2 for m in per_head.values()])
    return list(per_head), RunningMoments(first.n, mean, m2)


__all__ = ["text_span_heads", "text_span_from_store", "head_moments"]
