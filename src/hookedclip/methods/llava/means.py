"""Per-position component means from an activation store, for total-mode mean ablation.

A store extracted with the hook targets ``visual.blocks.{l}.attn.hook_z`` (rows ``[pos, head,
d_head]``) and ``visual.blocks.{l}.hook_mlp_out`` (rows ``[pos, d_model]``) keeps their means
over the whole dataset in its moments, so the means that ``ablation.mean_ablate(...,
mode="total")`` needs are read without touching a row: the same values as
``ablation.component_means(hooked, batches, mode="total")`` over the store's images.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from hookedclip.components import MLP, Embed, Head, select
from hookedclip.names import act_name


def means_from_store(store, hooked, components: str | Sequence[str] = "all") -> dict[str, Tensor]:
    """``{label: per-position mean}`` (``[pos, d_head]`` per head, ``[pos, d_model]`` per MLP and
    the embedding slot) from ``store``'s moments; the store must come from ``hooked``."""
    store.check(model=hooked)
    out = {}
    for comp in select(hooked, components):
        if isinstance(comp, Head):
            target = act_name("z", comp.layer)
        elif isinstance(comp, MLP):
            target = act_name("mlp_out", comp.layer)
        elif isinstance(comp, Embed):
            target = act_name("resid_pre", 0)
        if target not in store.targets:
            raise KeyError(
                f"the store holds no {target!r}, needed for {comp}: extract it with targets=[{target!r}, ...] "
                "(hookedclip cache --targets ...)"
            )
        mean = store.moments(target).mean
        out[str(comp)] = (mean[:, comp.head] if isinstance(comp, Head) else mean).to(hooked.dtype)
    return out


__all__ = ["means_from_store"]
