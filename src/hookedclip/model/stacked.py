"""TransformerLens's model-level weight views: every block's weights stacked along a layer axis,
the factored OV / QK circuits, head labels and accumulated biases.

The views are fresh tensors (``torch.stack``), never the parameters themselves: editing one
does not change the model. Edit ``model.visual.blocks[l].attn.W_O`` (or use
:mod:`hookedclip.model.weights`) to change weights.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor

from hookedclip.model.factored import FactoredMatrix

_ATTN = ("W_Q", "W_K", "W_V", "W_O", "b_Q", "b_K", "b_V", "b_O")
_MLP = ("W_in", "W_out", "b_in", "b_out")


class StackedWeights:
    """Mixin for a tower with ``blocks``: ``W_Q [n_layers, n_heads, d_model, d_head]`` and the
    rest of TransformerLens's stacked names (``W_K``, ``W_V``, ``W_O``, ``b_*``, ``W_in``,
    ``W_out``, ``b_in``, ``b_out``), ``OV`` / ``QK`` as :class:`FactoredMatrix`
    ``[n_layers, n_heads, d_model, d_model]``, :meth:`all_head_labels` and
    :meth:`accumulated_bias`."""

    def _stack(self, module: str, name: str) -> Tensor:
        return torch.stack([getattr(getattr(block, module), name) for block in self.blocks]).detach()

    @property
    def OV(self) -> FactoredMatrix:
        """Value-output circuits ``W_V[l, h] @ W_O[l, h]`` (rank ≤ d_head), factored."""
        return FactoredMatrix(self.W_V, self.W_O)

    @property
    def QK(self) -> FactoredMatrix:
        """Query-key circuits ``W_Q[l, h] @ W_K[l, h]ᵀ``, factored (scores before the
        ``1/sqrt(d_head)`` scale and biases)."""
        return FactoredMatrix(self.W_Q, self.W_K.transpose(-1, -2))

    def all_head_labels(self) -> list[str]:
        """``["L0H0", "L0H1", ...]`` in layer-major order (the order of stacked head results)."""
        heads = self.blocks[0].attn.n_heads
        return [f"L{layer}H{head}" for layer in range(len(self.blocks)) for head in range(heads)]

    def accumulated_bias(
        self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True
    ) -> Float[Tensor, " d_model"]:
        """The sum of the output biases written to the residual stream before block ``layer``
        (``b_O``, and ``b_out`` unless ``include_mlp_biases=False``); with ``mlp_input``, before
        block ``layer``'s MLP (its ``b_O`` included)."""
        if not 0 <= layer <= len(self.blocks):
            raise ValueError(f"layer {layer} is out of range 0..{len(self.blocks)}")
        total = torch.zeros_like(self.blocks[0].attn.b_O).detach()
        for block in self.blocks[:layer]:
            total = total + block.attn.b_O.detach()
            if include_mlp_biases:
                total = total + block.mlp.b_out.detach()
        if mlp_input:
            if layer == len(self.blocks):
                raise ValueError("mlp_input=True needs a block index below n_layers")
            total = total + self.blocks[layer].attn.b_O.detach()
        return total


def _stacked_property(module: str, name: str) -> property:
    def get(self) -> Tensor:
        return self._stack(module, name)

    get.__doc__ = f"Every block's ``{module}.{name}`` stacked: ``[n_layers, ...]`` (a copy)."
    return property(get)


for _name in _ATTN:
    setattr(StackedWeights, _name, _stacked_property("attn", _name))
for _name in _MLP:
    setattr(StackedWeights, _name, _stacked_property("mlp", _name))


class ImageTowerWeights:
    """Mixin for the whole model: TransformerLens's model-level weight names, for the image
    tower (``model.W_Q`` is ``model.visual.W_Q``; ``model.text.W_Q`` for the text tower)."""

    visual: StackedWeights

    def all_head_labels(self) -> list[str]:
        """The image tower's head labels, ``["L0H0", "L0H1", ...]``."""
        return self.visual.all_head_labels()

    def accumulated_bias(self, layer: int, mlp_input: bool = False, include_mlp_biases: bool = True) -> Tensor:
        """The image tower's :meth:`StackedWeights.accumulated_bias`."""
        return self.visual.accumulated_bias(layer, mlp_input, include_mlp_biases)


def _image_tower_property(name: str) -> property:
    def get(self):
        return getattr(self.visual, name)

    get.__doc__ = f"The image tower's ``{name}`` (see :class:`StackedWeights`)."
    return property(get)


for _name in (*_ATTN, *_MLP, "OV", "QK"):
    setattr(ImageTowerWeights, _name, _image_tower_property(_name))
