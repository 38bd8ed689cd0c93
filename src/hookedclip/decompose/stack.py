"""``ComponentStack``: a decomposition's rows, one per component, with the operations on them."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.components import MLP, Component, ComponentLike, Embed, Head, parse
from hookedclip.decompose.readout import _final_ln
from hookedclip.identity import ModelIdentity, model_label, same_model
from hookedclip.results import Result


@dataclass(repr=False)
class ComponentStack(Result):
    """Per-component contributions ``tensor [component, batch, (pos,) d]`` with ``labels``.

    ``bias [d]`` is the part that belongs to no component (the projection bias, non-zero
    after ``fold_ln``); ``rows.sum(0) + bias`` is the decomposed quantity. With
    ``positions="all"`` the ``pos`` axis is where a contribution enters the readout: the
    source token for heads, the token's own position for MLP and embedding slots.
    ``model`` is the identity of the decomposed model (:func:`decompose_image` records it).
    """

    _kind = "component_stack"
    _tensor_fields = ("tensor", "bias", "scale")
    _json_fields = ("labels", "components")

    tensor: Tensor
    labels: list[str]
    bias: Tensor
    components: list[Component | None] = field(default_factory=list)
    scale: Tensor | None = None  # 1/‖e‖ per image if the rows were normalised, else None
    model: ModelIdentity | None = None

    def __len__(self) -> int:
        return len(self.labels)

    # ---- the Result protocol: one row per component
    def _title(self) -> str:
        shape = " × ".join(map(str, self.tensor.shape[1:]))
        return f"ComponentStack of {model_label(self.model)}: {len(self)} components, rows {shape}"

    def _table(self) -> tuple[list[str], list[list]]:
        norms = self.norms().flatten(1).to(torch.float64).mean(1).tolist() if len(self) else []
        return ["component", "mean_norm"], [[label, n] for label, n in zip(self.labels, norms)]

    def _repr_sizes(self) -> dict:
        return {"components": len(self), "tensor": list(self.tensor.shape), "normalised": self.scale is not None}

    def _state(self) -> tuple[dict, dict]:
        tensors, fields = super()._state()
        fields["components"] = [None if c is None else str(c) for c in self.components]
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict, fields: dict, model: ModelIdentity | None) -> ComponentStack:
        components = [None if c is None else parse(c)[0] for c in fields["components"]]
        return cls(**tensors, labels=fields["labels"], components=components, model=model)

    @classmethod
    def cat(cls, stacks: Sequence[ComponentStack], dim: str = "batch") -> ComponentStack:
        """Stacks of the same components (of one model) concatenated along the batch: the stack
        of the concatenated images. ``dim`` must be ``"batch"``."""
        if dim != "batch":
            raise ValueError(f"ComponentStack.cat concatenates along dim='batch' only, got dim={dim!r}")
        stacks = list(stacks)
        if not stacks:
            raise ValueError("ComponentStack.cat needs at least one stack")
        first = stacks[0]
        for i, other in enumerate(stacks[1:], 1):
            if other.labels != first.labels:
                raise ValueError(
                    f"stack {i} holds components {other.labels}, stack 0 holds {first.labels}: "
                    "decompose every batch into the same components"
                )
            if other.tensor.shape[2:] != first.tensor.shape[2:] or not torch.equal(other.bias, first.bias):
                raise ValueError(
                    f"stack {i} has rows {tuple(other.tensor.shape[2:])} and another bias than stack 0 "
                    f"({tuple(first.tensor.shape[2:])}): decompose with the same model and settings"
                )
            if (other.scale is None) != (first.scale is None):
                raise ValueError(
                    f"stack {i} is {'not ' * (other.scale is None)}normalised, stack 0 "
                    f"{'not ' * (first.scale is None)}: decompose with the same normalize="
                )
        recorded = [s.model for s in stacks if s.model is not None]
        if any(not same_model(recorded[0], m) for m in recorded[1:]):
            raise ValueError(
                "ComponentStack.cat got stacks of different models: "
                f"{', '.join(dict.fromkeys(str(m) for m in recorded))}"
            )
        scale = None if first.scale is None else torch.cat([s.scale for s in stacks])
        model = first.model if len(recorded) == len(stacks) else None  # unknown if any part's model is
        return cls(
            torch.cat([s.tensor for s in stacks], dim=1),
            list(first.labels),
            first.bias,
            list(first.components),
            scale,
            model=model,
        )

    def sum(self, include_bias: bool = True) -> Tensor:
        """Sum over components: ``[batch, (pos,) d]`` (``pos`` summed away as well unless kept)."""
        total = self.tensor.sum(0)
        if include_bias:
            bias = self.bias if self.scale is None else self.bias * self.scale[:, None]
            if total.ndim == 3:  # per-token rows: the bias enters once, at the first position
                total = total.clone()
                total[:, 0] += bias
            else:
                total = total + bias
        return total

    def select(self, which: ComponentLike | Sequence[ComponentLike] | Callable[[str], bool]) -> ComponentStack:
        """The rows named by labels / components, or whose label satisfies a predicate."""
        if callable(which) and not isinstance(which, (Head, MLP, Embed)):
            idx = [i for i, label in enumerate(self.labels) if which(label)]
        else:
            wanted = {str(c) for c in parse(which)}
            idx = [i for i, label in enumerate(self.labels) if label in wanted]
            missing = wanted - {self.labels[i] for i in idx}
            if missing:
                raise KeyError(f"not in this stack: {', '.join(sorted(missing))}")
        return ComponentStack(
            self.tensor[idx],
            [self.labels[i] for i in idx],
            torch.zeros_like(self.bias),
            [self.components[i] for i in idx] if self.components else [],
            self.scale,
            model=self.model,
        )

    def sum_tokens(self) -> ComponentStack:
        """Per-token rows summed over positions: the CLS-only (``positions="cls"``) stack."""
        if self.tensor.ndim != 4:
            return self
        return ComponentStack(self.tensor.sum(2), self.labels, self.bias, self.components, self.scale, model=self.model)

    def norms(self) -> Float[Tensor, "component batch *pos"]:
        return self.tensor.norm(dim=-1)

    def to_joint(self, model, tower: str = "visual") -> ComponentStack:
        """Width-space rows (``target=("resid", l)``) mapped into the joint space through the
        linear part of the final LayerNorm and the projection, ``row @ diag(γ) P``: the
        direction each contribution writes, without LayerNorm's per-image centring and scale."""
        t = getattr(model, tower)
        if t.W_proj is None:
            raise ValueError(f"the {tower} tower has no projection into a joint space")
        if self.tensor.shape[-1] != t.W_proj.shape[0]:
            raise ValueError(
                f"rows are {self.tensor.shape[-1]}-dimensional; to_joint maps d_model = {t.W_proj.shape[0]} rows"
            )
        G = _final_ln(t).w[:, None] * t.W_proj
        return ComponentStack(
            self.tensor @ G.to(self.tensor),
            self.labels,
            self.bias.new_zeros(G.shape[1]),
            self.components,
            self.scale,
            model=self.model,
        )

    def layer_totals(self) -> ComponentStack:
        """Heads of each layer summed into one ``attn{l}`` row (MLP and embed rows kept)."""
        rows, labels, comps = [], [], []
        for i, (label, comp) in enumerate(zip(self.labels, self.components)):
            if isinstance(comp, Head):
                key = f"attn{comp.layer}"
                if labels and labels[-1] == key:
                    rows[-1] = rows[-1] + self.tensor[i]
                    continue
                labels.append(key)
                comps.append(None)
            else:
                labels.append(label)
                comps.append(comp)
            rows.append(self.tensor[i])
        return ComponentStack(torch.stack(rows), labels, self.bias, comps, self.scale, model=self.model)
