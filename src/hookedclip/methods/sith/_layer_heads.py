"""What every per-head SITH result of one layer knows from its singular values ``S [head, r]``
and its ``layer``: how many heads, their rank and their labels."""

from __future__ import annotations

from hookedclip.axis_size import axis_size


class LayerHeads:
    """Mixin for a result with ``S: [head, r]`` and ``layer: int`` fields."""

    n_heads = axis_size("S", 0, "How many heads.")
    rank = axis_size("S", 1, "Singular vectors kept per head.")

    @property
    def labels(self) -> list[str]:
        """``["L{layer}H0", ...]``, one per head."""
        return [f"L{self.layer}H{h}" for h in range(self.n_heads)]
