"""TextSpan (Gandelsman, Efros, Steinhardt, ICLR 2024): a greedy text basis for one head.

Given one component's direct contributions ``C ∈ R^{N×d'}`` (rows ``c_n``, mean ``c̄``) and
a pool of ``M`` text embeddings ``R ∈ R^{M×d'}``, TextSpan picks ``m`` texts whose span
explains as much of the variance ``V(T) = (1/N) Σ_n ‖Proj_T(c_n − c̄)‖²`` as a greedy
search can (``specs/pclens_textspan.md`` §3.1). This module is pure tensor code: the caller
supplies the contributions (or their first two moments) and the text embeddings.

The reference procedure (§3.2, ``replace_with_iterative_removal``), reproduced exactly:

1. *Span restriction.* ``V_r`` = the top-``r`` right singular vectors of the **uncentred**
   ``C``; every text row is projected onto ``span(V_r)``: ``R ← R V_rᵀ V_r`` (not
   re-normalised).
2. *Centring.* ``C ← C − c̄``; the reconstruction ``Ĉ`` starts as ``c̄`` in every row.
3. *Greedy loop*, ``m`` times: score every text by the unbiased std (``N − 1``) of the
   projections ``C r_jᵀ`` on its **un-normalised** residual vector ``r_j``; take the first
   arg-max ``j*``; with ``r = R[j*]``, ``ρ = r·r``, ``b = C rᵀ/ρ``: ``Ĉ += b r``,
   ``C ← C − b r``; then remove ``r`` from every text, ``R ← R − (R rᵀ/ρ) r``
   (Gram–Schmidt on the text set, so row ``j*`` becomes 0).

The chosen residual vectors ``r_1..r_m`` are mutually orthogonal and
``Ĉ = c̄ + (C − c̄) Qᵀ Q`` with ``Q`` the ``[m, d']`` matrix of unit rows ``r_i/‖r_i‖``.

``text_span`` runs this on the data matrix; ``text_span_from_moments`` runs the same
selection on ``c̄`` and the uncentred second moment ``E[x xᵀ]`` only (§7.2 item 5), which
costs ``O(M d'²)`` per step instead of ``O(N M d')`` and never needs the activations
(accumulate them with :class:`hookedclip.data.stats.RunningMoments`). Both share one greedy loop
(:func:`_greedy_select`), parameterised by a *scatter state* that knows how to score the
text rows and how to remove a chosen direction from the data.

Differences from the literal reference, all confined to degenerate inputs:

* an already-chosen text is never chosen again (the reference relies on its residual being
  exactly zero, which floating point does not guarantee);
* a text whose residual norm has fallen below ``1e-10 ×`` the largest initial text norm is
  treated as spent (``r·r ≈ 0``; the reference would divide by ~0). If no usable text is
  left, the loop stops early with a warning and returns fewer than ``n_texts`` texts — e.g.
  when ``n_texts`` exceeds ``rank`` or ``d'``.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Protocol

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_HEADS
from hookedclip.data.stats import RunningMoments
from hookedclip.identity import ModelIdentity, model_identity
from hookedclip.methods import _common
from hookedclip.results import Result, finish_figure, new_figure

Criterion = Literal["unnormalized_std", "variance_gain"]
SpanFrom = Literal["uncentred", "centred"]

__all__ = [
    "Criterion",
    "SpanFrom",
    "TextSpanResult",
    "text_span",
    "text_span_from_moments",
    "head_moments",
    "text_span_heads",
]

#: A residual text vector with norm below this fraction of the largest initial text norm
#: counts as zero (already spanned by the chosen texts).
ZERO_NORM_RTOL = 1e-10

#: Largest number of entries of the ``[N, chunk]`` score block formed at once (data path).
_SCORE_BLOCK = 1 << 24

_CRITERIA = ("unnormalized_std", "variance_gain")
_SPANS = ("uncentred", "centred")


# --------------------------------------------------------------------------------------
# Result
# --------------------------------------------------------------------------------------


@dataclass(repr=False)
class TextSpanResult(Result):
    """The texts TextSpan chose for one component, and the subspace they span.

    Attributes:
        texts: the ``m`` chosen texts, in selection order.
        indices: ``[m]`` their indices into the text pool.
        directions: ``[m, d']`` the residual text vectors ``r_i`` actually used (after the
            span restriction, the optional pool centring and Gram–Schmidt against the
            previously chosen ones); **not** normalised. Mutually orthogonal.
        basis: ``[m, d']`` orthonormal rows ``r_i / ‖r_i‖`` spanning the same space (``Q``).
        explained_variance: ``[m]`` cumulative ``(1/N) ‖Ĉ_i − c̄‖²_F`` after each step ``i``,
            i.e. the variance of the contributions inside ``span(r_1..r_i)``.
        total_variance: ``(1/N) ‖C − c̄‖²_F`` (biased: divides by ``N``).
        mean: ``[d']`` the data mean ``c̄``.
        scores: ``[m]`` the winning criterion value at each step.
        span: ``[r', d']`` the rows ``V_r`` used for the span restriction (``r' =
            min(r, N, d')``), or ``None`` when ``rank=None``.
        reconstruction: ``[N, d']`` the reference's ``Ĉ`` on the fitted data (only from
            :func:`text_span`; ``None`` from :func:`text_span_from_moments`).
        n: number of data rows ``N`` the statistics came from.
        criterion: the selection rule used.
        model: the :func:`~hookedclip.identity.model_identity` of the model behind the
            contributions (``None`` when computed from tensors alone).
    """

    _kind = "textspan"
    _tensor_fields = ("indices", "directions", "basis", "explained_variance", "mean", "scores", "span",
                      "reconstruction")
    _json_fields = ("texts", "total_variance", "n", "criterion")

    texts: list[str]
    indices: Int[Tensor, " m"]
    directions: Float[Tensor, "m d"]
    basis: Float[Tensor, "m d"]
    explained_variance: Float[Tensor, " m"]
    total_variance: float
    mean: Float[Tensor, " d"]
    scores: Float[Tensor, " m"] | None = None
    span: Float[Tensor, "r d"] | None = None
    reconstruction: Float[Tensor, "n d"] | None = None
    n: int = 0
    criterion: str = "unnormalized_std"
    model: ModelIdentity | None = None

    def __len__(self) -> int:
        return len(self.texts)

    # ---- the Result protocol
    def _title(self) -> str:
        explained = float(self.explained_fraction[-1]) if len(self) else 0.0
        return (f"TextSpan on {self.model or 'no recorded model'}: {len(self)} texts explain "
                f"{100 * explained:.1f}% of the variance (N={self.n}, {self.criterion})")

    def _table(self) -> tuple[list[str], list[list]]:
        header = ["rank", "text", "pool_index", "score", "explained_variance", "explained_fraction"]
        scores = [None] * len(self) if self.scores is None else self.scores.tolist()
        rows = [[i + 1, text, int(j), score, float(v), float(f)] for i, (text, j, score, v, f) in
                enumerate(zip(self.texts, self.indices.tolist(), scores, self.explained_variance.tolist(),
                              self.explained_fraction.tolist()))]
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"texts": len(self), "d": self.mean.shape[-1], "n": self.n}

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Cumulative share of the variance explained against the texts chosen (a matplotlib
        ``Figure``; written to ``path`` when given)."""
        fig, ax = new_figure(max(4.5, 0.3 * len(self) + 2.0), 3.4)
        ax.plot(range(1, len(self) + 1), [100 * float(f) for f in self.explained_fraction], marker="o",
                markersize=3.5)
        ax.set_xticks(range(1, len(self) + 1), self.texts, rotation=45, ha="right", fontsize=7)
        ax.set_ylabel("variance explained (%)")
        ax.set_ylim(0, 102)
        ax.grid(alpha=0.3)
        ax.set_title(title or f"TextSpan ({self.model or 'no recorded model'})", fontsize=10)
        return finish_figure(fig, path)

    @property
    def explained_fraction(self) -> Float[Tensor, " m"]:
        """``[m]`` cumulative explained variance over total variance (1 where the total is 0)."""
        if self.total_variance > 0:
            return self.explained_variance / self.total_variance
        return torch.ones_like(self.explained_variance)

    def reconstruct(self, contributions: Float[Tensor, "... d"]) -> Float[Tensor, "... d"]:
        """``Ĉ = c̄ + (C − c̄) Qᵀ Q`` for any contributions ``C [..., d']`` (``Q`` = ``basis``).

        Projects ``C − c̄`` onto the span of the chosen texts, with the fitted mean ``c̄``.
        Works on new data (the same mean is used). Computed in float64, returned in the
        dtype of ``contributions`` (float32 for non-floating input).
        """
        d = self.mean.shape[-1]
        if contributions.shape[-1] != d:
            raise ValueError(
                f"contributions have shape {tuple(contributions.shape)} but the TextSpan basis "
                f"has shape {tuple(self.basis.shape)}: last dimensions must both be d'={d}"
            )
        out_dtype = contributions.dtype if contributions.is_floating_point() else torch.float32
        x = contributions.to(torch.float64)
        mean = self.mean.to(device=x.device, dtype=torch.float64)
        q = self.basis.to(device=x.device, dtype=torch.float64)
        return (mean + ((x - mean) @ q.T) @ q).to(out_dtype)


# --------------------------------------------------------------------------------------
# Streaming statistics
# --------------------------------------------------------------------------------------


# --------------------------------------------------------------------------------------
# Scatter states: how a score and an update are computed
# --------------------------------------------------------------------------------------


class _Scatter(Protocol):
    def variance(self, texts: Tensor) -> Tensor:
        """``[M]`` unbiased variance (``N − 1``) of the current residual data projected on each row."""
        ...

    def remove(self, direction: Tensor, rho: Tensor) -> float:
        """Remove ``direction`` (``ρ = r·r``) from the residual data; return ``(1/N)‖C r̂ᵀ‖²``."""
        ...


class _DataScatter:
    """The centred residual data matrix ``C [N, d']`` itself (reference path, §3.2)."""

    def __init__(self, centred: Tensor) -> None:
        self.residual = centred.clone()
        self.n = centred.shape[0]

    def variance(self, texts: Tensor) -> Tensor:
        # Y = C Rᵀ and its column variance, chunked over texts to bound the [N, chunk] block.
        chunk = max(1, _SCORE_BLOCK // max(self.n, 1))
        return torch.cat(
            [(self.residual @ block.T).var(dim=0, correction=1) for block in texts.split(chunk)]
        )

    def remove(self, direction: Tensor, rho: Tensor) -> float:
        coeff = (self.residual @ direction) / rho  # b = C rᵀ / ρ
        self.residual -= torch.outer(coeff, direction)  # C ← C − b r  (and Ĉ = C₀ − C)
        return float((coeff @ coeff) * rho) / self.n


class _MomentScatter:
    """The centred scatter ``S = (C − c̄)ᵀ(C − c̄) = N (E[xxᵀ] − c̄ c̄ᵀ)`` (§7.2 item 5)."""

    def __init__(self, scatter: Tensor, n: int) -> None:
        self.scatter = scatter.clone()
        self.n = n

    def variance(self, texts: Tensor) -> Tensor:
        # std_j² = r_j S r_jᵀ / (N − 1); clamp the tiny negatives of round-off.
        return ((texts @ self.scatter) * texts).sum(1).clamp_min(0) / (self.n - 1)

    def remove(self, direction: Tensor, rho: Tensor) -> float:
        # S ← (I − r̂ᵀr̂) S (I − r̂ᵀr̂) = S − u r̂ − r̂ᵀuᵀ + a r̂ᵀr̂, with u = S r̂ᵀ, a = r̂ S r̂ᵀ.
        # S stays the scatter of the residual data (mirrors C ← C − b r). In exact arithmetic
        # later scores do not need it (every later r_j ⟂ r̂ after Gram–Schmidt), but it keeps
        # round-off from re-admitting removed directions, as in the data path.
        unit = direction / rho.sqrt()
        u = self.scatter @ unit
        a = unit @ u
        self.scatter += a * torch.outer(unit, unit) - torch.outer(u, unit) - torch.outer(unit, u)
        self.scatter = 0.5 * (self.scatter + self.scatter.T)
        return float(a.clamp_min(0)) / self.n


@dataclass
class _Selection:
    indices: list[int]
    directions: Tensor  # [m, d] float64
    scores: Tensor  # [m]
    gains: Tensor  # [m] per-step explained variance


def _greedy_select(state: _Scatter, texts: Tensor, n_texts: int, criterion: Criterion) -> _Selection:
    """The greedy loop of §3.2 step 3, shared by the data and the moment paths.

    ``texts [M, d']`` (float64) are the span-restricted text rows; they are Gram–Schmidt
    updated in a copy. ``state`` scores them and absorbs each removed direction.
    """
    texts = texts.clone()
    m_pool, d = texts.shape
    rho0 = (texts * texts).sum(1)
    floor = (ZERO_NORM_RTOL**2) * float(rho0.max()) if m_pool else 0.0
    chosen = torch.zeros(m_pool, dtype=torch.bool, device=texts.device)
    indices: list[int] = []
    directions, scores, gains = [], [], []
    for _ in range(n_texts):
        rho = (texts * texts).sum(1)
        usable = ~chosen & (rho > floor)
        if not bool(usable.any()):
            warnings.warn(
                f"TextSpan stopped after {len(indices)} of {n_texts} texts: every remaining text "
                "lies in the span of the chosen ones (after the rank restriction); "
                "lower n_texts or raise rank",
                RuntimeWarning,
                stacklevel=3,
            )
            break
        var = state.variance(texts)
        if criterion == "unnormalized_std":
            score = var.clamp_min(0).sqrt()  # std of C r_jᵀ = ‖r_j‖ · std⟨c, r̂_j⟩
        else:
            score = var.clamp_min(0) / rho.clamp_min(torch.finfo(rho.dtype).tiny)  # var⟨c, r̂_j⟩
        score = torch.where(usable, score, torch.full_like(score, -math.inf))
        j = int(torch.argmax(score))  # first index on ties
        r = texts[j].clone()
        gains.append(state.remove(r, rho[j]))
        texts -= torch.outer((texts @ r) / rho[j], r)  # R ← R − (R rᵀ/ρ) r
        texts[j] = 0.0
        chosen[j] = True
        indices.append(j)
        directions.append(r)
        scores.append(float(score[j]))
    dirs = torch.stack(directions) if directions else texts.new_zeros(0, d)
    return _Selection(
        indices=indices,
        directions=dirs,
        scores=torch.tensor(scores, dtype=torch.float64),
        gains=torch.tensor(gains, dtype=torch.float64),
    )


# --------------------------------------------------------------------------------------
# Shared preparation and validation
# --------------------------------------------------------------------------------------


def _check_common(
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
    if criterion not in _CRITERIA:
        raise ValueError(f"criterion must be one of {_CRITERIA}, got {criterion!r}")
    if span_from not in _SPANS:
        raise ValueError(f"span_from must be one of {_SPANS}, got {span_from!r}")
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


def _result(
    sel: _Selection,
    texts: list[str],
    mean: Tensor,
    total_variance: float,
    n: int,
    criterion: str,
    span: Tensor | None,
    reconstruction: Tensor | None,
    out_dtype: torch.dtype,
) -> TextSpanResult:
    dirs = sel.directions
    norms = dirs.norm(dim=1, keepdim=True)
    device = mean.device
    return TextSpanResult(
        texts=[texts[i] for i in sel.indices],
        indices=torch.tensor(sel.indices, dtype=torch.long, device=device),
        directions=dirs.to(out_dtype),
        basis=(dirs / norms).to(out_dtype) if len(sel.indices) else dirs.to(out_dtype),
        explained_variance=sel.gains.cumsum(0).to(device=device, dtype=out_dtype),
        total_variance=float(total_variance),
        mean=mean.to(out_dtype),
        scores=sel.scores.to(device=device, dtype=out_dtype),
        span=None if span is None else span.to(out_dtype),
        reconstruction=None if reconstruction is None else reconstruction.to(out_dtype),
        n=n,
        criterion=criterion,
    )


def _out_dtype(data: Tensor) -> torch.dtype:
    return torch.float64 if data.dtype == torch.float64 else torch.float32


# --------------------------------------------------------------------------------------
# Public entry points
# --------------------------------------------------------------------------------------


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
    """TextSpan on one component's contributions: the reference procedure of §3.2, exactly.

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
            ``"variance_gain"``: ``var⟨c, r̂_j⟩``, the true marginal explained variance
            (Appendix A row 1).
        center_texts: subtract the pool mean from ``R`` first (PCLens's variant, §3.4 item 1).
        span_from: ``"uncentred"`` (reference) or ``"centred"``: take ``V_r`` from the centred
            data instead (PCLens's variant, §3.4 item 2).

    Returns:
        A :class:`TextSpanResult`; ``reconstruction`` holds the reference's ``Ĉ [N, d']``.
        Computed in float64; tensors are float64 if ``contributions`` is, else float32.
        Fewer than ``n_texts`` texts (with a warning) when the pool's span is exhausted.
    """
    if contributions.ndim != 2:
        raise ValueError(f"contributions must be [n, d'], got shape {tuple(contributions.shape)}")
    n, d = contributions.shape
    texts = _check_common(
        d, f"contributions has shape {tuple(contributions.shape)}", text_embeddings, texts,
        n_texts, rank, criterion, span_from,
    )
    if n == 0:
        raise ValueError("contributions is empty (0 rows): TextSpan needs data")
    if n < 2:
        raise ValueError("TextSpan needs at least 2 data rows (the score is an unbiased std)")
    if not bool(torch.isfinite(contributions).all()):
        raise ValueError("contributions contain NaN or inf")

    out_dtype = _out_dtype(contributions)
    data = contributions.to(torch.float64)
    mean = data.mean(0)
    centred = data - mean

    span = None
    if rank is not None:
        _, _, vh = torch.linalg.svd(centred if span_from == "centred" else data, full_matrices=False)
        span = vh[:rank]
    r = _prepare_texts(text_embeddings, data.device, center_texts, span)

    state = _DataScatter(centred)
    sel = _greedy_select(state, r, n_texts, criterion)
    reconstruction = data - state.residual  # Ĉ = c̄ + Σ b_i r_i, since Ĉ + C_residual = C₀
    total = float((centred * centred).sum()) / n
    return _result(sel, texts, mean, total, n, criterion, span, reconstruction, out_dtype)


def text_span_from_moments(
    mean: Float[Tensor, " d"],
    second_moment: Float[Tensor, "d d"],
    n: int,
    text_embeddings: Float[Tensor, "m_pool d"],
    texts: Sequence[str],
    n_texts: int = 20,
    rank: int | None = 80,
    criterion: Criterion = "unnormalized_std",
    center_texts: bool = False,
    span_from: SpanFrom = "uncentred",
) -> TextSpanResult:
    """TextSpan from streaming statistics only (§7.2 item 5); chooses what :func:`text_span` would.

    Args:
        mean: ``c̄ = (1/N) Σ_n x_n``, ``[d']``.
        second_moment: the **uncentred** second moment ``E[x xᵀ] = (1/N) Σ_n x_n x_nᵀ``
            (outer products of the column vectors ``x_n``), i.e. ``Cᵀ C / N`` for the
            ``[N, d']`` data matrix ``C``: shape ``[d', d']``, divided by ``N`` (not
            ``N − 1``), not centred. :class:`hookedclip.data.stats.RunningMoments` accumulates it (``.second_moment()``).
        n: the number of rows ``N`` behind the moments (``N ≥ 2``).
        text_embeddings, texts, n_texts, rank, criterion, center_texts, span_from: as in
            :func:`text_span`.

    The data are replaced by the centred scatter ``S = N (E[xxᵀ] − c̄ c̄ᵀ) = (C − c̄)ᵀ(C − c̄)``; a text's score
    is ``std_j = sqrt(r_j S r_jᵀ / (N − 1))``; removing ``r̂`` updates
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
    texts = _check_common(
        d, f"mean has shape {tuple(mean.shape)}", text_embeddings, texts, n_texts, rank, criterion, span_from,
    )
    if isinstance(n, bool) or not isinstance(n, int):
        raise ValueError(f"n must be an int, got {n!r}")
    if n == 0:
        raise ValueError("n=0: the moments come from empty data")
    if n < 2:
        raise ValueError(f"TextSpan needs at least 2 data rows (the score is an unbiased std), got n={n}")
    if not (bool(torch.isfinite(mean).all()) and bool(torch.isfinite(second_moment).all())):
        raise ValueError("mean or second_moment contain NaN or inf")

    out_dtype = _out_dtype(second_moment)
    mu = mean.to(torch.float64)
    m2 = second_moment.to(device=mu.device, dtype=torch.float64)
    m2 = 0.5 * (m2 + m2.T)
    cov = m2 - torch.outer(mu, mu)  # biased covariance

    span = None
    if rank is not None:
        _, vecs = torch.linalg.eigh(cov if span_from == "centred" else m2)
        k = min(rank, n, d)
        span = vecs.flip(-1)[:, :k].T.contiguous()  # descending eigenvalues, rows = V_r
    r = _prepare_texts(text_embeddings, mu.device, center_texts, span)

    state = _MomentScatter(n * cov, n)
    sel = _greedy_select(state, r, n_texts, criterion)
    total = float(torch.diagonal(cov).sum().clamp_min(0))
    return _result(sel, texts, mu, total, n, criterion, span, None, out_dtype)


# --------------------------------------------------------------------------------------
# On a model: stream head contributions into moments, then select per head
# --------------------------------------------------------------------------------------


def head_moments(model, batches, components=ALL_HEADS) -> tuple[list[str], RunningMoments]:
    """Deprecated: use :func:`hookedclip.methods.head_moments` (a ``label -> RunningMoments``
    dict and the embedding's moments). Labels and one ``[component, d']`` accumulator."""
    warnings.warn("textspan.head_moments is deprecated; use hookedclip.methods.head_moments",
                  DeprecationWarning, stacklevel=2)
    per_head, _ = _common.head_moments(model, batches, components)
    first = next(iter(per_head.values()))
    mean = torch.stack([m.mean for m in per_head.values()])
    m2 = torch.stack([m.m2 for m in per_head.values()])
    return list(per_head), RunningMoments(first.n, mean, m2)


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
        rank, criterion: as in :func:`text_span`.
        text_embeddings: ``[M, d']`` precomputed embeddings of ``texts`` (L2-normalised
            ``encode_text`` outputs); by default the pool is embedded once with ``model``.
    """
    if len(texts) == 0:
        raise ValueError("the text pool is empty")
    if isinstance(n_texts, bool) or not isinstance(n_texts, int) or not 0 <= n_texts <= len(texts):
        raise ValueError(f"n_texts={n_texts!r} must be an int from 0 to the text pool's size ({len(texts)} texts)")
    texts, pool = _common.text_pool(model, texts, text_embeddings, text_batch_size)
    per_head, _ = _common.head_moments(model, batches, components)
    pool = pool.to(torch.float64)
    identity = model_identity(model)
    results = {label: text_span_from_moments(m.mean, m.second_moment(), m.n, pool, texts, n_texts=n_texts, rank=rank,
                                             criterion=criterion)
               for label, m in per_head.items()}
    for result in results.values():
        result.model = identity
    return results


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
    results = {label: text_span_from_moments(m.mean, m.second_moment(), m.n, text_embeddings, texts, n_texts,
                                             **options) for label, m in moments.items()}
    for result in results.values():
        result.model = store.model
    return results


__all__ += ["text_span_from_store"]
