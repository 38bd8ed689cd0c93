"""Per-head singular value decomposition of the value-output circuit.

A head's output at a query token is ``Σ_t A[q, t] · (x̂_t @ VO_h)`` plus biases, with
``VO_h = W_V[h] @ W_O[h]`` (``[d_model, d_model]``, rank ≤ d_head, row convention). Its thin SVD
``VO_h = U diag(S) Vh`` splits the head into ``d_head`` independent channels: the head reads
``x̂ · u_i`` (``u_i`` a column of ``U``, in the head's input space) and writes ``σ_i (x̂ · u_i) v_i``
(``v_i`` a row of ``Vh``, in the residual stream). The rows ``v_i`` are what SITH interprets.

Two optional, output-preserving rewrites are applied to the head's factors first (on copies:
the model is never changed):

- ``fold_ln``: the block's ``ln1`` gain is multiplied into ``W_V`` and the columns of ``W_V``
  are made orthogonal to the all-ones vector. The head then reads the pure normalised residual
  ``x̂ = (x - mean) / σ``, which has zero mean, so the centring changes nothing it computes.
  (``ln1``'s bias only reaches the value bias, which is not part of ``VO_h``.)
- ``center``: each row of ``W_O`` loses its mean over ``d_model``. The head's output then changes
  by a multiple of the all-ones vector per token, which every LayerNorm reading the residual
  stream removes.

With both, every singular vector with ``σ > 0`` has zero mean. The SVD is taken from the
``d_head``-sized factors (:class:`~hookedclip.model.factored.FactoredMatrix`), never forming a
``d_model × d_model`` matrix, and each pair ``(u_i, v_i)`` is signed so that the entry of ``u_i``
with the largest magnitude is positive (``U diag(S) Vh`` is unchanged by the flip).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.identity import ModelIdentity, model_identity, model_label
from hookedclip.methods.sith._layer_heads import LayerHeads
from hookedclip.model.factored import FactoredMatrix
from hookedclip.results import Result, finish_figure, new_figure


@dataclass(repr=False)
class HeadSVD(LayerHeads, Result):
    """The singular value decomposition of every head's ``VO_h`` in one layer of the image tower.

    Attributes:
        S: ``σ [head, r]``, non-negative, descending per head.
        U: ``[head, d_model, r]``; column ``i`` is the read direction ``u_i`` (head's input space).
        Vh: ``[head, r, d_model]``; row ``i`` is the write direction ``v_i`` (residual stream).
        layer: the block index.
        fold_ln: whether ``ln1``'s gain was folded in and the reading weights centred.
        center: whether the writing weights were centred.
        model: the identity of the model the weights came from.
    """

    _kind = "sith_head_svd"
    _tensor_fields = ("S", "U", "Vh")

    S: Float[Tensor, "head r"]
    U: Float[Tensor, "head d_model r"]
    Vh: Float[Tensor, "head r d_model"]
    layer: int
    fold_ln: bool = True
    center: bool = True
    model: ModelIdentity | None = None

    def vectors(self, side: str = "right") -> Float[Tensor, "head r d_model"]:
        """The write directions ``v_i`` (``side="right"``, rows of ``Vh``) or the read directions
        ``u_i`` (``side="left"``), as ``[head, r, d_model]`` unit rows."""
        if side == "right":
            return self.Vh
        if side == "left":
            return self.U.transpose(-1, -2)
        raise ValueError(f"side must be 'right' (write directions) or 'left' (read directions), got {side!r}")

    def factored(self) -> FactoredMatrix:
        """``U diag(S) Vh`` per head as a :class:`FactoredMatrix` ``[head, d_model, d_model]``."""
        return FactoredMatrix(self.U * self.S[:, None, :], self.Vh)

    # ---- the Result protocol
    def _title(self) -> str:
        options = ", ".join(name for name, on in (("ln1 folded", self.fold_ln), ("centred", self.center)) if on)
        return f"HeadSVD of layer {self.layer} of {model_label(self.model)}: {self.n_heads} heads, rank {self.rank}" + (
            f" ({options})" if options else ""
        )

    def _table(self) -> tuple[list[str], list[list]]:
        energy = self.S.double() ** 2
        share = energy / energy.sum(-1, keepdim=True).clamp_min(1e-300)
        rows = [
            [label, i, float(self.S[h, i]), float(share[h, i])]
            for h, label in enumerate(self.labels)
            for i in range(self.rank)
        ]
        return ["head", "index", "singular_value", "energy_share"], rows

    def _repr_sizes(self) -> dict:
        return {"layer": self.layer, "heads": self.n_heads, "rank": self.rank, "d_model": self.U.shape[1]}

    def plot(self, path: str | Path | None = None):
        """Singular values of every head, one line per head (a ``Figure``; written to ``path``)."""
        fig, ax = new_figure(6, 3.5)
        for h, label in enumerate(self.labels):
            ax.plot(range(self.rank), self.S[h].float().cpu(), label=label, lw=1)
        ax.set_xlabel("index i")
        ax.set_ylabel("σ_i")
        ax.set_title(f"Singular values of VO, layer {self.layer}")
        if self.n_heads <= 16:
            ax.legend(fontsize=6, ncol=2)
        return finish_figure(fig, path)


def head_factors(
    model, layer: int, fold_ln: bool = True, center: bool = True
) -> tuple[Float[Tensor, "head d_model d_head"], Float[Tensor, "head d_head d_model"]]:
    """Copies of ``W_V`` and ``W_O`` of every head of image-tower block ``layer``, with ``ln1`` folded
    (and the reading weights centred) when ``fold_ln`` and the writing weights centred when
    ``center`` (module docstring). The model is not changed."""
    block = model.visual.blocks[check_layer(model, layer)]
    W_V, W_O = block.attn.W_V.detach().clone(), block.attn.W_O.detach().clone()
    if fold_ln:
        W_V = W_V * block.ln1.w.detach()[None, :, None]
        W_V = W_V - W_V.mean(1, keepdim=True)
    if center:
        W_O = W_O - W_O.mean(-1, keepdim=True)
    return W_V, W_O


def head_svd(model, layer: int, rank: int | None = None, fold_ln: bool = True, center: bool = True) -> HeadSVD:
    """The SVD of ``VO_h = W_V[h] @ W_O[h]`` for every head of image-tower block ``layer``.

    Args:
        model: a :class:`~hookedclip.HookedCLIP`; never modified.
        layer: the block (negative counts from the end).
        rank: singular vectors kept per head (the largest); ``None`` keeps all ``d_head``.
        fold_ln: fold ``ln1``'s gain into ``W_V`` and centre it (module docstring).
        center: centre ``W_O`` (module docstring).

    Returns:
        :class:`HeadSVD` with ``S [head, r]``, ``U [head, d_model, r]``, ``Vh [head, r, d_model]``.
    """
    layer = check_layer(model, layer)
    d_head = model.visual.blocks[layer].attn.d_head
    rank = d_head if rank is None else rank
    if not isinstance(rank, int) or not 1 <= rank <= d_head:
        raise ValueError(
            f"rank must be an integer in 1..{d_head} (VO has rank at most d_head = {d_head}), "
            f"got {rank!r}; use rank=None for all of them"
        )
    W_V, W_O = head_factors(model, layer, fold_ln, center)
    dtype = W_V.dtype
    # float64: the QR-based SVD of the thin factors, and the signs, are then stable to rounding
    with one_thread():
        U, S, Vh = FactoredMatrix(W_V.double(), W_O.double()).svd()
    U, S, Vh = fix_signs(U[..., :rank], S[..., :rank], Vh[..., :rank, :])
    return HeadSVD(
        S=S.to(dtype),
        U=U.to(dtype),
        Vh=Vh.to(dtype),
        layer=layer,
        fold_ln=fold_ln,
        center=center,
        model=model_identity(model),
    )


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run the block with one intra-op thread. A batched QR of small matrices is orders of
    magnitude slower with several threads on a busy CPU (measured: 1.6 s against 0.3 ms for
    ``[4, 128, 32]`` with 2 threads against 1); the matrices here are small, one thread is enough."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fix_signs(
    U: Float[Tensor, "head d r"], S: Float[Tensor, "head r"], Vh: Float[Tensor, "head r d"]
) -> tuple[Tensor, Tensor, Tensor]:
    """Flip each pair ``(u_i, v_i)`` so that the largest-magnitude entry of ``u_i`` is positive
    (the first such entry on ties)."""
    largest = U.abs().argmax(dim=-2, keepdim=True)  # [head, 1, r]
    sign = torch.gather(U, -2, largest).sign()
    sign = torch.where(sign == 0, torch.ones_like(sign), sign)
    return U * sign, S, Vh * sign.transpose(-1, -2)


def check_layer(model, layer: int) -> int:
    """``layer`` as a block index of the image tower (negative counts from the end), or a clear error."""
    n = len(model.visual.blocks)
    if isinstance(layer, bool) or not isinstance(layer, int) or not -n <= layer < n:
        raise ValueError(
            f"layer={layer!r} is out of range: the image tower has {n} blocks (0..{n - 1}, or -{n}..-1 from the end)"
        )
    return layer % n
