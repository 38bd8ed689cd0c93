"""PCA of one head, its text labels and its images: the steps PCLens runs on every analysed head.

For a head with direct contributions ``X ∈ R^{N×d'}`` (rows ``φ_{l,h}(x)``, the normalised CLS
contributions of :func:`hookedclip.decompose.decompose_image`), PCLens (the reference
implementation's ``svd_data_approx``) computes:

1. the mean ``μ`` and the centred data ``X_c = X − μ`` (no whitening);
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

The same routine (no cap) runs on the final unit embeddings ("the embedding").
Steps 1-4 run on a data matrix (:func:`pca_from_data`) or on first and second moments
(:func:`pca_from_moments`: ``eigh`` of the scatter ``M2 = X_cᵀ X_c`` gives ``S²`` directly,
so N images never sit in memory).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal, TypedDict

import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import Unpack

from hookedclip._options import completed
from hookedclip.data.stats import RunningMoments
from hookedclip.methods.pclens.head import HeadPCA

Energy = Literal["singular", "variance"]
Sign = Literal["canonical", "raw"]

#: Eigenvalues of the scatter below this multiple of ``d · eps · λ_max`` are zero (round-off).
_EIG_RTOL = 10.0


# --------------------------------------------------------------------------------------
# PCA: rank rule, from data, from moments
# --------------------------------------------------------------------------------------


def choose_rank(
    singular_values: Float[Tensor, " r"], threshold: float = 0.99, max_pcs: int | None = 80, energy: Energy = "singular"
) -> int:
    """The smallest ``k`` with ``cumsum(e)_k / Σe ≥ threshold``, clipped to ``[1, max_pcs]``;
    ``e = S`` (``"singular"``, the reference implementation's rule) or ``S²`` (``"variance"``, the
    textbook share of variance). ``0`` when every singular value is zero (a constant head has no PC)."""
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


def _finish(
    label: str,
    mean: Tensor,
    vh: Tensor,
    s: Tensor,
    n: int,
    threshold: float,
    max_pcs: int | None,
    energy: Energy,
    sign: Sign,
) -> HeadPCA:
    if sign not in ("canonical", "raw"):
        raise ValueError(f"sign must be 'canonical' or 'raw', got {sign!r}")
    k = choose_rank(s, threshold, max_pcs, energy)
    v = vh[:k]
    if sign == "canonical":
        v = _canonical_signs(v)
    eye = torch.eye(k, dtype=v.dtype, device=v.device)
    return HeadPCA(label, mean, v.contiguous(), s[:k].clone(), eye, n, float(s.sum()))


def pca_from_data(
    x: Float[Tensor, "n d"],
    label: str = "head",
    threshold: float = 0.99,
    max_pcs: int | None = 80,
    energy: Energy = "singular",
    sign: Sign = "canonical",
) -> HeadPCA:
    """PCA of one head's contributions ``X [N, d']`` by the thin SVD of ``X − μ`` (steps 1-4 of
    the module docstring), in float64. ``Π = I`` until texts are attached with :func:`label_pcs`."""
    if x.ndim != 2:
        raise ValueError(f"{label}: contributions must be [n, d'], got shape {tuple(x.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"{label}: PCA needs at least 2 rows, got {x.shape[0]}")
    x = x.to(torch.float64)
    mean = x.mean(0)
    _, s, vh = torch.linalg.svd(x - mean, full_matrices=False)
    return _finish(label, mean, vh, s, x.shape[0], threshold, max_pcs, energy, sign)


class RankOptions(TypedDict, total=False):
    """How many PCs a head keeps and how they are signed: :func:`pca_from_data`'s options (and
    defaults), shared by :func:`pca_from_moments`."""

    threshold: float
    max_pcs: int | None
    energy: Energy
    sign: Sign


def pca_from_moments(moments: RunningMoments, label: str = "head", **options: Unpack[RankOptions]) -> HeadPCA:
    """PCA from streaming statistics of one head (``mean [d']``, scatter ``M2 [d', d']``):
    since ``M2 = X_cᵀ X_c``, ``eigh(M2)`` gives ``S²`` and ``V`` of the centred data matrix.
    Eigenvalues below ``10 · d' · eps · λ_max`` are round-off and count as zero. ``options``:
    those of :func:`pca_from_data`."""
    options = completed(pca_from_data, RankOptions, options, "pca_from_moments")
    if moments.m2 is None:
        raise ValueError(f"{label}: the moments were accumulated without covariance")
    if moments.mean.ndim != 1:
        raise ValueError(
            f"{label}: expected the moments of one head (mean [d']), got mean of shape {tuple(moments.mean.shape)}"
        )
    if moments.n < 2:
        raise ValueError(f"{label}: PCA needs at least 2 rows, got {moments.n}")
    m2 = moments.m2.to(torch.float64)
    evals, evecs = torch.linalg.eigh(0.5 * (m2 + m2.T))
    evals, evecs = evals.flip(0), evecs.flip(1)  # descending
    tol = _EIG_RTOL * m2.shape[0] * torch.finfo(torch.float64).eps * float(evals[0].clamp_min(0))
    s = torch.where(evals > tol, evals, torch.zeros_like(evals)).sqrt()
    return _finish(label, moments.mean.to(torch.float64), evecs.T, s, moments.n, **options)


# --------------------------------------------------------------------------------------
# Text labels and the projector Π
# --------------------------------------------------------------------------------------


def text_coordinates(
    pca: HeadPCA, text_embeddings: Float[Tensor, "m d"], center_texts: bool = True
) -> Float[Tensor, "m k"]:
    """``A = R̃ V_kᵀ``: cosines between the texts and the PCs (step 5 of the module docstring).
    ``R̃`` is the pool centred by its mean (``center_texts``, as the reference does today; False:
    its earlier version), then each row L2-normalised."""
    d = pca.mean.shape[0]
    if text_embeddings.ndim != 2 or text_embeddings.shape[1] != d:
        raise ValueError(
            f"text embeddings have shape {tuple(text_embeddings.shape)} but {pca.label}'s PCs live in "
            f"d'={d}: embed the vocabulary with the same model ([m, {d}])"
        )
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


class LabelOptions(TypedDict, total=False):
    """How PCs are labelled: :func:`label_pcs`'s options (and defaults), shared by
    :meth:`PCLensResult.label_with <hookedclip.methods.pclens.PCLensResult.label_with>`."""

    n_texts: int
    center_texts: bool
    use_projector: bool


def label_pcs(
    pca: HeadPCA,
    text_embeddings: Float[Tensor, "m d"],
    texts: Sequence[str],
    n_texts: int = 5,
    center_texts: bool = True,
    use_projector: bool = True,
) -> HeadPCA:
    """Attach text labels to ``pca`` in place and build ``Π`` from each PC's best text (steps 5
    and 6 of the module docstring). ``use_projector=False`` keeps ``Π = I`` (plain PCA
    reconstruction)."""
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
# Images per PC
# --------------------------------------------------------------------------------------


def image_scores(pca: HeadPCA, embeddings: Float[Tensor, "n d"]) -> Float[Tensor, "n k"]:
    """``⟨ê(x), v_i⟩`` for unit final embeddings ``ê`` (not the head's contribution, not
    centred: the reference scores images like texts)."""
    e = torch.nn.functional.normalize(embeddings.to(torch.float64), dim=-1)
    return e @ pca.components.to(e).T


def top_images(
    pca: HeadPCA, i: int, embeddings: Float[Tensor, "n d"], n: int = 20
) -> tuple[Int[Tensor, " n_top"], Int[Tensor, " n_top"]]:
    """Indices of the ``n`` highest- and ``n`` lowest-scoring images for PC ``i`` (best first)."""
    pca._check_pc(i)
    scores = image_scores(pca, embeddings)[:, i]
    n = min(n, scores.shape[0])
    return scores.topk(n).indices, (-scores).topk(n).indices


def head_scores(pca: HeadPCA, contributions: Float[Tensor, "n d"]) -> Float[Tensor, "n k"]:
    """``(φ_h(x) − μ) v_i``: each image's coordinate along the PCs in the head's own (centred)
    contribution ``φ_h`` (rows of the normalised CLS decomposition, as PCLens was fitted on).
    The second ranking of a PC's images, beside :func:`image_scores`' full-embedding score: where
    the two disagree, the PC's share of the head and its share of the whole embedding differ."""
    return pca.coordinates(contributions.to(torch.float64))


def extremes(scores: Float[Tensor, " n"], n: int) -> tuple[Int[Tensor, " n_top"], Int[Tensor, " n_top"]]:
    """Indices of the ``n`` highest and ``n`` lowest ``scores`` (best first)."""
    n = min(n, scores.shape[0])
    return scores.topk(n).indices, (-scores).topk(n).indices


__all__ = [
    "Energy",
    "Sign",
    "choose_rank",
    "pca_from_data",
    "pca_from_moments",
    "RankOptions",
    "LabelOptions",
    "text_coordinates",
    "projector",
    "label_pcs",
    "image_scores",
    "top_images",
    "head_scores",
    "extremes",
]
