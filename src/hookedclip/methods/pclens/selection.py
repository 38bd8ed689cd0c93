"""PCSelection: intervening on chosen principal components of the analysed heads.

For every analysed head ``(l, h)`` with retained basis ``V_k``, mean ``μ`` and projector
``Π``, a selection gives per-PC weights ``w ∈ R^k`` and the head's contribution becomes

    φ'_{l,h}(x) = μ + [((φ_{l,h}(x) − μ) V_kᵀ) ⊙ w] Π V_k.

``w_i = 0`` removes PC ``i``, ``1`` keeps it, ``λ`` amplifies, ``−1`` inverts. ``keep`` is the
indicator of the selected PCs (a head with no selected PC becomes its mean: it is
mean-ablated), ``remove`` its complement inside each head's retained basis (so "remove
nothing" still drops the tail beyond ``k``).

This is the reference's **intended** formula. Its loop
(``reconstruct_all_embeddings_mean_ablation_pcs``) projects the activation of the wrong head
and drops the means unless every analysed head has a selected PC; the two agree exactly in
that case (tested).

The contexts (:func:`keep`, :func:`remove`, :func:`reweight`, :func:`amplify`) are CLS-only
direct-mode edits of the intervention engine (:func:`hookedclip.ablation.intervene`, see
``docs/engine.md``): they rewrite the image embedding's direct path from the decomposition of
the CLS readout (LayerNorm statistics frozen, the TextSpan/PCLens accuracy protocol; they take
no ``mode`` argument): ``e' = ‖e‖ (ê + Σ_h (φ'_h − φ_h))``. The per-head formula is the
engine's ``replace``; ``mean_ablate_all`` and :func:`amplify`'s norm mixing act on the whole
unit embedding and are its ``finalize``. So they nest with every other engine context
(ablations in either mode, other PCLens contexts), with ``model.hooks`` and caches, by the
engine's one rule: every row normalised by the ``‖e‖`` before any direct rewrite, and
disjoint edits giving the same embedding in either nesting order.

The spatial variant (per-token rows, the mean spread as ``μ/T``) has no context of its own:
its tokens sum to the CLS-only result, so it would leave the embedding exactly as the
contexts do. It matters only where per-token rows are used, and is available as
:func:`apply_to_stack` on a ``positions="all"`` decomposition and as :func:`row_transform` for
segmentation heat maps.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.ablation import Finalize, intervene
from hookedclip.decompose import ComponentStack

if TYPE_CHECKING:
    from hookedclip.methods.pclens.result import PCLensResult

#: One principal component: ``(head label, index)``.
PCRef = tuple[str, int]
#: How callers may name one: a :data:`PCRef` or a string ``"L3H1.PC2"`` / ``"L3H1:2"``.
PCName = PCRef | str
_PC_STRING = re.compile(r"^(L-?\d+H\d+)[.:/](?:PC)?(\d+)$", re.IGNORECASE)


# --------------------------------------------------------------------------------------
# Selections
# --------------------------------------------------------------------------------------


def _parse_pc(item: PCName) -> PCRef:
    if isinstance(item, str):
        m = _PC_STRING.match(item.strip())
        if not m:
            raise ValueError(f"cannot parse PC {item!r}; write ('L3H1', 2), 'L3H1.PC2' or 'L3H1:2'")
        return m.group(1).upper(), int(m.group(2))
    label, i = item
    return str(label), int(i)


@dataclass
class PCSelection:
    """Per-PC weights ``w [k]`` for the heads a context rewrites (``label -> weights``).

    Heads absent from ``weights`` are left untouched (their actual contribution); :meth:`keep`
    and :meth:`remove` selections cover every analysed head.
    """

    weights: dict[str, Float[Tensor, " k"]]

    @classmethod
    @renamed_arguments(heads="components")
    def indicator(
        cls,
        result: PCLensResult,
        pcs: Iterable[PCName],
        value: float = 1.0,
        default: float = 0.0,
        components: Iterable[str] | None = None,
    ) -> PCSelection:
        """Weight ``value`` on the listed PCs and ``default`` elsewhere, for the analysed heads
        ``components`` (labels; default: every analysed head; ``heads=`` is the deprecated name).
        PCs are ``(label, i)`` pairs or strings ``"L3H1.PC2"`` / ``"L3H1:2"``; unknown heads or PC
        indices beyond a head's ``k`` raise."""
        labels = list(result.heads) if components is None else [str(c) for c in components]
        for label in labels:
            result[label]  # KeyError naming the analysed heads
        w = {label: torch.full((result[label].k,), float(default), dtype=torch.float64) for label in labels}
        for item in pcs:
            label, i = _parse_pc(item)
            pca = result[label]
            pca._check_pc(i)
            if label not in w:
                w[label] = torch.full((pca.k,), float(default), dtype=torch.float64)
            w[label][i] = value
        return cls(w)

    @classmethod
    def from_weights(cls, result: PCLensResult, weights: Mapping[str, Tensor | Iterable[float]]) -> PCSelection:
        """Explicit weights per head; each must have the head's ``k`` entries."""
        out = {}
        for label, w in weights.items():
            pca = result[label]
            w = torch.as_tensor(w, dtype=torch.float64).flatten()
            if w.shape[0] != pca.k:
                raise ValueError(f"{label} has {pca.k} retained PCs but {w.shape[0]} weights were given")
            out[label] = w
        return cls(out)

    def selected(self) -> list[PCRef]:
        """The PCs with non-zero weight."""
        return [(label, int(i)) for label, w in self.weights.items() for i in torch.nonzero(w).flatten()]

    def complement(self) -> PCSelection:
        """Weight 1 where this selection has 0 and 0 elsewhere (the "remove" selection)."""
        return PCSelection({label: (w == 0).to(torch.float64) for label, w in self.weights.items()})

    def heads_used(self) -> list[str]:
        return [label for label, w in self.weights.items() if bool((w != 0).any())]


