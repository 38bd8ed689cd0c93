"""One head's principal components: :class:`HeadPCA` and the text labels of a PC (:class:`PCLabel`).

A :class:`HeadPCA` holds what PCLens keeps of one head ``(l, h)`` (or of the final unit
embedding): the mean ``μ``, the retained PCs ``V_k``, their singular values ``S_k``, the text
projector ``Π`` and, once labelled, the texts at both ends of every PC. It reconstructs the
head's contributions as ``μ + [((x − μ) V_kᵀ) ⊙ w] Π V_k``. How one is computed lives in
:mod:`hookedclip.methods.pclens.pca`.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, field
from pathlib import Path

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.axis_size import axis_size
from hookedclip.identity import ModelIdentity, model_label
from hookedclip.methods.pclens.confidence import label_text
from hookedclip.plotting import finish_figure, new_figure
from hookedclip.results import Result


@dataclass
class PCLabel:
    """The texts of one PC: ``positive`` (largest ``A[:, i]`` first) and ``negative``
    (smallest first), each a list of ``(text, coefficient)``; coefficients are cosines
    between the (centred, unit) texts and the PC."""

    positive: list[tuple[str, float]]
    negative: list[tuple[str, float]]

    @property
    def positive_first(self) -> bool:
        """Whether the positive side is shown first: the side with the larger |coefficient|
        leads, as in the reference implementation; ties list the positive side first."""
        if not self.positive or not self.negative:
            return True
        return abs(self.positive[0][1]) >= abs(self.negative[0][1])

    def sides(self, n: int | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
        """``[(sign, texts), (sign, texts)]`` in display order: the stronger side first."""
        pos, neg = ("+", self.positive[:n]), ("−", self.negative[:n])
        return [pos, neg] if self.positive_first else [neg, pos]

    def cells(
        self,
        n: int | None = None,
        coefficients: bool = True,
        threshold: float | None = None,
        known_words: Collection[str] | None = None,
    ) -> tuple[str, str]:
        """The two sides as table cells in display order, e.g. ``"− striped (−0.41); ..."``; with
        ``threshold`` (and optionally ``known_words``), weak labels are marked
        (:func:`~hookedclip.methods.pclens.confidence.label_text`)."""

        def text(t: str, c: float) -> str:
            if threshold is not None:
                return label_text(t, c, threshold, known_words)
            return f"{t} ({c:+.2f})" if coefficients else t

        def cell(sign: str, items: list[tuple[str, float]]) -> str:
            texts = "; ".join(text(t, c) for t, c in items)
            return f"{sign} {texts}" if items else ""

        first, second = self.sides(n)
        return cell(*first), cell(*second)

    def short(self, n: int = 2) -> str:
        """``"+[a, b] −[c, d]"`` with the stronger side first."""
        return " ".join(f"{sign}[{', '.join(t for t, _ in items)}]" for sign, items in self.sides(n))


@dataclass(repr=False)
class HeadPCA(Result):
    """The retained principal components of one head (or of the final embedding).

    Attributes:
        label: ``"L3H1"``, or ``"embedding"`` for the final unit embedding.
        mean: ``μ [d']``.
        components: ``V_k [k, d']``, orthonormal rows ordered by singular value.
        singular_values: ``S_k [k]`` of the centred data matrix (``S_i² = N λ_i``).
        projector: ``Π [k, k]``, symmetric idempotent: the projector onto the span of the PCs'
            best texts (``I`` when unlabelled; see :func:`hookedclip.methods.pclens.projector`).
        n: the number of rows ``N`` behind the statistics.
        total_singular: ``ΣS`` over **all** singular values (what the 99% rule divides by).
        pos_idx, pos_coef: ``[k, n_t]`` pool indices and coefficients of the positive texts.
        neg_idx, neg_coef: ``[k, n_t]`` the same for the negative side (most negative first).
        texts: the text pool the indices point into (shared with the result).
        model: the identity of the model the statistics came from (a result's heads share its own).
    """

    _kind = "headpca"
    _tensor_fields = (
        "mean",
        "components",
        "singular_values",
        "projector",
        "pos_idx",
        "pos_coef",
        "neg_idx",
        "neg_coef",
    )
    _json_fields = ("label", "n", "total_singular", "texts")
    _HEADER = ("pc", "singular_value", "strength_rel", "texts (stronger side)", "texts (other side)")

    label: str
    mean: Float[Tensor, " d"]
    components: Float[Tensor, "k d"]
    singular_values: Float[Tensor, " k"]
    projector: Float[Tensor, "k k"]
    n: int
    total_singular: float
    pos_idx: Int[Tensor, "k t"] | None = None
    pos_coef: Float[Tensor, "k t"] | None = None
    neg_idx: Int[Tensor, "k t"] | None = None
    neg_coef: Float[Tensor, "k t"] | None = None
    texts: list[str] | None = field(default=None, repr=False)
    model: ModelIdentity | None = None

    k = axis_size("components", 0, "How many PCs are kept.")

    # ---- the Result protocol
    def _title(self) -> str:
        return f"{self.label} of {model_label(self.model)}: {self.k} PCs from {self.n} rows"

    def _table(self) -> tuple[list[str], list[list]]:
        header = list(self._HEADER)
        labelled = self.pos_idx is not None and self.texts is not None
        rows = []
        for i, (s, rel) in enumerate(zip(self.singular_values.tolist(), self.strength_rel.tolist())):
            first, second = self.label_of(i, 2).cells() if labelled else ("", "")
            rows.append([i, s, rel, first, second])
        return header, rows

    def _repr_sizes(self) -> dict:
        return {
            "label": repr(self.label),
            "k": self.k,
            "d": self.mean.shape[-1],
            "n": self.n,
            "labelled": self.pos_idx is not None,
        }

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Relative strength ``100 S_i² / Σ_j S_j²`` of each retained PC (a ``Figure``; written to
        ``path`` when given)."""
        fig, ax = new_figure(5.0, 3.2)
        ax.bar(range(self.k), self.strength_rel.tolist(), color="#4C72B0")
        ax.set_xlabel("PC")
        ax.set_ylabel("share of retained variance (%)")
        ax.set_title(title or f"{self.label} ({model_label(self.model)})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        return finish_figure(fig, path)

    @property
    def strength_abs(self) -> Float[Tensor, " k"]:
        """``S_i²`` (``N ×`` the variance along the PC)."""
        return self.singular_values**2

    @property
    def strength_rel(self) -> Float[Tensor, " k"]:
        """``100 S_i² / Σ_{j≤k} S_j²``: percent of the **retained** variance."""
        s2 = self.strength_abs
        total = s2.sum()
        return 100 * s2 / total if float(total) > 0 else torch.zeros_like(s2)

    @property
    def variance(self) -> Float[Tensor, " k"]:
        """``λ_i = S_i² / N``, the biased variance along each PC."""
        return self.strength_abs / max(self.n, 1)

    def coordinates(self, x: Float[Tensor, "... d"]) -> Float[Tensor, "... k"]:
        """``(x − μ) V_kᵀ``: the PC coordinates of contributions ``x``."""
        v = self.components.to(x)
        return (x - self.mean.to(x)) @ v.T

    def reconstruct(
        self, x: Float[Tensor, "... d"], weights: Float[Tensor, " k"] | None = None, mean_share: float = 1.0
    ) -> Float[Tensor, "... d"]:
        """``φ' = μ' + [((x − μ') V_kᵀ) ⊙ w] Π V_k`` with ``μ' = mean_share · μ``: the head's
        contribution rebuilt from weighted PC coordinates (what every PCLens intervention applies).

        ``weights=None`` keeps every retained PC (the fit's reconstruction ``X̂``); ``w_i = 0``
        removes PC ``i``, ``1`` keeps, ``λ`` amplifies, ``−1`` inverts. ``mean_share = 1/T``
        spreads the mean over ``T`` tokens for per-token contributions (spatial variant).
        """
        mu = self.mean.to(x) * mean_share
        a = (x - mu) @ self.components.to(x).T
        if weights is not None:
            a = a * weights.to(x)
        return mu + (a @ self.projector.to(x)) @ self.components.to(x)

    def label_of(self, i: int, n: int | None = None) -> PCLabel:
        """The positive and negative texts of PC ``i`` (the first ``n`` of each side)."""
        if self.pos_idx is None or self.texts is None:
            raise ValueError(f"{self.label} has no text labels: fit with texts or call result.label_with(...)")
        self._check_pc(i)
        n = self.pos_idx.shape[1] if n is None else n
        pos = [(self.texts[int(j)], float(c)) for j, c in zip(self.pos_idx[i, :n], self.pos_coef[i, :n])]
        neg = [(self.texts[int(j)], float(c)) for j, c in zip(self.neg_idx[i, :n], self.neg_coef[i, :n])]
        return PCLabel(pos, neg)

    def _check_pc(self, i: int) -> None:
        if not 0 <= i < self.k:
            raise IndexError(f"{self.label} has {self.k} retained PCs (0..{self.k - 1}); there is no PC {i}")

    def flip(self, i: int) -> HeadPCA:
        """A copy with ``v_i ← −v_i``: positive and negative texts swap, coefficients negate.
        ``Π`` is rebuilt by the caller only if it was text-derived (see
        :func:`hookedclip.methods.pclens.label_pcs`)."""
        sign = torch.ones(self.k, dtype=self.components.dtype, device=self.components.device)
        sign[i] = -1
        out = HeadPCA(
            self.label,
            self.mean,
            self.components * sign[:, None],
            self.singular_values,
            sign[:, None] * self.projector * sign[None, :],
            self.n,
            self.total_singular,
            texts=self.texts,
            model=self.model,
        )
        if self.pos_idx is not None:
            pi, pc, ni, nc = (t.clone() for t in (self.pos_idx, self.pos_coef, self.neg_idx, self.neg_coef))
            pi[i], ni[i] = self.neg_idx[i], self.pos_idx[i]
            pc[i], nc[i] = -self.neg_coef[i], -self.pos_coef[i]
            out.pos_idx, out.pos_coef, out.neg_idx, out.neg_coef = pi, pc, ni, nc
        return out


def format_strength(percent: float) -> str:
    """A PC strength (% of retained variance) with 3 significant digits, ``"<0.1"`` below 0.1
    and never ``"0.0"``: ``95.7``, ``4.12``, ``0.153``, ``<0.1``."""
    if percent < 0.1:
        return "<0.1"
    if percent >= 100:
        return f"{percent:.0f}"
    return f"{percent:.3g}"


__all__ = ["PCLabel", "HeadPCA", "format_strength"]
