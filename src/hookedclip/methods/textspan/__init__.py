"""TextSpan (Gandelsman, Efros, Steinhardt, ICLR 2024): a greedy text basis for one head.

Given one component's direct contributions ``C ∈ R^{N×d'}`` (rows ``c_n``, mean ``c̄``) and
a pool of ``M`` text embeddings ``R ∈ R^{M×d'}``, TextSpan picks ``m`` texts whose span
explains as much of the variance ``V(T) = (1/N) Σ_n ‖Proj_T(c_n − c̄)‖²`` as a greedy
search can. The code is pure tensor code: the caller supplies the contributions (or their
first two moments) and the text embeddings.

The reference procedure (``replace_with_iterative_removal`` in the authors' code), reproduced exactly:

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

:func:`text_span` runs this on the data matrix; :func:`text_span_from_moments` runs the same
selection on ``c̄`` and the uncentred second moment ``E[x xᵀ]`` only (the data enter the loop
only through their scatter), which costs ``O(M d'²)`` per step instead of ``O(N M d')`` and
never needs the activations (accumulate them with :class:`hookedclip.data.stats.RunningMoments`).

Differences from the literal reference, all confined to degenerate inputs:

* an already-chosen text is never chosen again (the reference relies on its residual being
  exactly zero, which floating point does not guarantee);
* a text whose residual norm has fallen below ``1e-10 ×`` the largest initial text norm is
  treated as spent (``r·r ≈ 0``; the reference would divide by ~0). If no usable text is
  left, the loop stops early with a warning and returns fewer than ``n_texts`` texts — e.g.
  when ``n_texts`` exceeds ``rank`` or ``d'``.

The public API, gathered from the submodules, which import each other in one direction:
``result`` (:class:`TextSpanResult`) and ``greedy`` (the greedy loop on a data or moment
state) <- ``fit`` (one component, from data or moments) <- ``heads`` (every head of a model
or a store).
"""

from hookedclip.methods.textspan.fit import text_span, text_span_from_moments
from hookedclip.methods.textspan.greedy import ZERO_NORM_RTOL, Criterion, SpanFrom
from hookedclip.methods.textspan.heads import head_moments, text_span_from_store, text_span_heads
from hookedclip.methods.textspan.result import TextSpanResult

__all__ = [
    "Criterion",
    "SpanFrom",
    "ZERO_NORM_RTOL",
    "TextSpanResult",
    "text_span",
    "text_span_from_moments",
    "head_moments",
    "text_span_heads",
    "text_span_from_store",
]
