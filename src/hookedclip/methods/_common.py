"""What the methods share: streaming head moments, the text pool, and ActivationStore adapters.

TextSpan and PCLens both reduce a head to the first two moments of its direct contributions;
they read them here, from a pass over images or from a store, so neither method imports the
other.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from types import SimpleNamespace

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_HEADS, select
from hookedclip.data.batches import iter_images
from hookedclip.data.stats import RunningMoments
from hookedclip.decompose import decompose_image

_HEAD_LABEL = re.compile(r"L(\d+)H(\d+)")


# --------------------------------------------------------------------------------------
# On a model
# --------------------------------------------------------------------------------------


@torch.no_grad()
def head_moments(model, batches, components=ALL_HEADS) -> tuple[dict[str, RunningMoments], RunningMoments]:
    """One pass over ``batches`` (see :mod:`hookedclip.data.batches`): the moments of each
    component's normalised CLS contribution ``φ_c`` (reference LayerNorm convention) and of
    the unit image embedding ``ê`` (the sum of every row), in float64, without keeping the
    contributions.

    Returns ``(label -> RunningMoments of [d'] rows, RunningMoments of ê)``.
    """
    labels = [str(c) for c in select(model, components)]
    acc = emb = None
    for images in iter_images(batches, model):
        stack = decompose_image(model, images, components=labels)
        rows = stack.tensor[: len(labels)].transpose(0, 1)  # [batch, component, d']: "rest" is last
        if acc is None:
            acc = RunningMoments.empty((len(labels),), rows.shape[-1], device=rows.device)
            emb = RunningMoments.empty((), rows.shape[-1], device=rows.device)
        acc.update(rows)
        emb.update(stack.sum())
    if acc is None:
        raise ValueError("head_moments got no images: batches was empty")
    return {label: RunningMoments(acc.n, acc.mean[i], acc.m2[i]) for i, label in enumerate(labels)}, emb


def text_pool(
    model, texts: Sequence[str] | None, text_embeddings: Float[Tensor, "m d"] | None = None, batch_size: int = 256
) -> tuple[list[str] | None, Float[Tensor, "m d"] | None]:
    """``(texts, text_embeddings)``: the embeddings as given (precomputed), else the ``texts``
    embedded with ``model``; ``(None, None)`` when there are no texts."""
    if texts is None:
        if text_embeddings is not None:
            raise ValueError("text_embeddings were given without their texts: pass texts= too (one per row)")
        return None, None
    texts = list(texts)
    if text_embeddings is None:
        if model is None:
            raise ValueError("the texts need embedding: pass text_embeddings= or the model to embed them with")
        from hookedclip.zeroshot import embed_texts

        return texts, embed_texts(model, texts, batch_size)
    if text_embeddings.ndim != 2 or text_embeddings.shape[0] != len(texts):
        raise ValueError(
            f"{len(texts)} texts but text_embeddings of shape {tuple(text_embeddings.shape)}; "
            "need one [d'] row per text"
        )
    return texts, text_embeddings


# --------------------------------------------------------------------------------------
# From an ActivationStore (the rows never sit in memory together)
# --------------------------------------------------------------------------------------


@renamed_arguments(heads="components", last_layers=("components", lambda n: f"L-{n}-"))
def store_heads(store, target: str = "heads", components=ALL_HEADS, model=None) -> list[str]:
    """Head labels of a store's decomposition ``target`` chosen by ``components`` (parsed by
    :func:`hookedclip.components.select` against ``model``, or against the layers and heads the
    store holds). The default, every head, is every head the store holds."""
    spec = store.targets.get(target)
    if spec is None or spec.labels is None:
        raise KeyError(
            f"{target!r} is not a decomposition target of {store.path} (targets: {list(store.targets)}); "
            "extract with --targets heads embedding"
        )
    stored = [label for label in spec.labels if _HEAD_LABEL.fullmatch(label)]
    if components is None or components == ALL_HEADS:
        return stored
    wanted = [str(c) for c in select(model if model is not None else _stored_dims(stored), components, heads_only=True)]
    missing = [h for h in wanted if h not in stored]
    if missing:
        raise KeyError(f"{', '.join(missing)} not in the store's {target!r} rows ({', '.join(spec.labels)})")
    return wanted


def _stored_dims(labels: Sequence[str]) -> SimpleNamespace:
    """Layers and heads as far as a store's head labels tell (for parsing ranges without a model)."""
    pairs = [tuple(map(int, _HEAD_LABEL.fullmatch(label).groups())) for label in labels]
    return SimpleNamespace(
        layers=1 + max((l for l, _ in pairs), default=-1), heads=1 + max((h for _, h in pairs), default=-1)
    )


@renamed_arguments(heads="components")
def store_moments(store, components: Sequence[str], target: str = "heads") -> dict[str, RunningMoments]:
    """Per-head moments (``[d']`` mean and scatter) of the stored rows ``components`` (labels,
    e.g. from :func:`store_heads`): the extraction's moments when it kept covariances (nothing
    is read), else streamed shard by shard over the chosen rows only (in-place float64
    accumulation, :meth:`~hookedclip.data.stats.RunningMoments.update`)."""
    spec = store.targets[target]
    labels = list(components)
    if not labels:
        raise ValueError("no components chosen: pass the stored labels to read (see store_heads)")
    idx = [spec.labels.index(h) for h in labels]
    if spec.moments == "cov":
        m = store.moments(target)
        return {h: RunningMoments(m.n, m.mean[i], m.m2[i]) for h, i in zip(labels, idx)}
    acc = RunningMoments.empty((len(idx),), spec.shape[-1])
    contiguous = idx == list(range(idx[0], idx[0] + len(idx)))
    pick = slice(idx[0], idx[0] + len(idx)) if contiguous else idx  # a slice is a view, no copy of the shard
    for shard in store.iter_shards([target]):
        acc.update(shard[target][:, pick])  # one shard's [rows, heads, d'] at a time
    return {h: RunningMoments(acc.n, acc.mean[i], acc.m2[i]) for i, h in enumerate(labels)}


def store_embedding_moments(store, embedding: str = "embedding") -> RunningMoments:
    """Moments of the unit embeddings ``ê = e/‖e‖`` streamed from the store's raw embedding
    target (the extraction's own moments are of ``e``, not ``ê``)."""
    acc = RunningMoments.empty((), store.targets[embedding].shape[-1])
    for shard in store.iter_shards([embedding]):
        acc.update(torch.nn.functional.normalize(shard[embedding].to(torch.float64), dim=-1))
    return acc


__all__ = ["head_moments", "text_pool", "store_heads", "store_moments", "store_embedding_moments"]