def as_selection(result: PCLensResult, selection) -> PCSelection:
    """Any selection a context accepts as a :class:`PCSelection` checked against ``result``
    (raises before any work): every head is analysed and every weight vector has the head's
    ``k`` entries, whatever built it (a :class:`QueryResult` or a selection of another result
    names PCs by index).

    ``selection``: a :class:`PCSelection`, a ``QueryResult``, a mapping ``label -> [k]`` weights,
    or PCs (``[("L3H1", 2), "L3H1.PC0", ...]``, weight 1 on each, 0 elsewhere)."""
    if isinstance(selection, PCSelection):
        sel = selection
    elif hasattr(selection, "selection") and hasattr(selection, "pcs"):  # a QueryResult
        sel = PCSelection.indicator(result, selection.pcs, components=[])  # checks each (head, index) here
    elif isinstance(selection, Mapping):
        sel = PCSelection.from_weights(result, selection)
    else:
        sel = PCSelection.indicator(result, selection)
    _check_against(result, sel)
    return sel


def _check_against(result: PCLensResult, sel: PCSelection) -> None:
    """Raise before any work if ``sel`` names a head or a PC that ``result`` does not have."""
    for label, w in sel.weights.items():
        k = result[label].k  # KeyError naming the analysed heads
        if w.ndim != 1 or w.shape[0] != k:
            beyond = [int(i) for i in torch.nonzero(w.flatten()).flatten() if int(i) >= k]
            named = (
                f"names PC {', '.join(map(str, beyond))} of {label}"
                if beyond
                else f"has {w.numel()} weights for {label}"
            )
            raise ValueError(
                f"the selection {named}, but {label} has k={k} retained PCs (0..{k - 1}) in this "
                "PCLens result: was it built from another result? Rebuild it from this one"
            )


def _full(result: PCLensResult, selection: PCSelection, fill: float = 0.0) -> PCSelection:
    """``selection`` extended to every analysed head (missing heads get weight ``fill``)."""
    w = {
        label: selection.weights.get(label, torch.full((pca.k,), fill, dtype=torch.float64))
        for label, pca in result.heads.items()
    }
    return PCSelection(w)


# --------------------------------------------------------------------------------------
# The closed form on contributions (no model)
# --------------------------------------------------------------------------------------


def _apply_rows(
    rows: Tensor,
    labels: Sequence[str],
    result: PCLensResult,
    sel: PCSelection,
    empty_heads: Literal["mean", "zero"],
) -> Tensor:
    """The per-head formula ``μ + ((φ − μ)V_kᵀ ⊙ w) Π V_k`` on rows ``[component, batch, (T,) d']``
    labelled ``labels`` (per token: ``μ/T`` for ``μ``); rows of heads outside the selection are
    copied unchanged."""
    tensor = rows.clone()
    share = 1.0 / tensor.shape[2] if tensor.ndim == 4 else 1.0
    for i, label in enumerate(labels):
        w = sel.weights.get(label)
        if w is None:
            continue
        if empty_heads == "zero" and tensor.ndim == 4 and not bool((w != 0).any()):
            tensor[i] = 0
            continue
        tensor[i] = result[label].reconstruct(tensor[i].to(torch.float64), w, mean_share=share).to(tensor.dtype)
    return tensor


