"""TextSpan on one component, from its contributions (:func:`text_span`) or from their first two
moments (:func:`text_span_from_moments`). Both check their data, build a scatter state
(:mod:`hookedclip.methods.textspan.greedy`) and hand it to one shared routine: span
restriction, text preparation, the greedy loop and the result.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import get_args

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.methods.textspan.greedy import Criterion, DataScatter, MomentScatter, Scatter, SpanFrom, greedy_select
from hookedclip.methods.textspan.result import TextSpanResult


def text_span(
    contributions: Float[Tensor, "n d"],
    text_embeddings: Float[Tensor, "m_pool d"],
    texts: Sequence[str],
    n_texts: int = 20,
    rank: int | None = 80,
    criterion: Criterion = "unnormalized_std",
    center_texts: bool = False,
    span_from: SpanFrom = "uncentred",
) -> TextSpanResult:
    """TextSpan on one component's contributions: the reference procedure, exactly.

    Args:
        contributions: ``C [N, d']``, the component's direct contributions on ``N`` images
            (uncentred; ``N ≥ 2``).
        text_embeddings: ``R [M, d']``, the text pool (normally L2-normalised
            ``encode_text`` outputs; used as given).
        texts: the ``M`` strings for the rows of ``R``.
        n_texts: ``m``, how many texts to choose (the reference README uses 20).
        rank: ``r``; restrict the texts to the span of the top-``r`` right singular vectors
            ``V_r`` of the uncentred ``C`` (thin SVD, so at most ``min(N, d')`` of them).
            ``None`` skips the restriction. The restriction is well defined only when ``r``
            does not cut inside the null space of ``C`` (``r ≤ rank(C)`` or ``r ≥ d' ≤ N``).
        criterion: ``"unnormalized_std"`` (reference): the unbiased std of ``C r_jᵀ`` on the
            un-normalised residual text vector ``r_j``, i.e. ``‖r_j‖·std⟨c, r̂_j⟩``;
            ``"variance_gain"``: ``var⟨c, r̂_j⟩``, the true marginal explained variance (the
            reference's score favours texts whose residual is long, not only well aligned).
        center_texts: subtract the pool mean from ``R`` first (PCLens's variant).
        span_from: ``"uncentred"`` (reference) or ``"centred"``: take ``V_r`` from the centred
            data instead (PCLens's variant).

    Returns:
        A :class:`TextSpanResult`; ``reconstruction`` holds the reference's ``Ĉ [N, d']``.
        Computed in float64; tensors are float64 if ``contributions`` is, else float32.
        Fewer than ``n_texts`` texts (with a warning) when the pool's span is exhausted.
    """
    if contributions.ndim != 2:
        raise ValueError(f"contributions must be [n, d'], got shape {tuple(contributions.shape)}")
    _check_rows(contributions.shape[0], "contributions is empty (0 rows): TextSpan needs data")
    if not bool(torch.isfinite(contributions).all()):
        raise ValueError("contributions contain NaN or inf")
    state = DataScatter(contributions)
    result = _fit(
        state,
        f"contributions has shape {tuple(contributions.shape)}",
        _out_dtype(contributions),
        text_embeddings,
        texts,
        n_texts,
        rank=rank,
        criterion=criterion,
        center_texts=center_texts,
        span_from=span_from,
    )
    result.reconstruction = state.reconstruction().to(result.mean.dtype)
    return result


def text_span_from_moments(
    mean: Float[Tensor, " d"],
    second_moment: Float[Tensor, "d d"],
    n: int,
    text_embeddings: Float[Tensor, "m_pool d"],
    texts: Sequence[str],
    n_texts: int = 20,
    **options,
) -> TextSpanResult:
    """TextSpan from streaming statistics only; chooses what :func:`text_span` would.

    Args:
        mean: ``c̄ = (1/N) Σ_n x_n``, ``[d']``.
        second_moment: the **uncentred** second moment ``E[x xᵀ] = (1/N) Σ_n x_n x_nᵀ``
            (outer products of the column vectors ``x_n``), i.e. ``Cᵀ C / N`` for the
            ``[N, d']`` data matrix ``C``: shape ``[d', d']``, divided by ``N`` (not
            ``N − 1``), not centred. :class:`hookedclip.data.stats.RunningMoments` accumulates it
            (``.second_moment()``).
        n: the number of rows ``N`` behind the moments (``N ≥ 2``).
        text_embeddings, texts, n_texts: as in :func:`text_span`.
        options: ``rank``, ``criterion``, ``center_texts``, ``span_from``, as in :func:`text_span`
            (same defaults).

    The data are replaced by the centred scatter ``S = N (E[xxᵀ] − c̄ c̄ᵀ) = (C − c̄)ᵀ(C − c̄)``; a
    text's score is ``std_j = sqrt(r_j S r_jᵀ / (N − 1))``; removing ``r̂`` updates
    ``S ← (I − r̂ᵀr̂) S (I − r̂ᵀr̂)``. ``V_r`` are the top-``min(r, N, d')`` eigenvectors of
    ``E[xxᵀ]`` (the right singular vectors of the uncentred data), or of the covariance with
    ``span_from="centred"``. ``reconstruction`` is ``None``; use ``reconstruct``. The
    subtraction ``E[xxᵀ] − c̄ c̄ᵀ`` loses ``~ε‖c̄‖²`` in float64, negligible unless the
    mean dwarfs the spread by ~10⁶.
    """
    if mean.ndim != 1:
        raise ValueError(f"mean must be [d'], got shape {tuple(mean.shape)}")
    d = mean.shape[0]
    if second_moment.shape != (d, d):
        raise ValueError(
            f"second_moment has shape {tuple(second_moment.shape)} but mean has shape {tuple(mean.shape)}; "
            f"expected second_moment of shape ({d}, {d})"
        )
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"n must be an int, got {n!r}")
    _check_rows(n, "n=0: the moments come from empty data")
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(second_moment).all())):
        raise ValueError("mean or second_moment contain NaN or inf")
    state = MomentScatter(mean, second_moment, n)
    return _fit(
        state,
        f"mean has shape {tuple(mean.shape)}",
        _out_dtype(second_moment),
        text_embeddings,
        texts,
        n_texts,
        **options,
    )


# --------------------------------------------------------------------------------------
# The shared routine
# --------------------------------------------------------------------------------------


def _fit(
    state: Scatter,
    data_desc: str,
    out_dtype: torch.dtype,
    text_embeddings: Tensor,
    texts: Sequence[str],
    n_texts: int,
    *,
    rank: int | None = 80,
    criterion: Criterion = "unnormalized_std",
    center_texts: bool = False,
    span_from: SpanFrom = "uncentred",
) -> TextSpanResult:
    """Span restriction, text preparation, the greedy loop and the result, on either state.
    The defaults of ``rank``, ``criterion``, ``center_texts`` and ``span_from`` are those of
    :func:`text_span`."""
    texts = _check_texts(state.mean.shape[0], data_desc, text_embeddings, texts, n_texts, rank, criterion, span_from)
    span = None if rank is None else state.span(rank, span_from)
    r = _prepare_texts(text_embeddings, state.mean.device, center_texts, span)
    sel = greedy_select(state, r, n_texts, criterion)
    dirs, device = sel.directions, state.mean.device
    basis = dirs / dirs.norm(dim=1, keepdim=True) if len(sel.indices) else dirs
    return TextSpanResult(
        texts=[texts[i] for i in sel.indices],
        indices=torch.tensor(sel.indices, dtype=torch.long, device=device),
        directions=dirs.to(out_dtype),
        basis=basis.to(out_dtype),
        explained_variance=sel.gains.cumsum(0).to(device=device, dtype=out_dtype),
        total_variance=float(state.total_variance),
        mean=state.mean.to(out_dtype),
        scores=sel.scores.to(device=device, dtype=out_dtype),
        span=None if span is None else span.to(out_dtype),
        n=state.n,
        criterion=criterion,
    )


def _check_rows(n: int, empty: str) -> None:
    if n == 0:
        raise ValueError(empty)
    if n < 2:
        raise ValueError(f"TextSpan needs at least 2 data rows (the score is an unbiased std), got {n}")


def _check_texts(
    d: int,
    data_desc: str,
    text_embeddings: Tensor,
    texts: Sequence[str],
    n_texts: int,
    rank: int | None,
    criterion: str,
    span_from: str,
) -> list[str]:
    if text_embeddings.ndim != 2:
        raise ValueError(f"text_embeddings must be [m_pool, d'], got shape {tuple(text_embeddings.shape)}")
    if text_embeddings.shape[1] != d:
        raise ValueError(
            f"dimension mismatch: {data_desc} but text_embeddings has shape "
            f"{tuple(text_embeddings.shape)}; both must share the embedding dimension d'"
        )
    texts = list(texts)
    if len(texts) != text_embeddings.shape[0]:
        raise ValueError(
            f"{len(texts)} texts given for text_embeddings of shape {tuple(text_embeddings.shape)}; "
            "need one text per row"
        )
    if isinstance(n_texts, bool) or not isinstance(n_texts, int) or n_texts < 0:
        raise ValueError(f"n_texts must be a non-negative int, got {n_texts!r}")
    if n_texts > len(texts):
        raise ValueError(f"n_texts={n_texts} is larger than the text pool ({len(texts)} texts)")
    if rank is not None and (isinstance(rank, bool) or not isinstance(rank, int) or rank < 1):
        raise ValueError(f"rank must be a positive int or None, got {rank!r}")
    if criterion not in get_args(Criterion):
        raise ValueError(f"criterion must be one of {get_args(Criterion)}, got {criterion!r}")
    if span_from not in get_args(SpanFrom):
        raise ValueError(f"span_from must be one of {get_args(SpanFrom)}, got {span_from!r}")
    if not bool(torch.isfinite(text_embeddings).all()):
        raise ValueError("text_embeddings contain NaN or inf")
    return texts


def _prepare_texts(text_embeddings: Tensor, device: torch.device, center_texts: bool, span: Tensor | None) -> Tensor:
    """``R`` in float64: optionally centred by the pool mean, then projected on ``span(V_r)``."""
    r = text_embeddings.to(device=device, dtype=torch.float64)
    if center_texts:
        r = r - r.mean(0, keepdim=True)
    if span is not None:
        r = (r @ span.T) @ span  # = R V_rᵀ (V_r V_rᵀ)⁻¹ V_r for orthonormal rows
    return r


def _out_dtype(data: Tensor) -> torch.dtype:
    return torch.float64 if data.dtype == torch.float64 else torch.float32


__all__ = ["text_span", "text_span_from_moments"]
