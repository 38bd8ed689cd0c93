"""Fitting PCLens: per-head moments (from a model, in-memory contributions or an
:class:`~hookedclip.data.store.ActivationStore`) into a :class:`PCLensResult`.

Every path reduces each analysed head to the first and second moments of its direct
contributions and hands them to :func:`fit_from_moments`, which runs the per-head PCA (and, with
texts, the labels and projectors) of :mod:`hookedclip.methods.pclens.pca`.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_HEADS, select
from hookedclip.data.stats import RunningMoments
from hookedclip.identity import ModelIdentity, model_identity
from hookedclip.methods._common import head_moments, store_embedding_moments, store_heads, store_moments, text_pool
from hookedclip.methods.pclens.pca import Energy, Sign, pca_from_moments
from hookedclip.methods.pclens.result import PCLensResult


def fit_from_moments(
    moments: Mapping[str, RunningMoments],
    model_id: dict | None,
    embedding_moments: RunningMoments | None = None,
    text_embeddings: Float[Tensor, "m d"] | None = None,
    texts: Sequence[str] | None = None,
    n_texts: int = 5,
    max_pcs: int | None = 80,
    threshold: float = 0.99,
    energy: Energy = "singular",
    center_texts: bool = True,
    sign: Sign = "canonical",
    use_projector: bool = True,
) -> PCLensResult:
    """A :class:`PCLensResult` from per-head moments (``label -> RunningMoments`` of ``[d']`` rows).

    ``embedding_moments`` (of the unit image embeddings) adds the embedding's PCA (no cap) and
    ``image_mean``. With ``text_embeddings`` and ``texts`` every PC is labelled and ``Π`` built.

    Args:
        n_texts: texts per side of each PC (``n_t``; 5 in the reference script). Not TextSpan's
            ``n_texts`` (20), which is the size of a head's text basis.
        max_pcs: the ``k`` cap per head (the reference's ``--max_text``, 80).
        threshold, energy: the rank rule (99% of ``ΣS``; see :func:`choose_rank`).
        center_texts: centre the pool before the cosines (as the reference does today).
        sign: ``"canonical"`` (deterministic) or ``"raw"`` (whatever ``eigh`` returns).
        use_projector: build ``Π`` from the texts (as the reference does) or keep ``Π = I``.
    """
    if not moments:
        raise ValueError("no heads to analyse")
    if (text_embeddings is None) != (texts is None):
        raise ValueError("give both text_embeddings and texts, or neither")
    opts = dict(threshold=threshold, energy=energy, sign=sign)
    heads = {label: pca_from_moments(m, label, max_pcs=max_pcs, **opts) for label, m in moments.items()}
    embedding = (
        None if embedding_moments is None else pca_from_moments(embedding_moments, "embedding", max_pcs=None, **opts)
    )
    settings = dict(max_pcs=max_pcs, **opts)
    image_mean = None if embedding_moments is None else embedding_moments.mean.to(torch.float64)
    result = PCLensResult(heads, model_id, embedding, image_mean=image_mean, settings=settings)
    if texts is not None:
        result.label_with(
            text_embeddings, texts, n_texts=n_texts, center_texts=center_texts, use_projector=use_projector
        )
    return result


def fit_from_contributions(
    contributions: Mapping[str, Float[Tensor, "n d"]],
    model_id: dict | None,
    embeddings: Float[Tensor, "n d"] | None = None,
    **options,
) -> PCLensResult:
    """:func:`fit_from_moments` on in-memory contributions (``label -> [N, d']``) and optionally
    the unit image embeddings ``[N, d']``; ``options`` as in :func:`fit_from_moments`."""
    moments = {label: RunningMoments.of(x) for label, x in contributions.items()}
    emb = None if embeddings is None else RunningMoments.of(embeddings)
    return fit_from_moments(moments, model_id, emb, **options)


@renamed_arguments(data="batches")
def fit(
    model,
    batches,
    components=ALL_HEADS,
    texts: Sequence[str] | None = None,
    text_embeddings: Float[Tensor, "m d"] | None = None,
    *,
    text_batch_size: int = 256,
    **options,
) -> PCLensResult:
    """PCLens on a model: one streaming pass over ``batches`` of preprocessed images, then the
    per-head PCA, the embedding's PCA and (with ``texts``) the labels and projectors.

    Args:
        batches: image tensors ``[B, C, H, W]`` or ``(images, labels[, groups])`` tuples (labels
            unused; see :mod:`hookedclip.data.batches`).
        components: heads to analyse, parsed by :func:`hookedclip.components.select`; default
            every head (``"heads"``). The paper analyses the last four layers:
            ``components=LAST_4_LAYERS`` (``"L-4-"``).
        texts: the label vocabulary; embedded with ``model`` (``text_batch_size`` at a time)
            unless ``text_embeddings`` are given.
        options: ``n_texts`` (texts per side of each PC, 5), ``max_pcs`` (80), ``threshold``
            (0.99), ``energy``, ``center_texts``, ``sign``, ``use_projector``: as in
            :func:`fit_from_moments`.
    """
    heads = [str(c) for c in select(model, components, heads_only=True)]
    texts, text_embeddings = text_pool(model, texts, text_embeddings, text_batch_size)
    moments, emb = head_moments(model, batches, heads)
    return fit_from_moments(moments, model_identity(model), emb, text_embeddings, texts, **options)


@renamed_arguments(heads="components")
def fit_from_store(
    store,
    components=ALL_HEADS,
    target: str = "heads",
    embedding: str | None = "embedding",
    model=None,
    texts: Sequence[str] | None = None,
    text_embeddings: Float[Tensor, "m d"] | None = None,
    **options,
) -> PCLensResult:
    """PCLens from an :class:`~hookedclip.data.store.ActivationStore` written by ``extract`` (or
    ``hookedclip cache``) with a decomposition ``target`` (``heads``) and, optionally, the raw
    ``embedding``. ``components``: the heads to analyse (default every head the store holds;
    :func:`hookedclip.methods.store_heads`). Per-head moments come from the store (see
    :func:`hookedclip.methods.store_moments`); equals :func:`fit` on the same images. ``texts``
    are embedded with ``model`` unless ``text_embeddings`` are given; ``options`` as in
    :func:`fit_from_moments`. A ``model`` other than the store's is refused
    (:class:`~hookedclip.data.store.StoreMismatch`)."""
    texts, text_embeddings = text_pool(model, texts, text_embeddings)
    store.check(model=model, targets=[target], text_embeddings=text_embeddings)
    labels = store_heads(store, target, components, model)
    moments = store_moments(store, labels, target)
    emb = store_embedding_moments(store, embedding) if embedding and embedding in store.targets else None
    identity = model_identity(model) if model is not None else store.model
    return fit_from_moments(moments, identity, emb, text_embeddings, texts, **options)


# --------------------------------------------------------------------------------------
# Deprecated names
# --------------------------------------------------------------------------------------


@renamed_arguments(last_layers=("components", lambda n: f"L-{n}-"))
def analysed_heads(model, components=ALL_HEADS) -> list[str]:
    """Deprecated: ``[str(c) for c in components.select(model, components, heads_only=True)]``."""
    warnings.warn(
        "pclens.analysed_heads is deprecated; use hookedclip.components.select(model, components, heads_only=True)",
        DeprecationWarning,
        stacklevel=2,
    )
    return [str(c) for c in select(model, components, heads_only=True)]


@renamed_arguments(heads="components")
def stream_moments(model, batches, components=ALL_HEADS) -> tuple[dict[str, RunningMoments], RunningMoments]:
    """Deprecated: use :func:`hookedclip.methods.head_moments` (the same)."""
    warnings.warn(
        "pclens.stream_moments is deprecated; use hookedclip.methods.head_moments", DeprecationWarning, stacklevel=2
    )
    return head_moments(model, batches, components)


def store_identity(store) -> ModelIdentity:
    """Deprecated: the store records the model's identity itself, ``store.model``."""
    warnings.warn("store_identity(store) is deprecated; use store.model", DeprecationWarning, stacklevel=2)
    return store.model


__all__ = [
    "fit_from_moments",
    "fit_from_contributions",
    "fit",
    "fit_from_store",
    "analysed_heads",
    "stream_moments",
    "store_identity",
]