def apply_to_stack(
    stack: ComponentStack,
    result: PCLensResult,
    selection,
    empty_heads: Literal["mean", "zero"] = "mean",
) -> ComponentStack:
    """The per-head selection formula on a decomposition (``decompose_image(..., normalize=True)``).

    ``positions="cls"`` rows ``[component, batch, d']`` become ``μ + ((φ − μ)V_kᵀ ⊙ w) Π V_k``.
    Per-token rows ``[component, batch, T, d']`` (the spatial variant) become
    ``μ/T + ((φ_t − μ/T)V_kᵀ ⊙ w) Π V_k``: the mean is spread evenly over the ``T`` source
    tokens, so the tokens still sum to the CLS-only result. A head whose weights are all zero
    is then ``μ/T`` per token (intended); ``empty_heads="zero"`` gives 0, as the reference
    implementation does. Rows of heads not in the selection are copied unchanged.
    """
    if stack.scale is None:
        raise ValueError("PCLens PCs are fitted on normalised contributions: decompose with normalize=True")
    if empty_heads not in ("mean", "zero"):
        raise ValueError(f"empty_heads must be 'mean' or 'zero', got {empty_heads!r}")
    sel = as_selection(result, selection)
    missing = [label for label in sel.weights if label not in stack.labels]
    if missing:
        raise KeyError(f"the stack has no rows for {', '.join(missing)}; decompose with components={list(sel.weights)}")
    tensor = _apply_rows(stack.tensor, stack.labels, result, sel, empty_heads)
    return ComponentStack(tensor, list(stack.labels), stack.bias, list(stack.components), stack.scale)


def row_transform(result: PCLensResult, selection, empty_heads: Literal["mean", "zero"] = "mean"):
    """A selection as ``transform(rows, labels) -> rows`` for
    :func:`hookedclip.methods.segmentation.heatmaps`: per-token rows of the analysed heads
    go through the per-token formula of :func:`apply_to_stack`, others pass unchanged. With
    a :class:`QueryResult` for a concept, the heat map shows only that concept's PCs."""
    sel = as_selection(result, selection)
    return lambda rows, labels: _apply_rows(rows, labels, result, sel, empty_heads)


def _unit_mean_rest(result: PCLensResult) -> Float[Tensor, " d"]:
    """``mean ê − Σ_h μ_h``: the dataset mean of everything outside the analysed heads."""
    if result.image_mean is None:
        raise ValueError("mean_ablate_all needs the mean image embedding: fit the result with embedding statistics")
    return result.image_mean.to(torch.float64) - sum(p.mean.to(torch.float64) for p in result.heads.values())


def selection_embeddings(
    stack: ComponentStack, result: PCLensResult, selection, mean_ablate_all: bool = True
) -> Float[Tensor, "batch d"]:
    """Unit-scale embeddings ``e'(x)`` of a CLS stack under a selection (the embedding PCLens
    searches neighbours in "per concept").

    ``mean_ablate_all``: everything outside the selected PC terms is its dataset mean, so
    ``e' = (mean ê − Σ_h μ_h) + Σ_h φ'_h``; otherwise the other rows keep their actual values.
    """
    if stack.tensor.ndim != 3:
        raise ValueError("selection_embeddings takes a positions='cls' stack: decompose with positions='cls'")
    sel = as_selection(result, selection)
    new = apply_to_stack(stack, result, _full(result, sel) if mean_ablate_all else sel)
    if not mean_ablate_all:
        return new.sum().to(torch.float64)
    idx = [stack.labels.index(label) for label in result.heads]
    return _unit_mean_rest(result).to(new.tensor.device) + new.tensor[idx].to(torch.float64).sum(0)


def nearest_neighbours(
    query: Float[Tensor, " d"], candidates: Float[Tensor, "n d"], k: int = 15, score: Literal["dot", "cos"] = "dot"
) -> tuple[Int[Tensor, " k"], Float[Tensor, " k"]]:
    """The ``k`` candidates with the highest ``⟨c, q⟩`` (``"dot"``, TextSpan's per-head search) or
    cosine (``"cos"``), best first: ``(indices, scores)``, the nearest-neighbour image search of
    TextSpan and PCLens. In-memory shorthand for :func:`hookedclip.search.nearest` (``"score"`` /
    ``"score_vis"``); candidates are a head's contributions or :func:`selection_embeddings` (see
    also :func:`hookedclip.methods.neighbours.selection_space`)."""
    from hookedclip.search import nearest

    if candidates.ndim != 2 or query.shape[-1] != candidates.shape[1]:
        raise ValueError(f"query {tuple(query.shape)} and candidates {tuple(candidates.shape)} must share d'")
    names = {"dot": "score", "cos": "score_vis"}
    if score not in names:
        raise ValueError(f"score must be 'dot' or 'cos', got {score!r}")
    found = nearest(query.to(candidates.device, torch.float64), [candidates.to(torch.float64)], k, names[score])
    return found.indices, found.values


