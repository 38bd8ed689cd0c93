"""The best-scoring atom per target, found with a cheap bfloat16 pass and certified exactly.

A greedy pursuit step needs ``argmax_j ⟨q, d_j⟩`` over every atom not yet chosen, for every
target's query ``q``. The scores of all atoms are computed in bfloat16 (on CPUs with bf16 units
about three times faster than float32), the ``candidates`` best are rescored exactly in float32,
and the best of those is kept **only when it is certified**: when its exact score beats the
best bfloat16 score left out by more than the largest possible bfloat16 error. Rows that are not
certified are scored again in full in float32. The selection is therefore the one the exact
scores give (the lowest index on ties), whatever the data.

The error bound: rounding ``q`` and ``d_j`` to bfloat16 (unit roundoff ``u = 2⁻⁸``), accumulating
in float32 (``γ = n·2⁻²⁴`` for ``n`` terms) and rounding the result to bfloat16 change
``⟨q, d_j⟩`` by at most ``(3u + 4u² + 1.1γ) Σ_i |q_i d_ji| ≤ (3u + 4u² + 1.1γ) ‖q‖ ‖d_j‖``.
"""

from __future__ import annotations

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Atoms rescored exactly per target; then, for the rows they do not certify, ``WIDER``.
CANDIDATES = 16
WIDER = 128
#: Targets whose candidates are rescored at once (bounds the ``[rows, candidates, d]`` gather).
RESCORE_ROWS = 512
_U = 2.0**-8


def error_bound(width: int) -> float:
    """The factor ``e`` with ``|bf16 score - exact score| ≤ e ‖q‖ ‖d_j‖`` (module docstring)."""
    gamma = width * 2.0**-24
    return 3 * _U + 4 * _U**2 + 1.1 * gamma


def best_atoms(
    query: Float[Tensor, "n d"],
    D: Float[Tensor, "m d"],
    D_low: Tensor,
    chosen: Int[Tensor, "n s"],
    candidates: int | None = None,
) -> Int[Tensor, " n"]:
    """``argmax_j ⟨query, d_j⟩`` over the atoms not in ``chosen`` (the lowest index on ties),
    screened with ``D_low`` (``D`` in bfloat16) and certified (module docstring). Rows the first
    ``candidates`` do not certify are tried with :data:`WIDER` candidates, then scored in full."""
    first = CANDIDATES if candidates is None else candidates
    if min(first, WIDER) > D.shape[0] - chosen.shape[1] - 1:
        return _exact(query, D, chosen)
    approx = query.to(D_low.dtype) @ D_low.T  # compared in bfloat16: the top values are exact in float32
    margin = error_bound(D.shape[1]) * query.norm(dim=-1) * D.norm(dim=-1).max()
    picked, certified = _certified(approx, query, D, chosen, first, margin)
    for width in (WIDER, None):
        if certified.all():
            break
        redo = (~certified).nonzero().squeeze(-1)
        if width is None or width > D.shape[0] - chosen.shape[1] - 1:
            picked[redo] = _exact(query[redo], D, chosen[redo])
            break
        picked[redo], certified[redo] = _certified(approx[redo], query[redo], D, chosen[redo], width, margin[redo])
    return picked


def _certified(
    approx: Tensor, query: Tensor, D: Tensor, chosen: Tensor, c: int, margin: Tensor
) -> tuple[Tensor, Tensor]:
    """The best of the ``c`` best-screened atoms per row, rescored exactly, and whether it is
    certified: its exact score beats every other atom's screened score plus ``margin``."""
    values, indices = _top_unchosen(approx, chosen, c + 1)
    picked = torch.empty(len(query), dtype=torch.long, device=query.device)
    certified = torch.empty(len(query), dtype=torch.bool, device=query.device)
    step = max(1, RESCORE_ROWS * CANDIDATES // c)
    for a in range(0, len(query), step):
        rows = slice(a, a + step)
        cand = indices[rows, :c]
        exact = (D[cand] * query[rows].unsqueeze(1)).sum(-1)  # [rows, c]; faster than a batched matrix-vector product
        best = exact.max(-1).values
        picked[rows] = torch.where(exact == best[:, None], cand, D.shape[0]).min(-1).values  # lowest index on ties
        certified[rows] = best > values[rows, c].to(best.dtype) + margin[rows]
    return picked, certified


def _top_unchosen(approx: Tensor, chosen: Tensor, n: int) -> tuple[Tensor, Tensor]:
    """``(values, indices)`` of the ``n`` largest entries per row outside ``chosen``, descending:
    the ``n + s`` largest, then the chosen ones moved out (no write into the ``[rows, atoms]`` scores)."""
    s = chosen.shape[1]
    top = approx.topk(n + s, dim=-1)
    if not s:
        return top.values, top.indices
    taken = (top.indices.unsqueeze(-1) == chosen.unsqueeze(1)).any(-1)  # [rows, n + s]
    order = torch.sort(taken.to(torch.int8), dim=-1, stable=True).indices[:, :n]  # unchosen first, in order
    return top.values.gather(1, order), top.indices.gather(1, order)


def _exact(query: Tensor, D: Tensor, chosen: Tensor) -> Tensor:
    scores = query @ D.T
    if chosen.shape[1]:
        scores.scatter_(1, chosen, -torch.inf)
    return scores.argmax(-1)
