"""A matrix kept as the product of two thin factors, ``M = A @ B``.

Per-head OV and QK circuits are ``d_model × d_model`` but have rank at most ``d_head``;
keeping them factored (``A [..., m, r]``, ``B [..., r, n]``) makes their SVD, norms and
products cost ``O((m + n) r²)`` instead of forming the full matrices.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


class FactoredMatrix:
    """``M = A @ B`` with leading batch axes (layers, heads) shared by both factors.

    ``AB`` forms the full matrix (only when asked); :meth:`svd` returns the thin SVD of ``M``
    from QR factorisations of the factors.
    """

    def __init__(self, A: Float[Tensor, "... m r"], B: Float[Tensor, "... r n"]) -> None:
        if A.shape[-1] != B.shape[-2]:
            raise ValueError(f"inner sizes differ: A is {tuple(A.shape)}, B is {tuple(B.shape)}")
        batch = torch.broadcast_shapes(A.shape[:-2], B.shape[:-2])
        self.A = A.expand(*batch, *A.shape[-2:])
        self.B = B.expand(*batch, *B.shape[-2:])

    @property
    def shape(self) -> torch.Size:
        return torch.Size((*self.A.shape[:-1], self.B.shape[-1]))

    @property
    def rdim(self) -> int:
        """The inner size ``r`` (an upper bound on the rank)."""
        return self.A.shape[-1]

    @property
    def AB(self) -> Float[Tensor, "... m n"]:
        """The full matrix (forms ``m × n`` per batch entry)."""
        return self.A @ self.B

    @property
    def BA(self) -> Float[Tensor, "... r r"]:
        """``B @ A`` (square, ``r × r``; same non-zero eigenvalues as ``M`` when ``m = n``)."""
        return self.B @ self.A

    @property
    def T(self) -> FactoredMatrix:
        return FactoredMatrix(self.B.transpose(-1, -2), self.A.transpose(-1, -2))

    def svd(self) -> tuple[Float[Tensor, "... m r"], Float[Tensor, "... r"], Float[Tensor, "... r n"]]:
        """``(U, S, Vh)`` with ``M = U diag(S) Vh``, ``S`` descending (torch's convention)."""
        Qa, Ra = torch.linalg.qr(self.A)
        Qb, Rb = torch.linalg.qr(self.B.transpose(-1, -2))
        u, s, vh = torch.linalg.svd(Ra @ Rb.transpose(-1, -2))
        return Qa @ u, s, vh @ Qb.transpose(-1, -2)

    @property
    def S(self) -> Float[Tensor, "... r"]:
        return self.svd()[1]

    def norm(self) -> Float[Tensor, "..."]:
        """Frobenius norm of ``M``."""
        return self.S.norm(dim=-1)

    def eigenvalues(self) -> Tensor:
        """Eigenvalues of ``M`` (square only), from the ``r × r`` matrix ``B @ A``."""
        if self.A.shape[-2] != self.B.shape[-1]:
            raise ValueError(f"eigenvalues need a square matrix, this one is {tuple(self.shape)}")
        return torch.linalg.eigvals(self.BA)

    def __getitem__(self, index) -> FactoredMatrix:
        index = index if isinstance(index, tuple) else (index,)
        if len(index) > self.A.ndim - 2:
            raise IndexError("index the leading (layer, head) axes only; use .AB for entries")
        return FactoredMatrix(self.A[index], self.B[index])

    def __matmul__(self, other: Tensor | FactoredMatrix) -> FactoredMatrix:
        if isinstance(other, FactoredMatrix):
            return FactoredMatrix(self.A, (self.B @ other.A) @ other.B)
        return FactoredMatrix(self.A, self.B @ other)

    def __rmatmul__(self, other: Tensor) -> FactoredMatrix:
        return FactoredMatrix(other @ self.A, self.B)

    def __repr__(self) -> str:
        return f"FactoredMatrix(shape={tuple(self.shape)}, rdim={self.rdim})"