# --------------------------------------------------------------------------------------
# Contexts on a model: direct-mode edits of the intervention engine (hookedclip.ablation)
# --------------------------------------------------------------------------------------


def _context(model, result: PCLensResult, sel: PCSelection, mean_ablate_all: bool, combine: Finalize | None = None):
    """An engine context (``ablation.intervene``, direct mode) that rewrites the heads in ``sel``.

    Its ``replace`` is the per-head formula ``μ + ((φ − μ)V_kᵀ ⊙ w) Π V_k``; its ``finalize``,
    when there is one, acts on the whole unit embedding: ``mean_ablate_all`` makes it
    ``(mean ê − Σ_h μ_h) + Σ_h φ'_h``, then ``combine(unit, rows, new_rows)`` (amplify) may
    replace it.
    """
    result.check_model(model)
    if mean_ablate_all:
        sel = _full(result, sel)
        mean_rest = _unit_mean_rest(result)  # raises before any work when the result has no image mean
    weights = dict(sel.weights)

    def replace(row: Tensor, head) -> Tensor:
        return result[str(head)].reconstruct(row, weights[str(head)])

    def finalize(unit: Tensor, rows: dict[str, Tensor], new_rows: dict[str, Tensor]) -> Tensor:
        if mean_ablate_all:
            unit = mean_rest.to(unit) + sum(new_rows.values())
        return unit if combine is None else combine(unit, rows, new_rows)

    needs_finalize = mean_ablate_all or combine is not None
    return intervene(model, list(weights), replace, mode="direct", finalize=finalize if needs_finalize else None)


def reweight(model, result: PCLensResult, weights, mean_ablate_all: bool = False):
    """Context: every head in ``weights`` (a :class:`PCSelection` or ``label -> [k]``) becomes
    ``μ + ((φ − μ)V_kᵀ ⊙ w) Π V_k`` in the embedding's direct path; other heads untouched
    (mean-ablated with ``mean_ablate_all``, which also replaces every non-analysed component by
    its dataset mean)."""
    return _context(model, result, as_selection(result, weights), mean_ablate_all)


def keep(model, result: PCLensResult, selection, mean_ablate_all: bool = False):
    """Context: keep only the selected PCs of every analysed head; a head with no selected PC
    is mean-ablated (the intended semantics of the paper's "keep")."""
    sel = _full(result, _indicator_of(result, selection))
    return _context(model, result, sel, mean_ablate_all)


def remove(model, result: PCLensResult, selection, mean_ablate_all: bool = False):
    """Context: drop the selected PCs from every analysed head, keeping the rest of its retained
    basis (the tail beyond ``k`` is dropped too, so removing nothing ≠ the original)."""
    sel = _full(result, _indicator_of(result, selection)).complement()
    return _context(model, result, sel, mean_ablate_all)


def _indicator_of(result: PCLensResult, selection) -> PCSelection:
    sel = as_selection(result, selection)
    return PCSelection({label: (w != 0).to(torch.float64) for label, w in sel.weights.items()})


def amplify(model, result: PCLensResult, selection, ratio: float, mean_ablate_all: bool = False):
    """Context: the reference implementation's ``ratio`` mode. With ``R_S = Σ_sel ⟨φ, v_i⟩ v_i``
    (uncentred projections of the heads' rows, before any replacement, on the selected PCs) and
    ``B`` the keep-mode embedding minus ``R_S``, ``e' = ρ n̄ R_S/‖R_S‖ + (1 − ρ) n̄ B/‖B‖`` with
    ``n̄ = ‖mean ê‖``. Not a per-PC gain; for that use :func:`reweight` with ``w_i = λ``."""
    if not 0 <= ratio <= 1:
        raise ValueError(f"ratio must be in [0, 1], got {ratio}")
    if result.image_mean is None:
        raise ValueError("amplify needs the mean image embedding: fit the result with embedding statistics")
    sel = _full(result, _indicator_of(result, selection))
    n_bar = float(result.image_mean.norm())

    def combine(new: Tensor, rows: dict, new_rows: dict) -> Tensor:
        r_s = torch.zeros_like(new)
        for label, w in sel.weights.items():
            v = result[label].components.to(new)[w != 0]
            r_s = r_s + (rows[label] @ v.T) @ v
        b = new - r_s
        unit = lambda t: t / t.norm(dim=-1, keepdim=True).clamp_min(1e-30)  # noqa: E731
        return ratio * n_bar * unit(r_s) + (1 - ratio) * n_bar * unit(b)

    return _context(model, result, sel, mean_ablate_all, combine)


__all__ = [
    "PCSelection",
    "as_selection",
    "apply_to_stack",
    "row_transform",
    "selection_embeddings",
    "nearest_neighbours",
    "reweight",
    "keep",
    "remove",
    "amplify",
]
