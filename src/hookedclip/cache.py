"""ActivationCache: the activations recorded during a forward (and backward) pass."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from hookedclip.model.hooked import HookedCLIP

from hookedclip.decompose import residual
from hookedclip.names import _BLOCK_SHORT_NAMES, _LAYER_TYPES, _TOWER_SHORT_NAMES, act_name  # noqa: F401


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping from hook names to recorded tensors.

    Index by full name (``cache["visual.blocks.3.attn.hook_z"]``) or by TransformerLens
    shorthand: ``cache["z", 3]``, ``cache["resid_post", -1]``, ``cache["out"]``,
    ``cache["resid_post", 2, "text"]`` (the tower defaults to ``"visual"``). Gradients
    recorded with ``incl_bwd=True`` are under ``name + "_grad"`` (``cache["z_grad", 3]``).
    """

    def __init__(self, store: dict[str, Tensor], model: HookedCLIP | None = None, has_batch_dim: bool = True) -> None:
        self._store = store
        self.model = model
        self.has_batch_dim = has_batch_dim

    def _full_name(self, key: str | tuple) -> str:
        if isinstance(key, str):
            if key in self._store or "." in key:
                return key
            return act_name(key)
        short, layer, *rest = key
        tower = rest[0] if rest and rest[0] is not None else "visual"  # TransformerLens passes None
        if tower in _LAYER_TYPES:  # TransformerLens's sublayer ("ln2", "m", ...), not a tower
            if short in ("scale", "normalized"):
                short = f"{_LAYER_TYPES[tower]}_scale" if short == "scale" else _LAYER_TYPES[tower]
            tower = "visual"
        n_layers = self._n_layers(tower)
        if layer is not None and n_layers is not None and not -n_layers <= layer < n_layers:
            raise IndexError(
                f"layer {layer} is out of range: the {tower} tower has {n_layers} layers "
                f"(0..{n_layers - 1}, or -{n_layers}..-1 from the end)"
            )
        return act_name(short, layer, tower, n_layers)

    def _n_layers(self, tower: str) -> int | None:
        module = getattr(self.model, tower, None) if self.model is not None else None
        return len(module.blocks) if module is not None else None

    def __getitem__(self, key: str | tuple) -> Tensor:
        name = self._full_name(key)
        try:
            return self._store[name]
        except KeyError:
            raise KeyError(
                f"{name!r} is not in the cache (cached: {len(self._store)} tensors). Was it in "
                "names_filter, and did the forward pass reach it?"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._store)

    def __len__(self) -> int:
        return len(self._store)

    def __repr__(self) -> str:
        return f"ActivationCache({len(self)} tensors: {', '.join(list(self._store)[:4])}{', ...' if len(self) > 4 else ''})"

    def to(self, device: torch.device | str, move_model: bool = False) -> ActivationCache:
        """Move every cached tensor to ``device`` in place (the old copies are freed) and return
        the cache itself, as TransformerLens does; ``move_model`` moves the model too."""
        for name, value in self._store.items():
            self._store[name] = value.to(device)
        if move_model and self.model is not None:
            self.model.to(device)
        return self

    # ------------------------------------------------------------------ TransformerLens's analyses
    # With CLIP's readout (the frozen ln_post, pooling and the projection) in place of the
    # unembedding; see :mod:`hookedclip.decompose.residual`.
    def stack_activation(self, activation_name: str, layer: int = -1, tower: str = "visual") -> Tensor:
        """One activation of every block before ``layer`` (all with -1) stacked: ``[n, *shape]``."""
        n = self._n_layers(tower)
        if n is None:
            raise ValueError("stacking needs the model (and the tower) the cache came from")
        n = n if layer == -1 else layer
        return torch.stack([self[activation_name, block, tower] for block in range(n)])

    def stack(self, short: str, tower: str = "visual") -> Tensor:
        """Short name of :meth:`stack_activation` over every layer: ``[n_layers, *shape]``."""
        return self.stack_activation(short, -1, tower)

    def stack_head_results(
        self,
        layer: int = -1,
        return_labels: bool = False,
        incl_remainder: bool = False,
        pos_slice=None,
        apply_ln: bool = False,
        tower: str = "visual",
        pos=None,
    ):
        """Every head's output (before ``b_O``) in the blocks before ``layer`` (all with -1):
        ``[layer * head, batch, *pos, d_model]``, with labels ``"L{l}H{h}"`` when
        ``return_labels``. Uses cached ``hook_result`` where present, else ``hook_z`` and
        ``W_O``. ``pos_slice=0`` keeps the class token only (small); ``incl_remainder`` adds
        the rest of the residual stream; ``apply_ln`` the frozen LayerNorm of ``layer``."""
        if pos is not None:  # the old signature returned (stack, labels)
            warnings.warn(
                "stack_head_results(pos=...) is deprecated and will be removed; use pos_slice=... "
                "(and return_labels=True for the labels)",
                DeprecationWarning,
                stacklevel=2,
            )
            pos_slice, return_labels = pos, True
        return residual.stack_head_results(self, layer, return_labels, incl_remainder, pos_slice, apply_ln, tower)

    def stack_neuron_results(
        self,
        layer: int = -1,
        neuron_slice=None,
        pos_slice=None,
        return_labels: bool = False,
        incl_remainder: bool = False,
        apply_ln: bool = False,
        tower: str = "visual",
    ):
        """Every MLP neuron's output in the blocks before ``layer``: ``[layer * neuron, batch,
        *pos, d_model]``, labels ``"L{l}N{n}"``."""
        return residual.stack_neuron_results(
            self, layer, neuron_slice, pos_slice, return_labels, incl_remainder, apply_ln, tower
        )

    def get_neuron_results(self, layer: int, neuron_slice=None, pos_slice=None, tower: str = "visual") -> Tensor:
        """Block ``layer``'s neurons' outputs ``[batch, *pos, neuron, d_model]``."""
        return residual.neuron_results(self, layer, neuron_slice, pos_slice, tower)

    def compute_head_results(self, tower: str = "visual") -> None:
        """Store every block's ``hook_result`` (from ``hook_z`` and ``W_O``) in the cache."""
        for layer in range(self._n_layers(tower) or 0):
            name = act_name("result", layer, tower)
            if name not in self._store:
                self._store[name] = residual.head_results(self, layer, tower=tower)

    def accumulated_resid(
        self,
        layer: int | None = None,
        incl_mid: bool = False,
        apply_ln: bool = False,
        pos_slice=None,
        mlp_input: bool = False,
        return_labels: bool = False,
        tower: str = "visual",
    ):
        """The residual stream entering each block (the logit lens's input); see
        :func:`hookedclip.decompose.residual.accumulated_resid`."""
        return residual.accumulated_resid(self, layer, incl_mid, apply_ln, pos_slice, mlp_input, return_labels, tower)

    def decompose_resid(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        mode: str = "all",
        apply_ln: bool = False,
        pos_slice=None,
        incl_embeds: bool = True,
        return_labels: bool = False,
        tower: str = "visual",
    ):
        """The residual stream split into the embedding slot and each block's attention and MLP
        output; see :func:`hookedclip.decompose.residual.decompose_resid`."""
        return residual.decompose_resid(
            self, layer, mlp_input, mode, apply_ln, pos_slice, incl_embeds, return_labels, tower
        )

    def get_full_resid_decomposition(
        self,
        layer: int | None = None,
        mlp_input: bool = False,
        expand_neurons: bool = True,
        apply_ln: bool = False,
        pos_slice=None,
        return_labels: bool = False,
        tower: str = "visual",
    ):
        """Heads, MLPs (or neurons), the embedding slot and the biases, summing to the residual
        stream; see :func:`hookedclip.decompose.residual.get_full_resid_decomposition`."""
        return residual.get_full_resid_decomposition(
            self, layer, mlp_input, expand_neurons, apply_ln, pos_slice, return_labels, tower
        )

    def apply_ln_to_stack(
        self,
        residual_stack: Tensor,
        layer: int | None = None,
        mlp_input: bool = False,
        pos_slice=None,
        batch_slice=None,
        has_batch_dim: bool = True,
        tower: str = "visual",
    ) -> Tensor:
        """Centre each row and divide by the LayerNorm scale of the cached forward (``ln_post``
        for ``layer=None``, pooling first where the model pools before it)."""
        return residual.apply_ln_to_stack(
            self, residual_stack, layer, mlp_input, pos_slice, batch_slice, has_batch_dim, tower
        )

    def logit_attrs(
        self,
        residual_stack: Tensor,
        directions: Tensor,
        incorrect: Tensor | None = None,
        pos_slice=None,
        batch_slice=None,
        has_batch_dim: bool = True,
    ) -> Tensor:
        """Each row's direct contribution to the score ``⟨e, direction⟩`` of a text embedding or
        a zero-shot class direction (``[d_out]`` or ``[batch, d_out]``): ``[component, batch]``."""
        return residual.logit_attrs(self, residual_stack, directions, incorrect, pos_slice, batch_slice, has_batch_dim)

    # ------------------------------------------------------------------ batch handling
    def remove_batch_dim(self) -> ActivationCache:
        """Drop the batch axis of a batch-1 cache (in place)."""
        if not self.has_batch_dim:
            return self
        sizes = {v.shape[0] for v in self._store.values()}
        if sizes != {1}:
            raise ValueError(f"remove_batch_dim needs a batch of 1, this cache has batch sizes {sorted(sizes)}")
        for name, value in self._store.items():
            self._store[name] = value[0]
        self.has_batch_dim = False
        return self

    def apply_slice_to_batch_dim(self, batch_slice: int | slice | list[int]) -> ActivationCache:
        """A new cache holding only the selected images (an int keeps the batch axis, as a
        one-image batch)."""
        if not self.has_batch_dim:
            raise ValueError("this cache has no batch axis (remove_batch_dim was applied)")
        index = [batch_slice] if isinstance(batch_slice, int) else batch_slice
        return ActivationCache({k: v[index] for k, v in self._store.items()}, self.model)

    def toggle_autodiff(self, mode: bool = False) -> None:
        """Turn autograd on or off globally (``torch.set_grad_enabled``), as TransformerLens does."""
        torch.set_grad_enabled(mode)
