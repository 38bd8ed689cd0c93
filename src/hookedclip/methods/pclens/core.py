"""PCLens: per-head principal components of CLIP's image embedding, labelled with text.

For each analysed head ``(l, h)`` with direct contributions ``X ∈ R^{N×d'}`` (rows ``φ_{l,h}(x)``,
the normalised CLS contributions of :func:`hookedclip.decompose.decompose_image`), PCLens
(the reference implementation's ``svd_data_approx``) computes:

1. the mean ``μ_h`` and the centred data ``X_c = X − μ_h`` (no whitening);
2. the thin SVD ``X_c = U S Vᵀ``; the rows ``v_i`` of ``Vᵀ`` are the PCs;
3. the rank ``k = 1 + #{i : cumsum(S)_i / ΣS < 0.99}``, capped at ``max_pcs`` (the
   99% is of the **singular values**, not of the variance; ``energy="variance"`` uses ``S²``);
4. strengths ``S_i²`` (absolute) and ``100 S_i² / Σ_{j≤k} S_j²`` (relative to the kept PCs);
5. text coordinates ``A = R̃ V_kᵀ`` of the (pool-centred, re-normalised) texts ``R̃``; the
   ``n_texts`` largest and smallest entries of each column label the PC;
6. the projector ``Π = P_tᵀ (P_t P_tᵀ)⁺ P_t`` onto the row space of
   ``P_t = A[(top⁺_1, …, top⁺_k), :]``, so that a head is reconstructed as
   ``X̂ = μ + (X_c V_kᵀ) Π V_k``. ``Π = I`` only when the PCs' best texts are independent;
   it is stored and always applied (``Π = I`` exactly when no texts were given).

The same routine (no cap) runs on the final unit embeddings ("the embedding", the
reference's layer = head = −1 record).

Everything is fitted from first and second moments (:class:`hookedclip.data.stats.RunningMoments`)
or from a data matrix: ``eigh`` of the scatter ``M2 = X_cᵀ X_c`` gives ``S² `` directly, so
N images never sit in memory. Interventions on chosen PCs live in
:mod:`hookedclip.methods.pclens.selection` and ranking PCs for a concept in
:mod:`hookedclip.methods.pclens.query`; both build on this module, and the package
(:mod:`hookedclip.methods.pclens`) gathers the public names of all of them.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_HEADS, select
from hookedclip.data.stats import RunningMoments
from hookedclip.identity import ModelIdentity, model_identity
from hookedclip.methods._common import (head_moments, store_embedding_moments, store_heads, store_moments,
                                        text_pool)
from hookedclip.results import Result, finish_figure, new_figure

Energy = Literal["singular", "variance"]
Sign = Literal["canonical", "raw"]

#: Eigenvalues of the scatter below this multiple of ``d · eps · λ_max`` are zero (round-off).
_EIG_RTOL = 10.0

#: v2: the model is recorded by :func:`hookedclip.identity.model_identity` (v1 used another fingerprint).
FORMAT_VERSION = 2


# --------------------------------------------------------------------------------------
# One head
# --------------------------------------------------------------------------------------


@dataclass
class PCLabel:
    """The texts of one PC: ``positive`` (largest ``A[:, i]`` first) and ``negative``
    (smallest first), each a list of ``(text, coefficient)``; coefficients are cosines
    between the (centred, unit) texts and the PC."""

    positive: list[tuple[str, float]]
    negative: list[tuple[str, float]]

    @property
    def positive_first(self) -> bool:
        """The reference lists the side with the larger |coefficient| first (§4.2 step 7);
        ties list the positive side first."""
        if not self.positive or not self.negative:
            return True
        return abs(self.positive[0][1]) >= abs(self.negative[0][1])

    def sides(self, n: int | None = None) -> list[tuple[str, list[tuple[str, float]]]]:
        """``[(sign, texts), (sign, texts)]`` in display order: the stronger side first."""
        pos, neg = ("+", self.positive[:n]), ("−", self.negative[:n])
        return [pos, neg] if self.positive_first else [neg, pos]

    def cells(self, n: int | None = None, coefficients: bool = True) -> tuple[str, str]:
        """The two sides as table cells in display order, e.g. ``"− striped (−0.41); ..."``."""
        def cell(sign: str, items: list[tuple[str, float]]) -> str:
            texts = "; ".join(f"{t} ({c:+.2f})" if coefficients else t for t, c in items)
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
        projector: ``Π [k, k]``, symmetric idempotent (see the module docstring).
        n: the number of rows ``N`` behind the statistics.
        total_singular: ``ΣS`` over **all** singular values (what the 99% rule divides by).
        pos_idx, pos_coef: ``[k, n_t]`` pool indices and coefficients of the positive texts.
        neg_idx, neg_coef: ``[k, n_t]`` the same for the negative side (most negative first).
        texts: the text pool the indices point into (shared with the result).
        model: the identity of the model the statistics came from (a result's heads share its own).
    """

    _kind = "headpca"
    _tensor_fields = ("mean", "components", "singular_values", "projector", "pos_idx", "pos_coef", "neg_idx",
                      "neg_coef")
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

    @property
    def k(self) -> int:
        return self.components.shape[0]

    # ---- the Result protocol
    def _title(self) -> str:
        return f"{self.label} of {self.model or 'no recorded model'}: {self.k} PCs from {self.n} rows"

    def _table(self) -> tuple[list[str], list[list]]:
        header = list(self._HEADER)
        labelled = self.pos_idx is not None and self.texts is not None
        rows = []
        for i, (s, rel) in enumerate(zip(self.singular_values.tolist(), self.strength_rel.tolist())):
            first, second = self.label_of(i, 2).cells() if labelled else ("", "")
            rows.append([i, s, rel, first, second])
        return header, rows

    def _repr_sizes(self) -> dict:
        return {"label": repr(self.label), "k": self.k, "d": self.mean.shape[-1], "n": self.n,
                "labelled": self.pos_idx is not None}

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Relative strength ``100 S_i² / Σ_j S_j²`` of each retained PC (a ``Figure``; written to
        ``path`` when given)."""
        fig, ax = new_figure(5.0, 3.2)
        ax.bar(range(self.k), self.strength_rel.tolist(), color="#4C72B0")
        ax.set_xlabel("PC")
        ax.set_ylabel("share of retained variance (%)")
        ax.set_title(title or f"{self.label} ({self.model or 'no recorded model'})", fontsize=10)
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

    def reconstruct(self, x: Float[Tensor, "... d"], weights: Float[Tensor, " k"] | None = None,
                    mean_share: float = 1.0) -> Float[Tensor, "... d"]:
        """``φ' = μ' + [((x − μ') V_kᵀ) ⊙ w] Π V_k`` with ``μ' = mean_share · μ`` (§4.6).

        ``weights=None`` keeps every retained PC (the §4.2 reconstruction ``X̂``); ``w_i = 0``
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

    def flip(self, i: int) -> "HeadPCA":
        """A copy with ``v_i ← −v_i``: positive and negative texts swap, coefficients negate.
        ``Π`` is rebuilt by the caller only if it was text-derived (see :func:`label_pcs`)."""
        sign = torch.ones(self.k, dtype=self.components.dtype, device=self.components.device)
        sign[i] = -1
        out = HeadPCA(self.label, self.mean, self.components * sign[:, None], self.singular_values,
                      sign[:, None] * self.projector * sign[None, :], self.n, self.total_singular, texts=self.texts,
                      model=self.model)
        if self.pos_idx is not None:
            pi, pc, ni, nc = (t.clone() for t in (self.pos_idx, self.pos_coef, self.neg_idx, self.neg_coef))
            pi[i], ni[i] = self.neg_idx[i], self.pos_idx[i]
            pc[i], nc[i] = -self.neg_coef[i], -self.pos_coef[i]
            out.pos_idx, out.pos_coef, out.neg_idx, out.neg_coef = pi, pc, ni, nc
        return out


# --------------------------------------------------------------------------------------
# PCA: rank rule, from data, from moments
# --------------------------------------------------------------------------------------


def choose_rank(singular_values: Float[Tensor, " r"], threshold: float = 0.99, max_pcs: int | None = 80,
                energy: Energy = "singular") -> int:
    """The smallest ``k`` with ``cumsum(e)_k / Σe ≥ threshold``, clipped to ``[1, max_pcs]``;
    ``e = S`` (``"singular"``, reference, Appendix A row 3) or ``S²`` (``"variance"``).
    ``0`` when every singular value is zero (a constant head has no PC)."""
    if energy not in ("singular", "variance"):
        raise ValueError(f"energy must be 'singular' or 'variance', got {energy!r}")
    if not 0 < threshold <= 1:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    e = singular_values.to(torch.float64)
    e = e if energy == "singular" else e**2
    total = float(e.sum())
    if total <= 0:
        return 0
    # k = 1 + #{i : cumsum_i / Σ < threshold} (the reference's form of the same rule)
    k = 1 + int((e.cumsum(0) / total < threshold).sum())
    k = min(k, int((e > 0).sum()))
    return k if max_pcs is None else max(1, min(k, max_pcs))


def _canonical_signs(v: Tensor) -> Tensor:
    """Flip each row so its largest-|entry| is positive (``svd_flip``): backend-independent."""
    idx = v.abs().argmax(dim=1)
    signs = torch.sign(v.gather(1, idx[:, None]))
    return v * torch.where(signs == 0, torch.ones_like(signs), signs)


def _finish(label: str, mean: Tensor, vh: Tensor, s: Tensor, n: int, threshold: float, max_pcs: int | None,
            energy: Energy, sign: Sign) -> HeadPCA:
    if sign not in ("canonical", "raw"):
        raise ValueError(f"sign must be 'canonical' or 'raw', got {sign!r}")
    k = choose_rank(s, threshold, max_pcs, energy)
    v = vh[:k]
    if sign == "canonical":
        v = _canonical_signs(v)
    eye = torch.eye(k, dtype=v.dtype, device=v.device)
    return HeadPCA(label, mean, v.contiguous(), s[:k].clone(), eye, n, float(s.sum()))


def pca_from_data(x: Float[Tensor, "n d"], label: str = "head", threshold: float = 0.99,
                  max_pcs: int | None = 80, energy: Energy = "singular", sign: Sign = "canonical") -> HeadPCA:
    """PCA of one head's contributions ``X [N, d']`` by the thin SVD of ``X − μ`` (§4.2 steps 1–5),
    in float64. ``Π = I`` until texts are attached with :func:`label_pcs`."""
    if x.ndim != 2:
        raise ValueError(f"{label}: contributions must be [n, d'], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{label}: PCA needs at least 2 rows, got {x.shape[0]}")
    x = x.to(torch.float64)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return _finish(label, mean, vh, s, x.shape[0], threshold, max_pcs, energy, sign)


def pca_from_moments(moments: RunningMoments, label: str = "head", threshold: float = 0.99,
                     max_pcs: int | None = 80, energy: Energy = "singular", sign: Sign = "canonical") -> HeadPCA:
    """PCA from streaming statistics of one head (``mean [d']``, scatter ``M2 [d', d']``):
    ``eigh(M2)`` gives ``S² `` and ``V`` of the centred data matrix (§7.2 item 5). Eigenvalues
    below ``10 · d' · eps · λ_max`` are round-off and count as zero."""
    if moments.m2 is None:
        raise ValueError(f"{label}: the moments were accumulated without covariance")
    if moments.mean.ndim != 1:
        raise ValueError(f"{label}: expected the moments of one head (mean [d']), got mean of shape "
                         f"{tuple(moments.mean.shape)}")
    if moments.n < 2:
        raise ValueError(f"{label}: PCA needs at least 2 rows, got {moments.n}")
    m2 = moments.m2.to(torch.float64)
    evals, evecs = torch.linalg.eigh(0.5 * (m2 + m2.T))
    evals, evecs = evals.flip(0), evecs.flip(1)  # descending
    tol = _EIG_RTOL * m2.shape[0] * torch.finfo(torch.float64).eps * float(evals[0].clamp_min(0))
    s = torch.where(evals > tol, evals, torch.zeros_like(evals)).sqrt()
    return _finish(label, moments.mean.to(torch.float64), evecs.T, s, moments.n, threshold, max_pcs, energy, sign)


# --------------------------------------------------------------------------------------
# Text labels and the projector Π
# --------------------------------------------------------------------------------------


def text_coordinates(pca: HeadPCA, text_embeddings: Float[Tensor, "m d"], center_texts: bool = True
                     ) -> Float[Tensor, "m k"]:
    """``A = R̃ V_kᵀ``: cosines between the texts and the PCs (§4.2 step 6). ``R̃`` is the pool
    centred by its mean (``center_texts``, the reference HEAD; False = thesis era), then each
    row L2-normalised."""
    d = pca.mean.shape[0]
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != d:
        raise ValueError(f"text embeddings have shape {tuple(text_embeddings.shape)} but {pca.label}'s PCs live in "
                         f"d'={d}: embed the vocabulary with the same model ([m, {d}])")
    r = text_embeddings.to(torch.float64).to(pca.components.device)
    if center_texts:
        r = r - r.mean(0, keepdim=True)
    r = torch.nn.functional.normalize(r, dim=1)
    return r @ pca.components.T


def projector(p_t: Float[Tensor, "k k"]) -> Float[Tensor, "k k"]:
    """``Π = P_tᵀ (P_t P_tᵀ)⁺ P_t``: the orthogonal projector onto the row space of ``P_t``,
    built from its SVD (``W_r W_rᵀ``, rank at ``pinv``'s tolerance ``max(shape) · eps · σ_1``) so
    it is exactly symmetric and idempotent."""
    if p_t.numel() == 0:
        return p_t.new_zeros(p_t.shape[1], p_t.shape[1])
    _, sv, wh = torch.linalg.svd(p_t, full_matrices=False)
    tol = max(p_t.shape) * torch.finfo(p_t.dtype).eps * float(sv[0])
    w = wh[sv > tol]
    return w.T @ w


def label_pcs(pca: HeadPCA, text_embeddings: Float[Tensor, "m d"], texts: Sequence[str], n_texts: int = 5,
              center_texts: bool = True, use_projector: bool = True) -> HeadPCA:
    """Attach text labels to ``pca`` in place and build ``Π`` from each PC's best text (§4.2
    steps 6–8). ``use_projector=False`` keeps ``Π = I`` (plain PCA reconstruction)."""
    if len(texts) != text_embeddings.shape[0]:
        raise ValueError(f"{len(texts)} texts for {text_embeddings.shape[0]} text embeddings; need one per row")
    if not 1 <= n_texts <= len(texts):
        raise ValueError(f"n_texts must be in 1..{len(texts)} (the pool size), got {n_texts}")
    a = text_coordinates(pca, text_embeddings, center_texts)  # [m, k]
    pos = a.topk(n_texts, dim=0)  # largest first
    neg = (-a).topk(n_texts, dim=0)  # most negative first
    pca.pos_idx, pca.pos_coef = pos.indices.T.contiguous(), pos.values.T.contiguous()
    pca.neg_idx, pca.neg_coef = neg.indices.T.contiguous(), (-neg.values).T.contiguous()
    pca.texts = list(texts)
    if use_projector and pca.k:
        pca.projector = projector(a[pca.pos_idx[:, 0]])  # P_t: one row per PC, its best text
    else:
        pca.projector = torch.eye(pca.k, dtype=pca.components.dtype, device=pca.components.device)
    return pca


# --------------------------------------------------------------------------------------
# The result for all analysed heads
# --------------------------------------------------------------------------------------


@dataclass(repr=False)
class PCLensResult(Result):
    """PCA of every analysed head (and optionally of the final embedding), with labels.

    Attributes:
        heads: ``label -> HeadPCA`` for the analysed heads, in model order.
        embedding: the same analysis of the final unit embeddings ``ê`` (no PC cap), or None.
        model: :func:`model_identity` of the model the statistics came from.
        texts: the label vocabulary, or None.
        text_mean: ``μ_text [d']``, the mean of the pool's unit embeddings (centres text queries).
        image_mean: ``μ_images [d']``, the mean unit image embedding (centres image queries and
            gives the constant of ``mean_ablate_all``).
        settings: how it was fitted (threshold, energy, max_pcs, sign, n_texts, center_texts).
    """

    _kind = "pclens"
    _version = FORMAT_VERSION

    heads: dict[str, HeadPCA]
    model: ModelIdentity | None
    embedding: HeadPCA | None = None
    texts: list[str] | None = None
    text_mean: Float[Tensor, " d"] | None = None
    image_mean: Float[Tensor, " d"] | None = None
    settings: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.model = ModelIdentity.of(self.model)
        for pca in self._all():
            pca.model = pca.model or self.model

    # ---- access
    def __getitem__(self, label: str) -> HeadPCA:
        if label not in self.heads:
            known = ", ".join(self.heads) or "none"
            raise KeyError(f"{label!r} is not an analysed head of this PCLens result (analysed: {known})")
        return self.heads[label]

    def __iter__(self):
        return iter(self.heads.values())

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def n_pcs(self) -> int:
        return sum(h.k for h in self.heads.values())

    def pcs(self) -> list[tuple[str, int]]:
        """Every retained PC as ``(head label, index)``, heads in order."""
        return [(label, i) for label, h in self.heads.items() for i in range(h.k)]

    def label_with(self, text_embeddings: Float[Tensor, "m d"], texts: Sequence[str], n_texts: int = 5,
                   center_texts: bool = True, use_projector: bool = True) -> "PCLensResult":
        """(Re)label every head and the embedding against a vocabulary; rebuilds each ``Π``."""
        texts = list(texts)
        for pca in self._all():
            label_pcs(pca, text_embeddings, texts, n_texts, center_texts, use_projector)
        self.texts = texts
        self.text_mean = text_embeddings.to(torch.float64).mean(0).to(self._device())
        self.settings.update(n_texts=n_texts, center_texts=center_texts, use_projector=use_projector)
        return self

    def _all(self) -> list[HeadPCA]:
        return list(self.heads.values()) + ([self.embedding] if self.embedding is not None else [])

    def _device(self) -> torch.device:
        return next(iter(self._all())).mean.device

    # ---- the Result protocol
    def summary(self) -> str:
        """One line per head: k, the share of ΣS kept, and PC 0's labels when present."""
        lines = [f"PCLens on {self.model or 'no recorded model'}: {len(self)} heads, {self.n_pcs} PCs"]
        for pca in self._all():
            kept = float(pca.singular_values.sum()) / pca.total_singular if pca.total_singular > 0 else 0.0
            first = f"  PC0 {pca.label_of(0, 2).short()}" if pca.pos_idx is not None and pca.k else ""
            lines.append(f"  {pca.label:<10} k={pca.k:<3} ΣS kept {100 * kept:5.1f}%{first}")
        return "\n".join(lines)

    def _table(self) -> tuple[list[str], list[list]]:
        """One row per retained PC of every head, then of the embedding."""
        rows = [[pca.label, *row] for pca in self._all() for row in pca._table()[1]]
        return ["head", *HeadPCA._HEADER], rows

    def _repr_sizes(self) -> dict:
        return {"heads": len(self), "pcs": self.n_pcs, "d": self._all()[0].mean.shape[-1] if self._all() else 0,
                "texts": len(self.texts) if self.texts is not None else None,
                "embedding": self.embedding is not None}

    def plot(self, path: str | Path | None = None, title: str | None = None):
        """Relative strength of each head's PCs against the PC index, one line per head (a
        ``Figure``; written to ``path`` when given)."""
        fig, ax = new_figure(6.0, 3.6)
        for pca in self.heads.values():
            ax.plot(range(pca.k), pca.strength_rel.tolist(), marker="o", markersize=2.5, linewidth=1.2,
                    label=pca.label)
        ax.set_xlabel("PC")
        ax.set_ylabel("share of the head's retained variance (%)")
        ax.set_title(title or f"PCLens ({self.model or 'no recorded model'})", fontsize=10)
        ax.grid(alpha=0.3)
        if len(self) <= 16:
            ax.legend(fontsize=7, ncol=2)
        return finish_figure(fig, path)

    # ---- persistence: one record per head in the JSON, tensors named "{label}.{name}"
    def _state(self) -> tuple[dict[str, Tensor | None], dict]:
        tensors: dict[str, Tensor | None] = {"text_mean": self.text_mean, "image_mean": self.image_mean}
        records = []
        for pca in self._all():
            records.append({"label": pca.label, "n": pca.n, "total_singular": pca.total_singular,
                            "labelled": pca.pos_idx is not None})
            tensors.update({f"{pca.label}.{name}": getattr(pca, name) for name in HeadPCA._tensor_fields})
        fields = {"settings": self.settings, "texts": self.texts, "heads": records,
                  "has_embedding": self.embedding is not None}
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict[str, Tensor | None], fields: dict, model: ModelIdentity | None
                    ) -> PCLensResult:
        texts = fields["texts"]
        pcas = [_head_from(record, tensors, texts) for record in fields["heads"]]
        embedding = pcas.pop() if fields["has_embedding"] else None
        return cls({p.label: p for p in pcas}, model, embedding, texts, tensors.get("text_mean"),
                   tensors.get("image_mean"), fields["settings"])

    @classmethod
    def _upgrade_hint(cls) -> str:
        return "v1 files recorded the model by a fingerprint this version no longer computes"

    def save(self, path: str | Path) -> Path:
        """Write ``pclens.safetensors`` (tensors) and ``pclens.json`` (everything else) in ``path``."""
        return super().save(path)

    @classmethod
    def load(cls, path: str | Path, model=None, device: str | torch.device = "cpu") -> PCLensResult:
        """Read a result written by :meth:`save`; with ``model``, refuse
        (:class:`~hookedclip.identity.ModelMismatch`) a model other than the one it was fitted on."""
        return super().load(path, model, device)


def _head_from(record: dict, tensors: dict[str, Tensor | None], texts: list[str] | None) -> HeadPCA:
    label = record["label"]
    get = lambda name: tensors.get(f"{label}.{name}")  # noqa: E731
    return HeadPCA(label, get("mean"), get("components"), get("singular_values"), get("projector"), record["n"],
                   record["total_singular"], get("pos_idx"), get("pos_coef"), get("neg_idx"), get("neg_coef"),
                   texts)


# --------------------------------------------------------------------------------------
# Fitting
# --------------------------------------------------------------------------------------


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
    """
    if not moments:
        raise ValueError("no heads to analyse")
    if (text_embeddings is None) != (texts is None):
        raise ValueError("give both text_embeddings and texts, or neither")
    opts = dict(threshold=threshold, energy=energy, sign=sign)
    heads = {label: pca_from_moments(m, label, max_pcs=max_pcs, **opts) for label, m in moments.items()}
    embedding = None if embedding_moments is None else pca_from_moments(embedding_moments, "embedding",
                                                                        max_pcs=None, **opts)
    settings = dict(max_pcs=max_pcs, **opts)
    image_mean = None if embedding_moments is None else embedding_moments.mean.to(torch.float64)
    result = PCLensResult(heads, model_id, embedding, image_mean=image_mean, settings=settings)
    if texts is not None:
        result.label_with(text_embeddings, texts, n_texts, center_texts, use_projector)
    return result


def fit_from_contributions(
    contributions: Mapping[str, Float[Tensor, "n d"]],
    model_id: dict | None,
    embeddings: Float[Tensor, "n d"] | None = None,
    **kwargs,
) -> PCLensResult:
    """:func:`fit_from_moments` on in-memory contributions (``label -> [N, d']``) and optionally
    the unit image embeddings ``[N, d']``; same keyword arguments."""
    moments = {label: RunningMoments.of(x) for label, x in contributions.items()}
    emb = None if embeddings is None else RunningMoments.of(embeddings)
    return fit_from_moments(moments, model_id, emb, **kwargs)


@renamed_arguments(last_layers=("components", lambda n: f"L-{n}-"))
def analysed_heads(model, components=ALL_HEADS) -> list[str]:
    """Deprecated: ``[str(c) for c in components.select(model, components, heads_only=True)]``."""
    warnings.warn("pclens.analysed_heads is deprecated; use hookedclip.components.select(model, components, "
                  "heads_only=True)", DeprecationWarning, stacklevel=2)
    return [str(c) for c in select(model, components, heads_only=True)]


@renamed_arguments(heads="components")
def stream_moments(model, batches, components=ALL_HEADS) -> tuple[dict[str, RunningMoments], RunningMoments]:
    """Deprecated: use :func:`hookedclip.methods.head_moments` (the same)."""
    warnings.warn("pclens.stream_moments is deprecated; use hookedclip.methods.head_moments",
                  DeprecationWarning, stacklevel=2)
    return head_moments(model, batches, components)


@renamed_arguments(data="batches")
def fit(
    model,
    batches,
    components=ALL_HEADS,
    texts: Sequence[str] | None = None,
    text_embeddings: Float[Tensor, "m d"] | None = None,
    n_texts: int = 5,
    max_pcs: int | None = 80,
    threshold: float = 0.99,
    energy: Energy = "singular",
    center_texts: bool = True,
    sign: Sign = "canonical",
    use_projector: bool = True,
    text_batch_size: int = 256,
) -> PCLensResult:
    """PCLens on a model: one streaming pass over ``batches`` of preprocessed images, then the
    per-head PCA, the embedding's PCA and (with ``texts``) the labels and projectors.

    Args:
        batches: image tensors ``[B, C, H, W]`` or ``(images, labels[, groups])`` tuples (labels
            unused; see :mod:`hookedclip.data.batches`).
        components: heads to analyse, parsed by :func:`hookedclip.components.select`; default
            every head (``"heads"``). The paper analyses the last four layers:
            ``components=LAST_4_LAYERS`` (``"L-4-"``).
        texts: the label vocabulary; embedded with ``model`` unless ``text_embeddings`` are given.
        n_texts: texts per side of each PC (``n_t``; 5 in the reference script). Not TextSpan's
            ``n_texts`` (20), which is the size of a head's text basis.
        max_pcs: the ``k`` cap per head (``--max_text``, 80).
        threshold, energy: the rank rule (99% of ``ΣS``).
        center_texts: centre the pool before the cosines (reference HEAD).
        sign: ``"canonical"`` (deterministic) or ``"raw"`` (whatever ``eigh`` returns).
        use_projector: build ``Π`` from the texts (reference) or keep ``Π = I``.
    """
    heads = [str(c) for c in select(model, components, heads_only=True)]
    texts, text_embeddings = text_pool(model, texts, text_embeddings, text_batch_size)
    moments, emb = head_moments(model, batches, heads)
    return fit_from_moments(moments, model_identity(model), emb, text_embeddings, texts, n_texts, max_pcs, threshold,
                            energy, center_texts, sign, use_projector)


# --------------------------------------------------------------------------------------
# Images per PC (§4.3)
# --------------------------------------------------------------------------------------


def image_scores(pca: HeadPCA, embeddings: Float[Tensor, "n d"]) -> Float[Tensor, "n k"]:
    """``⟨ê(x), v_i⟩`` for unit final embeddings ``ê`` (not the head's contribution, not
    centred: the reference scores images like texts, §4.3)."""
    e = torch.nn.functional.normalize(embeddings.to(torch.float64), dim=-1)
    return e @ pca.components.to(e).T


def top_images(pca: HeadPCA, i: int, embeddings: Float[Tensor, "n d"], n: int = 20
               ) -> tuple[Int[Tensor, " n_top"], Int[Tensor, " n_top"]]:
    """Indices of the ``n`` highest- and ``n`` lowest-scoring images for PC ``i`` (best first)."""
    pca._check_pc(i)
    scores = image_scores(pca, embeddings)[:, i]
    n = min(n, scores.shape[0])
    return scores.topk(n).indices, (-scores).topk(n).indices


__all__ = [
    "PCLabel", "HeadPCA", "PCLensResult", "choose_rank", "pca_from_data", "pca_from_moments", "text_coordinates",
    "projector", "label_pcs", "model_identity", "fit_from_moments", "fit_from_contributions", "analysed_heads",
    "stream_moments", "fit", "image_scores", "top_images",
]


# --------------------------------------------------------------------------------------
# From an ActivationStore (streaming moments; the rows never sit in memory together)
# --------------------------------------------------------------------------------------


def store_identity(store) -> ModelIdentity:
    """Deprecated: the store records the model's identity itself, ``store.model``."""
    import warnings

    warnings.warn("store_identity(store) is deprecated; use store.model", DeprecationWarning, stacklevel=2)
    return store.model


@renamed_arguments(heads="components")
def fit_from_store(store, components=ALL_HEADS, target: str = "heads", embedding: str | None = "embedding",
                   model=None, texts: Sequence[str] | None = None, text_embeddings: Float[Tensor, "m d"] | None = None,
                   **kwargs) -> PCLensResult:
    """PCLens from an :class:`~hookedclip.data.store.ActivationStore` written by ``extract`` (or
    ``hookedclip cache``) with a decomposition ``target`` (``heads``) and, optionally, the raw
    ``embedding``. ``components``: the heads to analyse (default every head the store holds;
    :func:`hookedclip.methods.store_heads`). Per-head moments come from the store (see
    :func:`hookedclip.methods.store_moments`); equals :func:`fit` on the same images. ``texts``
    are embedded with ``model`` unless ``text_embeddings`` are given; other keyword arguments
    as in :func:`fit_from_moments`. A ``model`` other than the store's is refused
    (:class:`~hookedclip.data.store.StoreMismatch`)."""
    texts, text_embeddings = text_pool(model, texts, text_embeddings)
    store.check(model=model, targets=[target], text_embeddings=text_embeddings)
    labels = store_heads(store, target, components, model)
    moments = store_moments(store, labels, target)
    emb = store_embedding_moments(store, embedding) if embedding and embedding in store.targets else None
    identity = model_identity(model) if model is not None else store.model
    return fit_from_moments(moments, identity, emb, text_embeddings, texts, **kwargs)


__all__ += ["store_heads", "store_moments", "store_embedding_moments", "store_identity", "fit_from_store"]
