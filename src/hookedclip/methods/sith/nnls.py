"""Exact non-negative least squares on small Gram systems, batched (Lawson-Hanson active set).

``min_{c ≥ 0} ‖x - c D_S‖²`` depends on the atoms only through ``G = D_S D_Sᵀ [k, k]`` and
``h = D_S x [k]`` (it equals ``cᵀGc - 2hᵀc + ‖x‖²``). Every row of a batch runs the active-set
iteration in lock-step; rows that have converged stop changing. The solution satisfies the
optimality conditions to rounding: ``c ≥ 0``, ``(h - Gc)_j ≈ 0`` where ``c_j > 0`` and
``(h - Gc)_j ≤ tol`` where ``c_j = 0``.
"""

from __future__ import annotations

import torch
from jaxtyping import Bool, Float
from torch import Tensor


def nnls_gram(
    G: Float[Tensor, "batch k k"], h: Float[Tensor, "batch k"], tol: float = 1e-12
) -> Float[Tensor, "batch k"]:
    """``argmin_{c ≥ 0} cᵀGc - 2hᵀc`` per row (``G`` symmetric positive semi-definite)."""
    batch, k = h.shape
    c = torch.zeros_like(h)
    passive = torch.zeros(batch, k, dtype=torch.bool, device=h.device)
    for _ in range(3 * k + 3):  # Lawson-Hanson needs at most a few passes per coordinate
        gradient = h - (G @ c.unsqueeze(-1)).squeeze(-1)
        candidates = ~passive & (gradient > tol)
        entering = candidates.any(-1)
        if not entering.any():
            break
        best = torch.where(candidates, gradient, torch.full_like(gradient, -torch.inf)).argmax(-1)
        passive[entering, best[entering]] = True
        c = _feasible_step(G, h, c, passive, entering)
    return c


def _feasible_step(
    G: Tensor, h: Tensor, c: Tensor, passive: Bool[Tensor, "batch k"], todo: Bool[Tensor, " batch"]
) -> Tensor:
    """The inner loop: solve on the passive set; where that leaves the feasible region, move to
    its boundary, drop the coordinates that hit zero and solve again."""
    for _ in range(h.shape[-1] + 1):
        s = _solve_on(G, h, passive)
        blocked = passive & (s <= 0)
        bad = todo & blocked.any(-1)
        good = todo & ~bad
        c = torch.where(good[:, None], s, c)
        if not bad.any():
            break
        ratio = torch.where(blocked, c / (c - s).clamp_min(1e-300), torch.full_like(c, torch.inf))
        alpha = ratio.min(-1).values.clamp(0, 1)
        stepped = c + alpha[:, None] * (s - c)
        c = torch.where(bad[:, None], stepped, c)
        passive &= ~(bad[:, None] & (c <= 1e-15))
        c = torch.where(passive, c, torch.zeros_like(c))
        todo = bad
    return c


def _solve_on(G: Tensor, h: Tensor, passive: Tensor) -> Tensor:
    """The unconstrained minimiser over the passive coordinates (zero elsewhere)."""
    both = passive[:, :, None] & passive[:, None, :]
    eye = torch.eye(h.shape[-1], dtype=G.dtype, device=G.device).expand_as(G)
    system = torch.where(both, G, eye)
    rhs = torch.where(passive, h, torch.zeros_like(h))
    s, info = torch.linalg.solve_ex(system, rhs)
    failed = info != 0
    if failed.any():  # (near-)duplicate atoms: the minimum-norm solution
        s[failed] = (torch.linalg.pinv(system[failed], hermitian=True) @ rhs[failed].unsqueeze(-1)).squeeze(-1)
    return torch.where(passive, s, torch.zeros_like(s))
