"""Memory of a decomposition: its estimated peak and the chunking that keeps it under a bound."""

from __future__ import annotations

from typing import TypedDict

import torch
from typing_extensions import Unpack

from hookedclip._compat import renamed_arguments
from hookedclip._options import completed
from hookedclip.components import ALL_COMPONENTS, Head
from hookedclip.decompose.capture import _selection
from hookedclip.decompose.readout import Positions, _pattern_rows


def _n_rows(model, components) -> int:
    cfg = model.visual.cfg
    selection = _selection(model, "visual", components)
    return len(selection) + (len(selection) < 1 + cfg.layers * (cfg.heads + 1))


def _memory_parts(model, batch: int, positions: Positions, components) -> tuple[int, int, int]:
    """Bytes of (the output, what one image's forward and cache hold, one head of a
    chunk per image) for an ``"embed"`` decomposition."""
    cfg = model.visual.cfg
    itemsize = torch.finfo(model.dtype).bits // 8
    T, D, H, e, d = cfg.n_tokens, cfg.width, cfg.heads, cfg.d_head, cfg.output_dim
    selection = _selection(model, "visual", components)
    per_token = T if positions == "all" else 1
    output = _n_rows(model, components) * batch * per_token * d
    head_layers = {c.layer for c in selection if isinstance(c, Head)}
    rows = _pattern_rows(model.visual) or T
    slots = sum(not isinstance(c, Head) for c in selection)
    cached = len(head_layers) * H * T * (e + rows) + (slots + 1) * T * D
    forward = T * (3 * D + 2 * cfg.d_mlp + 2 * D) + 2 * H * T * T  # qkv, MLP hidden, stream; scores, pattern
    per_head = per_token * (e + d) + T
    return itemsize * output, itemsize * (cached + forward), itemsize * per_head


class ChunkOptions(TypedDict, total=False):
    """What a decomposition computes, as :func:`estimate_memory` takes it (same defaults):
    ``positions``, ``components`` and the most heads per step, ``head_chunk``."""

    positions: Positions
    components: object
    head_chunk: int


@renamed_arguments(tokens="positions")
def plan_chunks(
    model, batch: int, *, max_memory: int | None = None, **options: Unpack[ChunkOptions]
) -> tuple[int, int]:
    """(images per forward pass, heads per step) for a :func:`decompose_image` call that
    stays under ``max_memory`` bytes (:func:`estimate_memory`): the whole batch and
    ``head_chunk`` heads when they fit, else fewer heads, then fewer images per pass.

    Raises ``MemoryError`` when the output alone, or one image with one head at a time,
    would exceed ``max_memory``."""
    options = completed(estimate_memory, ChunkOptions, options, "plan_chunks")
    positions, components, head_chunk = options["positions"], options["components"], options["head_chunk"]
    heads = min(head_chunk, model.visual.cfg.heads)
    if max_memory is None:
        return batch, heads
    output, per_image, per_head = _memory_parts(model, batch, positions, components)
    if output > max_memory:
        raise MemoryError(
            f"the result alone needs {output / 2**20:.1f} MiB, over max_memory = {max_memory / 2**20:.1f} MiB: "
            "decompose fewer images at a time, fewer components, or positions='cls'"
        )
    room = max_memory - output
    for h in range(heads, 0, -1):  # the whole batch in one pass, with as many heads as fit
        if batch * (per_image + h * per_head) <= room:
            return batch, h
    images = room // (per_image + per_head)
    if images < 1:
        need = output + per_image + per_head
        raise MemoryError(
            f"even one image with one head at a time needs about {need / 2**20:.1f} MiB, over max_memory = "
            f"{max_memory / 2**20:.1f} MiB: raise max_memory, decompose fewer components, or use positions='cls'"
        )
    fits = [h for h in range(heads, 0, -1) if images * (per_image + h * per_head) <= room]
    return int(images), fits[0]


@renamed_arguments(tokens="positions")
def estimate_memory(
    model,
    batch: int,
    positions: Positions = "cls",
    components=ALL_COMPONENTS,
    target="embed",
    per_pass: int | None = None,
    head_chunk: int = 8,
) -> int:
    """Bytes a :func:`decompose_image` call holds at its peak, roughly: the output stack,
    plus, for ``per_pass`` images at a time (default: all), the forward pass's
    activations, the cached values and attention rows, and one chunk of ``head_chunk`` heads."""
    cfg = model.visual.cfg
    if target == "embed":
        output, per_image, per_head = _memory_parts(model, batch, positions, components)
        heads = min(head_chunk, cfg.heads)
        return int(output + (per_pass or batch) * (per_image + heads * per_head))
    itemsize = torch.finfo(model.dtype).bits // 8
    per_token = cfg.n_tokens if positions == "all" else 1
    layer = target[1]
    rows, width = 1 + layer * (cfg.heads + 1), cfg.width
    cached = layer * batch * cfg.n_tokens * 2 * cfg.width
    return int(itemsize * (rows * batch * per_token * width + cached))


def _check_memory(model, batch: int, positions, components, target, max_memory: int) -> None:
    need = estimate_memory(model, batch, positions, components, target)
    if need > max_memory:
        raise MemoryError(
            f"this decomposition needs about {need / 2**20:.0f} MiB, over max_memory = {max_memory / 2**20:.0f} MiB: "
            "use a smaller batch, fewer components, or positions='cls'"
        )
