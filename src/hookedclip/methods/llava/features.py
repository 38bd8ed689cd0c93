"""The features a LLaVA reads, decomposed: every patch token of the selected hidden state into
the embedding slot, every head and every MLP (raw width space: no ``ln_post``, no projection),
and the same rows pushed through LLaVA's multimodal projector.

The residual stream entering block ``l`` is exactly ``r_t = m⁰_t + Σ_{j<l} (Σ_h a^{j,h}_t +
m^j_t)``, where a head's row at query token ``t`` is ``z^{j,h}_t W_O^{j,h} + b_O^j / H``; so the
rows of :func:`decompose_features` sum to ``hidden_states[l]`` with no approximation.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from jaxtyping import Float
from torch import Tensor, nn

from hookedclip.decompose import ComponentStack, decompose_image
from hookedclip.identity import ModelIdentity
from hookedclip.results import Result


def feature_layer_of(hooked, layer: int | None = None) -> int:
    """The ``hidden_states`` index (``0..n_layers``) to decompose: ``layer`` if given, else the
    LLaVA ``vision_feature_layer`` recorded when the model was converted from a LLaVA."""
    n = hooked.cfg.vision.layers
    if layer is None:
        layer = hooked.cfg.extra.get("llava_vision_feature_layer")
        if layer is None:
            raise ValueError(
                "this model was not converted from a LLaVA (no llava_vision_feature_layer recorded): pass layer= "
                "(a hidden_states index, e.g. -2) or use llava.feature_layers(llava_model, n_layers)"
            )
    if not isinstance(layer, int):
        raise ValueError(f"LLaVA reads several hidden states ({layer}); decompose one at a time with layer=")
    if not -(n + 1) <= layer <= n:
        raise ValueError(f"layer {layer} is out of range: hidden_states has {n + 1} entries ({-(n + 1)}..{n})")
    return layer % (n + 1)


def decompose_features(
    hooked, images: Float[Tensor, "batch channel height width"], layer: int | None = None
) -> ComponentStack:
    """Every token of ``hidden_states[layer]`` split into ``embed``, every head ``L{j}H{h}`` and
    every MLP ``mlp{j}`` of the blocks before it: ``tensor [component, batch, pos, d_model]``
    (position 0 is the class token LLaVA drops under the "default" strategy); ``stack.sum()``
    is the hidden state (``bias`` is zero)."""
    index = feature_layer_of(hooked, layer)
    return decompose_image(hooked, images, positions="all", target=("resid", index))


def projector_parts(projector: nn.Module) -> tuple[nn.Linear, object, nn.Linear]:
    """LLaVA's ``multi_modal_projector``: ``linear_1``, its activation, ``linear_2``."""
    parts = tuple(getattr(projector, name, None) for name in ("linear_1", "act", "linear_2"))
    if not isinstance(parts[0], nn.Linear) or not isinstance(parts[2], nn.Linear) or parts[1] is None:
        raise ValueError(
            f"expected LLaVA's two-layer projector (linear_1, act, linear_2), got {type(projector).__name__}"
        )
    return parts  # type: ignore[return-value]


@dataclass(repr=False)
class ProjectedFeatures(Result):
    """Decomposition rows pushed through the projector.

    ``pre [component, batch, pos, d_hidden]`` are the rows after ``linear_1`` (exact: they sum,
    with ``linear_1``'s bias, to its output). ``rows [component, batch, pos, d_llm]`` are the
    rows after the activation and ``linear_2``, with the activation linearised at the actual
    pre-activation ``z`` (its tangent: ``act'(z) ⊙ pre_c``, then ``W_2``), the bias part
    ``act(z) - act'(z) ⊙ z`` and ``b_2`` kept in ``bias [batch, pos, d_llm]`` so that
    ``rows.sum(0) + bias`` is the projector's output exactly.

    ``sum_error``: how well the tangent rows explain the output's departure from the output
    for an all-zero input, ``‖Σ_c rows_c - (proj(x) - proj(0))‖ / ‖proj(x) - proj(0)‖``, mean
    over tokens (zero for a linear projector). ``row_error``: for each component, the relative
    difference between its tangent row and its exact leave-one-out effect ``proj(x) -
    proj(x - x_c)`` (median over tokens), averaged over components weighted by ``‖row‖``.
    """

    _kind = "llava_projected_features"
    _tensor_fields = ("pre", "rows", "bias")
    _json_fields = ("labels", "sum_error", "row_error")

    pre: Tensor
    rows: Tensor
    bias: Tensor
    labels: list[str]
    sum_error: float
    row_error: float
    model: ModelIdentity | None = None

    def _title(self) -> str:
        return (
            f"LLaVA features through the projector ({len(self.labels)} components): tangent sum error "
            f"{self.sum_error:.3f}, row vs leave-one-out error {self.row_error:.3f}"
        )

    def _table(self) -> tuple[list[str], list[list]]:
        norms = self.rows.norm(dim=-1).flatten(1).double().mean(1).tolist()
        return ["component", "mean_norm"], [[label, n] for label, n in zip(self.labels, norms)]


@torch.no_grad()
def through_projector(stack: ComponentStack, projector: nn.Module) -> ProjectedFeatures:
    """Push the rows of :func:`decompose_features` (only the tokens LLaVA reads: select them
    first with ``stack.tensor[:, :, 1:]`` for the "default" strategy) through LLaVA's projector.

    ``linear_1`` is linear, so its rows are exact; the activation is linearised at the actual
    pre-activation (see :class:`ProjectedFeatures` for the errors measured)."""
    linear_1, act, linear_2 = projector_parts(projector)
    x = stack.tensor.to(linear_1.weight.dtype)
    pre = x @ linear_1.weight.T  # [component, batch, pos, d_hidden]
    z = pre.sum(0) + linear_1.bias
    z_req = z.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        slope = torch.autograd.grad(act(z_req).sum(), z_req)[0]  # elementwise: act'(z)
    rows = (slope * pre) @ linear_2.weight.T
    output = projector(x.sum(0))
    bias = output - rows.sum(0)  # the tangent's offset and b_2: rows + bias is the output exactly
    departure = output - projector(torch.zeros_like(x[0]))
    sum_error = float(((rows.sum(0) - departure).norm(dim=-1) / departure.norm(dim=-1).clamp_min(1e-12)).mean())
    row_error = _leave_one_out_error(rows, pre, z, act, linear_2)
    return ProjectedFeatures(pre, rows, bias, list(stack.labels), sum_error, row_error, model=stack.model)


def _leave_one_out_error(rows: Tensor, pre: Tensor, z: Tensor, act, linear_2: nn.Linear) -> float:
    """Norm-weighted mean over components of the median relative error of the tangent row
    against the exact effect of removing the component, ``proj(x) - proj(x - x_c)``."""
    full = act(z)
    errors, weights = [], []
    for c in range(rows.shape[0]):
        exact = (full - act(z - pre[c])) @ linear_2.weight.T
        error = (rows[c] - exact).norm(dim=-1) / exact.norm(dim=-1).clamp_min(1e-12)
        errors.append(error.flatten().median())
        weights.append(rows[c].norm(dim=-1).mean())
    errors_t, weights_t = torch.stack(errors), torch.stack(weights)
    return float((errors_t * weights_t).sum() / weights_t.sum())


__all__ = ["ProjectedFeatures", "decompose_features", "feature_layer_of", "projector_parts", "through_projector"]
