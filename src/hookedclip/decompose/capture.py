"""What a decomposition reads from a forward pass: the components asked for, their hook
points, and one pass that keeps exactly those activations."""

from __future__ import annotations

import torch
from torch import Tensor

from hookedclip.components import ALL_COMPONENTS, MLP, Component, Embed, select
from hookedclip.decompose.readout import _final_ln_scale, _pattern_rows
from hookedclip.names import act_name


def _selection(model, name: str, components) -> list[Component]:
    return select(getattr(model, name), components, tower=name)  # request order, no repeats


def needed_hooks(model, name: str = "visual", components=ALL_COMPONENTS) -> set[str]:
    """The hook points a decomposition of ``name``'s embedding into ``components`` reads."""
    tower = getattr(model, name)
    L = len(tower.blocks)
    wanted = {act_name("resid_post", L - 1, name), _final_ln_scale(name)}
    for comp in _selection(model, name, components):
        if isinstance(comp, Embed):
            wanted.add(act_name("resid_pre", 0, name))
        elif isinstance(comp, MLP):
            wanted.add(act_name("mlp_out", comp.layer, name))
        else:
            wanted |= {act_name("pattern", comp.layer, name), act_name("v", comp.layer, name)}
    return wanted


def _run(model, name: str, inputs: Tensor, wanted: set[str]) -> dict[str, Tensor]:
    """One forward pass keeping the ``wanted`` activations; attention patterns only at the
    query rows the readout reads and values copied out of the fused ``qkv`` tensor, so the
    cache holds what the decomposition reads and no more."""
    rows = _pattern_rows(getattr(model, name))
    cache: dict[str, Tensor] = {}

    def keep(x: Tensor, hook) -> None:
        if hook.name.endswith("hook_pattern"):
            x = x[:, :, :rows]
        if hook.name.endswith(("hook_pattern", "hook_v")):
            x = x.clone()  # a slice would keep the whole pattern / qkv tensor alive
        cache[hook.name] = x.detach()

    with torch.no_grad(), model.hooks(fwd_hooks=[(lambda n: n in wanted, keep)]):
        model.encode_image(inputs) if name == "visual" else model.encode_text(inputs)
    return cache
