"""Accuracy recovered with ``K`` PCs (PCLens) or ``K`` texts (TextSpan) per head.

The protocol of the TextSpan and PCLens papers, in direct mode (LayerNorm frozen,
the network is not re-run). With ê(x) the unit image embedding and φ its decomposition rows:

* heads of the layers before the analysed ones are mean-ablated per head (``φ̄``);
* each analysed head ``h`` is replaced by its reconstruction ``X̂_h(K)``:
  PCLens ``μ_h + ((φ_h − μ_h) V_Kᵀ) Π_K V_K`` with ``K`` capped at the head's ``k_99``
  (``Π_K`` is the projector of the leading ``K×K`` block of ``P_t``, exactly what a fit capped
  at ``K`` builds), TextSpan ``c̄_h + (φ_h − c̄_h) Q_Kᵀ Q_K`` with its first ``K`` texts (in
  selection order);
* MLPs, the embedding slot and the bias keep their actual values.

So ``e'_K(x) = ê − Σ_early φ + Σ_early φ̄ − Σ_h φ_h + Σ_h X̂_h(K)`` and the prediction is
``argmax e'_K @ W_cls``. References: the full model (``ê``), the **mean-ablation baseline**
(the same with the analysed heads intact, ``K = ∞`` with ``Π = I``) and the floor
(``K = 0``: the analysed heads mean-ablated too).

Every budget comes from one decomposition of each batch: per head the
coordinates ``a_h = (φ_h − μ_h) Bᵀ`` on its basis ``B`` (PCs or TextSpan directions) and
readouts ``G_{h,K} = Π_K B_K W_cls`` give ``logits_K = (outside + Σ_h μ_h) W_cls + Σ_h a_h G_{h,K}``.
Nothing is re-run per ``K`` and no coordinates are kept between batches.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_HEADS, select
from hookedclip.data.batches import check_reiterable, iter_labelled
from hookedclip.data.stats import RunningMoments
from hookedclip.identity import model_identity
from hookedclip.methods._common import text_pool
from hookedclip.methods.pclens.fit import fit_from_moments
from hookedclip.methods.pclens.pca import projector, text_coordinates
from hookedclip.methods.pclens.recovered_result import AccuracyRecovered
from hookedclip.methods.pclens.result import PCLensResult
from hookedclip.methods.textspan import TextSpanResult, text_span_from_moments

DEFAULT_BUDGETS = (0, 1, 2, 4, 8, 16, 32)


# --------------------------------------------------------------------------------------
# Readouts: one method's bases and per-budget class read-outs
# --------------------------------------------------------------------------------------


@dataclass
class Readout:
    """One method's reconstruction of every analysed head, read out through ``W_cls``.

    Attributes:
        means: ``μ [H, d']`` per head.
        bases: ``B [H, k, d']`` orthonormal rows, zero-padded to the largest ``k``.
        per_budget: ``G [n_budgets, H, k, C]``: row ``i`` of head ``h`` at budget ``K`` is
            ``(Π_K B_K W_cls)_i`` for ``i < min(K, k_h)`` and 0 beyond.
    """

    means: Float[Tensor, "head d"]
    bases: Float[Tensor, "head k d"]
    per_budget: Float[Tensor, "budget head k c"]

    def logits(self, rows: Float[Tensor, "batch head d"]) -> Float[Tensor, "budget batch c"]:
        """``Σ_h a_h G_{h,K}`` for every budget, with ``a_h = (φ_h − μ_h) B_hᵀ``."""
        a = torch.einsum("bhd,hkd->bhk", rows - self.means, self.bases)
        return torch.einsum("bhk,nhkc->nbc", a, self.per_budget)


def _readout(means: list[Tensor], bases: list[Tensor], blocks: list[list[Tensor]], classes: int) -> Readout:
    """Stack per-head ``μ``, ``B [k_h, d]`` and per-budget read-outs ``[K_h, C]`` (zero-padded)."""
    k = max([b.shape[0] for b in bases] + [1])
    d = means[0].shape[0]
    bases_t = torch.zeros(len(bases), k, d, dtype=torch.float64)
    g = torch.zeros(len(blocks[0]) if blocks else 0, len(bases), k, classes, dtype=torch.float64)
    for h, b in enumerate(bases):
        bases_t[h, : b.shape[0]] = b
    for n, per_head in enumerate(zip(*blocks)):
        for h, block in enumerate(per_head):
            g[n, h, : block.shape[0]] = block
    return Readout(torch.stack(means), bases_t, g)


def pclens_readout(
    result: PCLensResult,
    heads: Sequence[str],
    weights: Float[Tensor, "d c"],
    budgets: Sequence[int],
    text_embeddings: Float[Tensor, "m d"] | None = None,
    center_texts: bool | None = None,
) -> Readout:
    """PCLens read-outs ``Π_K V_K W_cls`` for every budget, ``K`` capped at each head's ``k``.

    A labelled result (``Π`` from texts) needs the ``text_embeddings`` it was labelled with, to
    rebuild ``P_t`` and hence ``Π_K``; an unlabelled one (``Π = I``) does not.
    """
    w = weights.to(torch.float64).cpu()
    center = result.settings.get("center_texts", True) if center_texts is None else center_texts
    means, bases, blocks = [], [], []
    for label in heads:
        pca = result[label]
        v = pca.components.to(torch.float64).cpu()
        g = v @ w  # [k, C]
        p_t = _p_t(pca, text_embeddings, center, result.settings.get("use_projector", True))
        per = []
        for budget in budgets:
            kk = min(int(budget), pca.k)
            pi = torch.eye(kk, dtype=torch.float64) if p_t is None else projector(p_t[:kk, :kk])
            per.append(pi @ g[:kk])
        means.append(pca.mean.to(torch.float64).cpu())
        bases.append(v)
        blocks.append(per)
    return _readout(means, bases, blocks, w.shape[1])


def _p_t(pca, text_embeddings: Tensor | None, center: bool, use_projector: bool) -> Tensor | None:
    """``P_t`` (each PC's coordinates of its best positive text, the rows ``Π`` is built from) when
    ``Π`` is text-derived; ``None`` when ``Π = I``."""
    if pca.pos_idx is None or not use_projector or pca.k == 0:
        return None
    if text_embeddings is None:
        raise ValueError(
            f"{pca.label}'s projector Π comes from text labels: pass the text_embeddings it was "
            "labelled with so Π_K can be rebuilt for each budget (or fit with use_projector=False)"
        )
    a = text_coordinates(pca, text_embeddings, center).cpu()
    return a[pca.pos_idx[:, 0].cpu()]  # one row per PC: its best positive text


def textspan_readout(
    spans: Mapping[str, TextSpanResult], heads: Sequence[str], weights: Float[Tensor, "d c"], budgets: Sequence[int]
) -> Readout:
    """TextSpan read-outs ``Q_K W_cls``: the first ``K`` chosen texts' orthonormal basis."""
    w = weights.to(torch.float64).cpu()
    means, bases, blocks = [], [], []
    for label in heads:
        q = spans[label].basis.to(torch.float64).cpu()
        g = q @ w
        blocks.append([g[: min(int(budget), q.shape[0])] for budget in budgets])
        means.append(spans[label].mean.to(torch.float64).cpu())
        bases.append(q)
    return _readout(means, bases, blocks, w.shape[1])


# --------------------------------------------------------------------------------------
# Evaluation over batches of decomposed rows
# --------------------------------------------------------------------------------------

#: One batch: unit embeddings ê ``[B, d']``, the sum of the ablated heads' rows ``[B, d']``,
#: the analysed heads' rows ``[B, H, d']`` and the labels ``[B]``.
Parts = tuple[Tensor, Tensor, Tensor, Tensor]


@torch.no_grad()
def evaluate(
    parts: Iterable[Parts],
    weights: Float[Tensor, "d c"],
    ablated_mean: Float[Tensor, " d"],
    readouts: Mapping[str, Readout],
    budgets: Sequence[int],
    heads: Sequence[str],
    ablated: Sequence[str] = (),
) -> AccuracyRecovered:
    """Accuracy of every method at every budget, the baseline and the full model, from one
    pass over ``parts`` (see :data:`Parts`); ``ablated_mean = Σ_early φ̄``."""
    w = weights.to(torch.float64).cpu()
    correct = {name: torch.zeros(len(budgets), dtype=torch.long) for name in readouts}
    full = baseline = total = 0
    for unit, early, rows, labels in parts:
        unit, early, rows = (t.to(torch.float64).cpu() for t in (unit, early, rows))
        labels = torch.as_tensor(labels).cpu()
        kept = unit - early + ablated_mean.to(unit)  # the mean-ablation baseline: analysed heads intact
        full += int(((unit @ w).argmax(-1) == labels).sum())
        baseline += int(((kept @ w).argmax(-1) == labels).sum())
        for name, readout in readouts.items():
            outside = (kept - rows.sum(1) + readout.means.sum(0)) @ w  # every head at its mean
            predictions = (outside + readout.logits(rows)).argmax(-1)  # [budget, batch]
            correct[name] += (predictions == labels).sum(1)
        total += labels.shape[0]
    if total == 0:
        raise ValueError("accuracy_recovered got no data")
    curves = {name: (c.double() / total).tolist() for name, c in correct.items()}
    return AccuracyRecovered(
        [int(k) for k in budgets], curves, full / total, baseline / total, list(heads), list(ablated), total
    )


# --------------------------------------------------------------------------------------
# On a model
# --------------------------------------------------------------------------------------


def _split(model, components) -> tuple[list[str], list[str]]:
    """Analysed heads (:func:`hookedclip.components.select`, default every head) and every other
    head (mean-ablated)."""
    analysed = [str(c) for c in select(model, components, heads_only=True)]
    every = [str(c) for c in select(model, ALL_HEADS)]
    return analysed, [label for label in every if label not in set(analysed)]


@renamed_arguments(data="batches", heads="components")
@torch.no_grad()
def model_parts(model, batches, components: Sequence[str], ablated: Sequence[str]) -> Iterator[Parts]:
    """Decompose each labelled batch once: ê, the ablated heads' sum and the analysed heads'
    (``components``, labels) rows."""
    from hookedclip.decompose import decompose_image

    heads = list(components)
    for images, labels, _ in iter_labelled(batches, model):
        stack = decompose_image(model, images, components=[*ablated, *heads])
        rows = dict(zip(stack.labels, stack.tensor))
        early = sum((rows[label] for label in ablated), torch.zeros_like(stack.tensor[0]))
        yield stack.sum(), early, torch.stack([rows[label] for label in heads], 1), labels


@torch.no_grad()
def _statistics(model, batches, heads, ablated) -> tuple[dict[str, RunningMoments], Tensor]:
    """Moments of each analysed head and ``Σ_early φ̄`` (one pass)."""
    moments, early = None, None
    for _, e, rows, _ in model_parts(model, batches, heads, ablated):
        m, s = RunningMoments.of(rows), RunningMoments.of(e, covariance=False)
        moments, early = (m, s) if moments is None else (moments.merge(m), early.merge(s))
    if moments is None:
        raise ValueError("accuracy_recovered got no data")
    per_head = {label: RunningMoments(moments.n, moments.mean[i], moments.m2[i]) for i, label in enumerate(heads)}
    return per_head, early.mean


def fit_text_spans(
    moments: Mapping[str, RunningMoments],
    text_embeddings: Float[Tensor, "m d"],
    texts: Sequence[str],
    n_texts: int,
    **options,
) -> dict[str, TextSpanResult]:
    """TextSpan per head from moments, PCLens's variant by default (pool-centred texts,
    span of the centred data, rank 80)."""
    options = {"rank": 80, "center_texts": True, "span_from": "centred", **options}
    n_texts = min(n_texts, len(texts))
    return {
        label: text_span_from_moments(m.mean, m.second_moment(), m.n, text_embeddings, texts, n_texts, **options)
        for label, m in moments.items()
    }


@renamed_arguments(data="batches", heads="components")
def accuracy_recovered(
    model,
    batches,
    classifier,
    components=ALL_HEADS,
    budgets: Sequence[int] = DEFAULT_BUDGETS,
    texts: Sequence[str] | None = None,
    text_embeddings: Float[Tensor, "m d"] | None = None,
    result: PCLensResult | None = None,
    spans: Mapping[str, TextSpanResult] | None = None,
    n_label_texts: int = 5,
    textspan: bool = True,
    textspan_options: Mapping | None = None,
) -> AccuracyRecovered:
    """Accuracy recovered against ``K`` on a model, two passes over ``batches`` at most.

    Args:
        batches: re-iterable ``(images, labels[, groups])`` batches (a list or a DataLoader;
            see :mod:`hookedclip.data.batches`): the statistics (means, PCs, TextSpan) and the
            accuracies use the same images (the reference's transductive convention).
        classifier: a :class:`~hookedclip.zeroshot.ZeroShotClassifier` (``W_cls [d', C]``).
        components: analysed heads (:func:`hookedclip.components.select`; default every head,
            then nothing is mean-ablated); every other head is mean-ablated. The papers analyse
            the last four layers: ``components=LAST_4_LAYERS`` (``"L-4-"``).
        budgets: ``K`` values; PCLens uses ``min(K, k_99)`` PCs per head.
        texts: the pool for PCLens labels (hence ``Π``) and TextSpan; without it the PCLens
            curve is plain PCA (``Π = I``) and there is no TextSpan curve.
        text_embeddings: precomputed embeddings of ``texts`` (default: embedded with ``model``).
        result, spans: already fitted PCLens / TextSpan results on these heads (skip fitting).
        n_label_texts: texts per side of each PC when fitting PCLens (PCLens's ``n_texts``; only
            the best one builds ``Π``). TextSpan chooses ``max(budgets)`` texts per head.
        textspan: add the TextSpan curve (needs ``texts`` or ``spans``).
        textspan_options: overrides for :func:`fit_text_spans` (``rank``, ``center_texts``, ...).
    """
    check_reiterable(batches, "accuracy_recovered")
    analysed, ablated = _split(model, components)
    texts, text_embeddings = text_pool(model, texts, text_embeddings)
    moments, early_mean = _statistics(model, batches, analysed, ablated)
    if result is None:
        result = fit_from_moments(
            moments,
            model_identity(model),
            text_embeddings=text_embeddings,
            texts=texts,
            n_texts=min(n_label_texts, len(texts or [0])),
            max_pcs=max(budgets) or 1,
        )
    w = classifier.weights
    readouts = {"PCLens": pclens_readout(result, analysed, w, budgets, text_embeddings)}
    if textspan and spans is None and texts is not None:
        spans = fit_text_spans(moments, text_embeddings, list(texts), max(budgets), **(textspan_options or {}))
    if textspan and spans is not None:
        readouts["TextSpan"] = textspan_readout(spans, analysed, w, budgets)
    out = evaluate(model_parts(model, batches, analysed, ablated), w, early_mean, readouts, budgets, analysed, ablated)
    out.model = model_identity(model)
    return out


__all__ = [
    "AccuracyRecovered",
    "Readout",
    "Parts",
    "DEFAULT_BUDGETS",
    "pclens_readout",
    "textspan_readout",
    "evaluate",
    "model_parts",
    "fit_text_spans",
    "accuracy_recovered",
]
