"""The greedy selection of TextSpan, shared by the data path and the moment path.

The loop (:func:`greedy_select`) runs on a *scatter state*: something that knows the data's
statistics (mean, ``N``, total variance, the span ``V_r`` of its top singular directions), how
to score the text rows and how to remove a chosen direction from the data. Two states exist:

* :class:`DataScatter`, the centred residual data matrix ``C [N, d']`` itself (the reference
  procedure, step for step);
* :class:`MomentScatter`, only the centred scatter ``S = (C − c̄)ᵀ(C − c̄)``, built from the mean
  and the uncentred second moment: ``O(M d'²)`` per step instead of ``O(N M d')``, and the
  activations are never needed.

Each step scores every text by the unbiased std (``N − 1``) of the projections ``C r_jᵀ`` on
its **un-normalised** residual vector ``r_j``, takes the first arg-max ``j*``; with
``r = R[j*]``, ``ρ = r·r``, ``b = C rᵀ/ρ`` it sets ``C ← C − b r``, then removes ``r`` from
every text, ``R ← R − (R rᵀ/ρ) r`` (Gram–Schmidt on the text set, so row ``j*`` becomes 0).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

Criterion = Literal["unnormalized_std", "variance_gain"]
SpanFrom = Literal["uncentred", "centred"]

#: A residual text vector with norm below this fraction of the largest initial text norm
#: counts as zero (already spanned by the chosen texts).
ZERO_NORM_RTOL = 1e-10

#: Largest number of entries of the ``[N, chunk]`` score block formed at once (data path).
_SCORE_BLOCK = 1 << 24


# --------------------------------------------------------------------------------------
# Scatter states: the data's statistics, how a score and an update are computed
# --------------------------------------------------------------------------------------


class Scatter(Protocol):
    mean: Float[Tensor, " d"]  # c̄, float64
    n: int  # N
    total_variance: float  # (1/N) ‖C − c̄‖²_F

    def span(self, rank: int, span_from: SpanFrom) -> Float[Tensor, "r d"]:
        """``V_r``: the top-``rank`` right singular vectors of the data (``"uncentred"``) or of the
        centred data (``"centred"``), as orthonormal rows; at most ``min(rank, N, d')``."""
        ...

    def variance(self, texts: Tensor) -> Tensor:
        """``[M]`` unbiased variance (``N − 1``) of the current residual data projected on each row."""
        ...

    def remove(self, direction: Tensor, rho: Tensor) -> float:
        """Remove ``direction`` (``ρ = r·r``) from the residual data; return ``(1/N)‖C r̂ᵀ‖²``."""
        ...


class DataScatter:
    """The centred residual data matrix ``C [N, d']`` itself (the reference procedure)."""

    def __init__(self, data: Float[Tensor, "n d"]) -> None:
        self.data = data.to(torch.float64)
        self.mean = self.data.mean(0)
        self.centred = self.data - self.mean
        self.residual = self.centred.clone()
        self.n = data.shape[0]
        self.total_variance = float((self.centred * self.centred).sum()) / self.n

    def span(self, rank: int, span_from: SpanFrom) -> Tensor:
        _, _, vh = torch.linalg.svd(self.centred if span_from == "centred" else self.data, full_matrices=False)
        return vh[:rank]

    def reconstruction(self) -> Float[Tensor, "n d"]:
        """``Ĉ = c̄ + Σ b_i r_i``, since ``Ĉ`` and the residual sum to the data."""
        return self.data - self.residual

    def variance(self, texts: Tensor) -> Tensor:
        # Y = C Rᵀ and its column variance, chunked over texts to bound the [N, chunk] block.
        chunk = max(1, _SCORE_BLOCK // max(self.n, 1))
        return torch.cat([(self.residual @ block.T).var(dim=0, correction=1) for block in texts.split(chunk)])

    def remove(self, direction: Tensor, rho: Tensor) -> float:
        coeff = (self.residual @ direction) / rho  # b = C rᵀ / ρ
        self.residual -= torch.outer(coeff, direction)  # C ← C − b r  (and Ĉ = C₀ − C)
        return float((coeff @ coeff) * rho) / self.n


class MomentScatter:
    """The centred scatter ``S = (C − c̄)ᵀ(C − c̄) = N (E[xxᵀ] − c̄ c̄ᵀ)``, from the mean and the
    uncentred second moment ``E[xxᵀ]`` only."""

    def __init__(self, mean: Float[Tensor, " d"], second_moment: Float[Tensor, "d d"], n: int) -> None:
        self.mean = mean.to(torch.float64)
        m2 = second_moment.to(device=self.mean.device, dtype=torch.float64)
        self.second_moment = 0.5 * (m2 + m2.T)
        self.covariance = self.second_moment - torch.outer(self.mean, self.mean)  # biased
        self.scatter = n * self.covariance
        self.n = n
        self.total_variance = float(torch.diagonal(self.covariance).sum().clamp_min(0))

    def span(self, rank: int, span_from: SpanFrom) -> Tensor:
        # The right singular vectors of the data are the eigenvectors of E[xxᵀ] (of the
        # covariance for the centred data), in descending order of eigenvalue.
        _, vecs = torch.linalg.eigh(self.covariance if span_from == "centred" else self.second_moment)
        k = min(rank, self.n, self.mean.shape[0])
        return vecs.flip(-1)[:, :k].T.contiguous()

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


# --------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------


@dataclass
class Selection:
    indices: list[int]
    directions: Tensor  # [m, d] float64
    scores: Tensor  # [m]
    gains: Tensor  # [m] per-step explained variance


def greedy_select(state: Scatter, texts: Tensor, n_texts: int, criterion: Criterion) -> Selection:
    """The greedy loop (see the module docstring), shared by the data and the moment paths.

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
                stacklevel=4,  # the caller of text_span / text_span_from_moments
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
    return Selection(
        indices=indices,
        directions=dirs,
        scores=torch.tensor(scores, dtype=torch.float64),
        gains=torch.tensor(gains, dtype=torch.float64),
    )


__all__ = [
    "Criterion",
    "SpanFrom",
    "ZERO_NORM_RTOL",
    "Scatter",
    "DataScatter",
    "MomentScatter",
    "Selection",
    "greedy_select",
]
