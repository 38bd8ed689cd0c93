"""ActivationCache: the activations recorded during a forward (and backward) pass."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from typing_extensions import Unpack

if TYPE_CHECKING:
    from hookedclip.caching import PosSlice
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
        self, layer: int | None = -1, *, pos: PosSlice = None, **options: Unpack[residual.HeadStackOptions]
    ) -> Tensor | tuple[Tensor, list[str]]:
        """:func:`hookedclip.decompose.residual.stack_head_results` (every head's output in the
        blocks before ``layer``; options by keyword), also taking the deprecated ``pos=``."""
        if pos is not None:  # the old signature returned (stack, labels)
            warnings.warn(
                "stack_head_results(pos=...) is deprecated and will be removed; use pos_slice=... "
                "(and return_labels=True for the labels)",
                DeprecationWarning,
                stacklevel=2,
            )
            options = {**options, "pos_slice": pos, "return_labels": True}
        return residual.stack_head_results(self, layer, **options)

    # The cache is the first parameter of each: the module's functions serve as methods as they are.
    stack_neuron_results = residual.stack_neuron_results
    get_neuron_results = residual.neuron_results
    accumulated_resid = residual.accumulated_resid
    decompose_resid = residual.decompose_resid
    get_full_resid_decomposition = residual.get_full_resid_decomposition
    apply_ln_to_stack = residual.apply_ln_to_stack
    logit_attrs = residual.logit_attrs

    def compute_head_results(self, tower: str = "visual") -> None:
        """Store every block's ``hook_result`` (from ``hook_z`` and ``W_O``) in the cache."""
        for layer in range(self._n_layers(tower) or 0):
            name = act_name("result", layer, tower)
            if name not in self._store:
                self._store[name] = residual.head_results(self, layer, tower=tower)

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
