"""ActivationCache: the activations recorded during a forward (and backward) pass."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from hookedclip.model.hooked import HookedCLIP

from hookedclip.names import _BLOCK_SHORT_NAMES, _TOWER_SHORT_NAMES, act_name  # noqa: F401


class ActivationCache(Mapping[str, Tensor]):
    """A read-only mapping from hook names to recorded tensors.

    Index by full name (``cache["visual.blocks.3.attn.hook_z"]``) or by TransformerLens
    shorthand: ``cache["z", 3]``, ``cache["resid_post", -1]``, ``cache["out"]``,
    ``cache["resid_post", 2, "text"]`` (the tower defaults to ``"visual"``). Gradients
    recorded with ``incl_bwd=True`` are under ``name + "_grad"`` (``cache["z_grad", 3]``).
    """

    def __init__(self, store: dict[str, Tensor], model: "HookedCLIP | None" = None, has_batch_dim: bool = True) -> None:
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

    def to(self, device: torch.device | str, move_model: bool = False) -> "ActivationCache":
        """Move every cached tensor to ``device`` in place (the old copies are freed) and return
        the cache itself, as TransformerLens does; ``move_model`` moves the model too."""
        for name, value in self._store.items():
            self._store[name] = value.to(device)
        if move_model and self.model is not None:
            self.model.to(device)
        return self

    def stack(self, short: str, tower: str = "visual") -> Tensor:
        """One activation of every layer stacked: ``[n_layers, *shape]``."""
        n = self._n_layers(tower)
        if n is None:
            raise ValueError("stacking needs the model (and the tower) the cache came from")
        return torch.stack([self[short, layer, tower] for layer in range(n)])

    def stack_head_results(
        self, tower: str = "visual", pos: int | slice | None = None
    ) -> tuple[Float[Tensor, "component batch *pos d_model"], list[str]]:
        """Every head's output (before ``b_O``) stacked across layers, with labels ``"L{l}H{h}"``.

        Uses the cached ``hook_result`` where present, else computes it from the cached
        ``hook_z`` and ``W_O``. ``pos`` selects token positions first (``0`` for CLS only),
        which keeps the result small.
        """
        n = self._n_layers(tower)
        if n is None:
            raise ValueError("stacking head results needs the model the cache came from")
        index = (slice(None), pos) if pos is not None else (slice(None),)
        rows, labels = [], []
        for layer in range(n):
            name = act_name("result", layer, tower)
            if name in self._store:
                result = self._store[name][index]
            else:
                W_O = getattr(self.model, tower).blocks[layer].attn.W_O
                z = self["z", layer, tower][index]
                result = torch.einsum("...he,hem->...hm", z, W_O.to(z.dtype).detach())
            rows.append(result.movedim(-2, 0))
            labels += [f"L{layer}H{h}" for h in range(result.shape[-2])]
        return torch.cat(rows), labels
