"""What every per-head SITH result of one layer knows from its singular values ``S [head, r]``
and its ``layer``: how many heads, their rank and their labels."""

from __future__ import annotations


class LayerHeads:
    """Mixin for a result with ``S: [head, r]`` and ``layer: int`` fields."""

    @property
    def n_heads(self) -> int:
        return self.S.shape[0]

    @property
    def rank(self) -> int:
        return self.S.shape[1]

    @property
    def labels(self) -> list[str]:
        """``["L{layer}H0", ...]``, one per head."""
        return [f"L{self.layer}H{h}" for h in range(self.n_heads)]
