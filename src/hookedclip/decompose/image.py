"""The decompositions: an image or text embedding (or the residual stream) into one row per component."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypedDict

import torch
from jaxtyping import Float, Int
from torch import Tensor
from typing_extensions import Unpack

from hookedclip._compat import renamed_arguments
from hookedclip._options import completed
from hookedclip.components import (
    ALL_COMPONENTS,
    MLP,
    Component,
    ComponentLike,
    Embed,
    Head,
)
from hookedclip.decompose.capture import _run, _selection, needed_hooks
from hookedclip.decompose.memory import _check_memory, _n_rows, plan_chunks
from hookedclip.decompose.readout import (
    LnMode,
    Positions,
    _readout,
    _Rows,
    check_ln_mode,
)
from hookedclip.decompose.stack import ComponentStack
from hookedclip.identity import model_identity
from hookedclip.names import act_name


@renamed_arguments(tokens="positions")
@torch.no_grad()
def decompose_image(
    model,
    images: Float[Tensor, "batch channel height width"],
    positions: Positions = "cls",
    components: ComponentLike | Sequence[ComponentLike] = ALL_COMPONENTS,
    ln_mode: LnMode = "reference",
    normalize: bool = True,
    target: str | tuple[str, int] = "embed",
    head_chunk: int = 8,
    max_memory: int | None = None,
) -> ComponentStack:
    """Direct contributions of components to the image embedding (or to the residual stream).

    Args:
        images: ``[batch, C, H, W]`` preprocessed images.
        positions: ``"cls"``: one row per component ``[component, batch, d]``; ``"all"``:
            per token ``[component, batch, pos, d]`` (heads by source token). (Formerly
            ``tokens=``, still accepted with a deprecation warning.)
        components: keep these rows (``"L10H3"``, ``"mlp9"``, ``"L8-11"``, ``"heads"``, ...,
            see :func:`hookedclip.components.select`); everything else is summed into one
            ``"rest"`` row so the identity still holds. Default ``"all"``
            (:data:`~hookedclip.components.ALL_COMPONENTS`): every component (``embed``, then
            each layer's heads and MLP), so there is no ``"rest"`` row.
        ln_mode: ``"reference"`` (TextSpan's fractional shares) or ``"center_each"``.
        normalize: divide every row by ``‖e‖`` so rows sum to the unit embedding.
        target: ``"embed"`` (joint space, ``d = d_out``) or ``("resid", layer)``: raw
            width-space contributions to ``blocks[layer].hook_resid_pre`` at every query
            position (the LLaVA case: no ``ln_post``, no projection).
        head_chunk: heads processed at once (bounds the transient); at most this many
            when ``max_memory`` is given.
        max_memory: bytes. The heads per step and images per forward pass are chosen
            (:func:`plan_chunks`) so that the estimated peak (:func:`estimate_memory`) stays
            under it; ``MemoryError`` before any work when even the output alone, or one
            image with one head at a time, would not fit. For ``target=("resid", l)`` a
            request over the bound raises.

    Returns:
        :class:`ComponentStack`; ``stack.sum()`` equals ``encode_image(images)`` (normalised
        when ``normalize``).
    """
    model.visual.check_images(images)
    check_ln_mode(ln_mode)
    if target != "embed":
        if max_memory is not None:
            _check_memory(model, images.shape[0], positions, components, target, max_memory)
        return _identified(_decompose_resid(model, images, target, positions, components, head_chunk), model)
    per_pass, head_chunk = plan_chunks(
        model, images.shape[0], max_memory=max_memory, positions=positions, components=components, head_chunk=head_chunk
    )
    return _identified(
        _decompose_embed(model, "visual", images, positions, components, ln_mode, normalize, head_chunk, per_pass),
        model,
    )


def _identified(stack: ComponentStack, model) -> ComponentStack:
    """``stack`` with the decomposed model's identity recorded (a few milliseconds even for ViT-L)."""
    stack.model = model_identity(model)
    return stack


class TextDecomposeOptions(TypedDict, total=False):
    """The options :func:`decompose_text` shares with :func:`decompose_image` (same meaning, same defaults)."""

    positions: Positions
    components: ComponentLike | Sequence[ComponentLike]
    ln_mode: LnMode
    normalize: bool
    head_chunk: int


@torch.no_grad()
def decompose_text(model, tokens: Int[Tensor, "batch seq"], **options: Unpack[TextDecomposeOptions]) -> ComponentStack:
    """Direct contributions of the text tower's components to the text embedding, with the
    options and conventions of :func:`decompose_image` (the pooled position is the EOT token, or
    whatever the tower pools). ``positions="all"``: per source token."""
    if model.text is None:
        raise ValueError("this model has no text tower")
    options = completed(decompose_image, TextDecomposeOptions, options, "decompose_text")
    check_ln_mode(options["ln_mode"])
    return _identified(_decompose_embed(model, "text", tokens, **options), model)


def _decompose_embed(
    model,
    name: str,
    inputs: Tensor,
    positions: Positions,
    components,
    ln_mode: LnMode,
    normalize: bool,
    head_chunk: int,
    per_pass: int | None = None,
) -> ComponentStack:
    """The embedding decomposition of ``inputs``: one forward pass per ``per_pass`` of them
    (default: all at once), each writing its slice of one output tensor."""
    tower = getattr(model, name)
    if tower.W_proj is None:
        raise ValueError(f"the {name} tower has no projection; use target=('resid', layer)")
    n, out_hook = inputs.shape[0], act_name("out", tower=name)
    per_pass = per_pass or n
    wanted = needed_hooks(model, name, components) | {out_hook}
    tensor = None if per_pass >= n else _image_output(model, inputs, positions, components)
    parts = []
    for start in range(0, n, per_pass):
        part = inputs[start : start + per_pass]
        cache = _run(model, name, part, wanted)
        out = None if tensor is None else tensor[:, start : start + per_pass]
        parts.append(
            stack_from_cache(
                model,
                name,
                part,
                cache,
                cache[out_hook],
                positions,
                components,
                ln_mode,
                normalize,
                head_chunk,
                out=out,
            )
        )
    if tensor is None:
        return parts[0]
    scale = torch.cat([part.scale for part in parts]) if normalize else None
    return ComponentStack(tensor, parts[0].labels, parts[0].bias, parts[0].components, scale)


def _image_output(model, images: Tensor, positions: Positions, components) -> Tensor:
    """The uninitialised ``[row, batch, (pos,) d_out]`` tensor an image decomposition in several passes fills."""
    cfg = model.visual.cfg
    width = (cfg.n_tokens,) if positions == "all" else ()
    return images.new_empty(_n_rows(model, components), images.shape[0], *width, cfg.output_dim)


@renamed_arguments(tokens="positions")
def stack_from_cache(
    model,
    name: str,
    inputs: Tensor | None,
    cache: dict[str, Tensor],
    embedding: Tensor,
    positions: Positions = "cls",
    components=ALL_COMPONENTS,
    ln_mode: LnMode = "reference",
    normalize: bool = True,
    head_chunk: int = 8,
    out: Tensor | None = None,
) -> ComponentStack:
    """The decomposition from an already-run forward pass: ``cache`` holds at least
    :func:`needed_hooks` for ``components`` and ``embedding`` is the tower's output in that pass.

    Only the requested rows are computed; when some components are left out, their total
    is one ``"rest"`` row (the embedding minus the computed rows; at position 0 when
    ``positions="all"``). ``out``: a ``[row, batch, (pos,) d]`` tensor (or view) to write
    the rows into instead of allocating one."""
    tower = getattr(model, name)
    L, H = len(tower.blocks), tower.cfg.heads
    selection = _selection(model, name, components)
    readout = _readout(model, name, inputs, cache, embedding)
    scale = 1.0 / embedding.norm(dim=-1) if normalize else torch.ones_like(embedding[:, 0])
    rows = _Rows(tower, readout, ln_mode, positions == "all", scale)
    has_rest = len(selection) < 1 + L * (H + 1)
    width = (readout.kappa.shape[1],) if positions == "all" else ()
    shape = (len(selection) + has_rest, embedding.shape[0], *width, embedding.shape[-1])
    # Rows are written straight into one tensor, already scaled: no per-row copies, no stacking.
    tensor = embedding.new_empty(shape) if out is None else out
    if tuple(tensor.shape) != shape:
        raise ValueError(f"out has shape {tuple(tensor.shape)}; this decomposition writes {shape}")
    heads_by_layer: dict[int, list[tuple[int, int]]] = {}  # layer -> [(head, row index)]
    for i, comp in enumerate(selection):
        if isinstance(comp, Embed):
            rows.slot(cache[act_name("resid_pre", 0, name)], tensor[i])
        elif isinstance(comp, MLP):
            rows.slot(cache[act_name("mlp_out", comp.layer, name)], tensor[i])
        else:
            heads_by_layer.setdefault(comp.layer, []).append((comp.head, i))
    for layer, wanted in heads_by_layer.items():
        pattern, v = cache[act_name("pattern", layer, name)], cache[act_name("v", layer, name)]
        for start in range(0, len(wanted), head_chunk):
            chunk = wanted[start : start + head_chunk]
            index = [i for _, i in chunk]
            consecutive = index == list(range(index[0], index[0] + len(index)))
            target = tensor[index[0] : index[-1] + 1] if consecutive else tensor.new_empty(len(index), *shape[1:])
            rows.heads(tower.blocks[layer].attn, [h for h, _ in chunk], pattern, v, target)
            if not consecutive:
                tensor[index] = target
    bias = tower.b_proj.detach().clone()
    labels, comps = [str(c) for c in selection], list(selection)
    if has_rest:
        computed = tensor[:-1].sum(0)
        if positions == "all":  # the rest enters at position 0
            computed = computed.sum(1)
            tensor[-1].zero_()
            rest = tensor[-1][:, 0]
        else:
            rest = tensor[-1]
        rest.copy_((embedding - bias) * scale[:, None] - computed)
        labels.append("rest")
        comps.append(None)
    return ComponentStack(tensor, labels, bias, comps, scale if normalize else None)


def _decompose_resid(
    model, images: Tensor, target, positions: Positions, components, head_chunk: int
) -> ComponentStack:
    """Raw contributions to the residual stream after ``layer`` blocks (HF's
    ``hidden_states[layer]``), at every query position: ``[component, batch, pos, d_model]``
    (``positions="cls"``: position 0 only)."""
    visual = model.visual
    L, H = len(visual.blocks), visual.cfg.heads
    kind, layer = target if isinstance(target, tuple) else (target, None)
    if kind != "resid" or not isinstance(layer, int) or not 0 <= layer <= L:
        raise ValueError(f"target must be 'embed' or ('resid', layer) with 0 <= layer <= {L}, got {target!r}")
    wanted = {act_name("resid_pre", 0)}
    wanted |= {act_name(short, l) for l in range(layer) for short in ("z", "mlp_out")}
    cache = _run(model, "visual", images, wanted)
    at = slice(None) if positions == "all" else slice(0, 1)
    rows, labels, comps = [cache[act_name("resid_pre", 0)][:, at]], ["embed"], [Embed()]
    for l in range(layer):
        attn = visual.blocks[l].attn
        z = cache[act_name("z", l)][:, at]
        for start in range(0, H, head_chunk):
            sl = slice(start, start + head_chunk)
            rows += list(torch.einsum("bphe,hem->hbpm", z[:, :, sl], attn.W_O[sl]) + attn.b_O / H)
        labels += [f"L{l}H{h}" for h in range(H)]
        comps += [Head(l, h) for h in range(H)]
        rows.append(cache[act_name("mlp_out", l)][:, at])
        labels.append(f"mlp{l}")
        comps.append(MLP(l))
    tensor = torch.stack(rows)
    if positions != "all":
        tensor = tensor[:, :, 0]
    stack = ComponentStack(
        tensor, labels, torch.zeros(tensor.shape[-1], dtype=tensor.dtype, device=tensor.device), comps
    )
    return _keep(stack, _selection(model, "visual", components))


def _keep(stack: ComponentStack, selection: list[Component]) -> ComponentStack:
    """Restrict to the selected components, summing the others into a ``rest`` row."""
    wanted = {str(c) for c in selection}
    keep = [i for i, label in enumerate(stack.labels) if label in wanted]
    rest = [i for i in range(len(stack.labels)) if i not in set(keep)]
    tensor = stack.tensor[keep]
    labels = [stack.labels[i] for i in keep]
    comps = [stack.components[i] for i in keep]
    if rest:
        tensor = torch.cat([tensor, stack.tensor[rest].sum(0, keepdim=True)])
        labels.append("rest")
        comps.append(None)
    return ComponentStack(tensor, labels, stack.bias, comps, stack.scale)
