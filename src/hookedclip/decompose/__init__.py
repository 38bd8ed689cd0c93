"""Residual-stream decomposition of CLIP embeddings into per-component direct contributions.

The image embedding is ``e = LN_post(pool(r^L)) @ P + b_proj``. The residual stream is a
sum of component outputs (the embedding slot ``m^0``, every head, every MLP), and with the
LayerNorm statistics frozen at the clean run LN_post is affine, so ``e`` splits exactly
into one row per component (TextSpan's convention; ``specs/pclens_textspan.md`` §1).

Pooling and LayerNorm are handled by readout weights ``κ_q`` over query positions: the
embedding before projection is ``γ ⊙ Σ_q κ_q (x_q − μ_q) + β``, with ``κ_q = π_q / σ_q``
(pool weights ``π``: one-hot CLS, or uniform over patches for average pooling; ``σ_q``
from ``ln_post``) or ``κ_q = π_q / σ`` when ``ln_post`` follows the pooling. A head's
contribution is then its attention, re-weighted by ``κ`` over queries, times
``W_O · diag(γ) · P`` — no ``[batch, pos, head, d_model]`` tensor is ever formed.

Two conventions distribute the frozen mean ``μ`` and ``β`` over components
(``ln_mode``): ``"reference"`` gives component ``c`` the share ``ω_c`` of both (MLP and
embedding slots ``1/N_c`` with ``N_c = 2L + 1``, heads ``1/(N_c H)``, head-tokens
``1/(N_c H T)``); ``"center_each"`` centres each component by its own mean and shares
only ``β``. Both sum to the same embedding.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip._compat import renamed_arguments
from hookedclip.components import ALL_COMPONENTS, MLP, Component, ComponentLike, Embed, Head, parse, select
from hookedclip.identity import ModelIdentity, model_identity, same_model
from hookedclip.names import act_name
from hookedclip.results import Result

Positions = Literal["cls", "all"]
Tokens = Positions  # the old name of the type
LnMode = Literal["reference", "center_each"]


@dataclass(repr=False)
class ComponentStack(Result):
    """Per-component contributions ``tensor [component, batch, (pos,) d]`` with ``labels``.

    ``bias [d]`` is the part that belongs to no component (the projection bias, non-zero
    after ``fold_ln``); ``rows.sum(0) + bias`` is the decomposed quantity. With
    ``positions="all"`` the ``pos`` axis is where a contribution enters the readout: the
    source token for heads, the token's own position for MLP and embedding slots.
    ``model`` is the identity of the decomposed model (:func:`decompose_image` records it).
    """

    _kind = "component_stack"
    _tensor_fields = ("tensor", "bias", "scale")
    _json_fields = ("labels", "components")

    tensor: Tensor
    labels: list[str]
    bias: Tensor
    components: list[Component | None] = field(default_factory=list)
    scale: Tensor | None = None  # 1/‖e‖ per image if the rows were normalised, else None
    model: ModelIdentity | None = None

    def __len__(self) -> int:
        return len(self.labels)

    # ---- the Result protocol: one row per component
    def _title(self) -> str:
        shape = " × ".join(map(str, self.tensor.shape[1:]))
        return f"ComponentStack of {self.model or 'no recorded model'}: {len(self)} components, rows {shape}"

    def _table(self) -> tuple[list[str], list[list]]:
        norms = self.norms().flatten(1).to(torch.float64).mean(1).tolist() if len(self) else []
        return ["component", "mean_norm"], [[label, n] for label, n in zip(self.labels, norms)]

    def _repr_sizes(self) -> dict:
        return {"components": len(self), "tensor": list(self.tensor.shape), "normalised": self.scale is not None}

    def _state(self) -> tuple[dict, dict]:
        tensors, fields = super()._state()
        fields["components"] = [None if c is None else str(c) for c in self.components]
        return tensors, fields

    @classmethod
    def _from_state(cls, tensors: dict, fields: dict, model: ModelIdentity | None) -> ComponentStack:
        components = [None if c is None else parse(c)[0] for c in fields["components"]]
        return cls(**tensors, labels=fields["labels"], components=components, model=model)

    @classmethod
    def cat(cls, stacks: Sequence[ComponentStack], dim: str = "batch") -> ComponentStack:
        """Stacks of the same components (of one model) concatenated along the batch: the stack
        of the concatenated images. ``dim`` must be ``"batch"``."""
        if dim != "batch":
            raise ValueError(f"ComponentStack.cat concatenates along dim='batch' only, got dim={dim!r}")
        stacks = list(stacks)
        if not stacks:
            raise ValueError("ComponentStack.cat needs at least one stack")
        first = stacks[0]
        for i, other in enumerate(stacks[1:], 1):
            if other.labels != first.labels:
                raise ValueError(f"stack {i} holds components {other.labels}, stack 0 holds {first.labels}: "
                                 "decompose every batch into the same components")
            if other.tensor.shape[2:] != first.tensor.shape[2:] or not torch.equal(other.bias, first.bias):
                raise ValueError(f"stack {i} has rows {tuple(other.tensor.shape[2:])} and another bias than stack 0 "
                                 f"({tuple(first.tensor.shape[2:])}): decompose with the same model and settings")
            if (other.scale is None) != (first.scale is None):
                raise ValueError(f"stack {i} is {'not ' * (other.scale is None)}normalised, stack 0 "
                                 f"{'not ' * (first.scale is None)}: decompose with the same normalize=")
        recorded = [s.model for s in stacks if s.model is not None]
        if any(not same_model(recorded[0], m) for m in recorded[1:]):
            raise ValueError("ComponentStack.cat got stacks of different models: "
                             f"{', '.join(dict.fromkeys(str(m) for m in recorded))}")
        scale = None if first.scale is None else torch.cat([s.scale for s in stacks])
        model = first.model if len(recorded) == len(stacks) else None  # unknown if any part's model is
        return cls(torch.cat([s.tensor for s in stacks], dim=1), list(first.labels), first.bias,
                   list(first.components), scale, model=model)

    def sum(self, include_bias: bool = True) -> Tensor:
        """Sum over components: ``[batch, (pos,) d]`` (``pos`` summed away as well unless kept)."""
        total = self.tensor.sum(0)
        if include_bias:
            bias = self.bias if self.scale is None else self.bias * self.scale[:, None]
            if total.ndim == 3:  # per-token rows: the bias enters once, at the first position
                total = total.clone()
                total[:, 0] += bias
            else:
                total = total + bias
        return total

    def select(self, which: ComponentLike | Sequence[ComponentLike] | Callable[[str], bool]) -> "ComponentStack":
        """The rows named by labels / components, or whose label satisfies a predicate."""
        if callable(which) and not isinstance(which, (Head, MLP, Embed)):
            idx = [i for i, label in enumerate(self.labels) if which(label)]
        else:
            wanted = {str(c) for c in parse(which)}
            idx = [i for i, label in enumerate(self.labels) if label in wanted]
            missing = wanted - {self.labels[i] for i in idx}
            if missing:
                raise KeyError(f"not in this stack: {', '.join(sorted(missing))}")
        return ComponentStack(
            self.tensor[idx], [self.labels[i] for i in idx], torch.zeros_like(self.bias),
            [self.components[i] for i in idx] if self.components else [], self.scale, model=self.model,
        )

    def sum_tokens(self) -> "ComponentStack":
        """Per-token rows summed over positions: the CLS-only (``positions="cls"``) stack."""
        if self.tensor.ndim != 4:
            return self
        return ComponentStack(self.tensor.sum(2), self.labels, self.bias, self.components, self.scale,
                              model=self.model)

    def norms(self) -> Float[Tensor, "component batch *pos"]:
        return self.tensor.norm(dim=-1)

    def to_joint(self, model, tower: str = "visual") -> "ComponentStack":
        """Width-space rows (``target=("resid", l)``) mapped into the joint space through the
        linear part of the final LayerNorm and the projection, ``row @ diag(γ) P``: the
        direction each contribution writes, without LayerNorm's per-image centring and scale."""
        t = getattr(model, tower)
        if t.W_proj is None:
            raise ValueError(f"the {tower} tower has no projection into a joint space")
        if self.tensor.shape[-1] != t.W_proj.shape[0]:
            raise ValueError(f"rows are {self.tensor.shape[-1]}-dimensional; to_joint maps d_model = {t.W_proj.shape[0]} rows")
        G = _final_ln(t).w[:, None] * t.W_proj
        return ComponentStack(self.tensor @ G.to(self.tensor), self.labels, self.bias.new_zeros(G.shape[1]),
                              self.components, self.scale, model=self.model)

    def layer_totals(self) -> "ComponentStack":
        """Heads of each layer summed into one ``attn{l}`` row (MLP and embed rows kept)."""
        rows, labels, comps = [], [], []
        for i, (label, comp) in enumerate(zip(self.labels, self.components)):
            if isinstance(comp, Head):
                key = f"attn{comp.layer}"
                if labels and labels[-1] == key:
                    rows[-1] = rows[-1] + self.tensor[i]
                    continue
                labels.append(key)
                comps.append(None)
            else:
                labels.append(label)
                comps.append(comp)
            rows.append(self.tensor[i])
        return ComponentStack(torch.stack(rows), labels, self.bias, comps, self.scale, model=self.model)


# ---------------------------------------------------------------------------- readout
@dataclass
class _Readout:
    """How the final residual stream becomes the (pre-projection) embedding."""

    kappa: Tensor  # [batch, pos]: κ_q = π_q / σ_q
    mu_kappa: Tensor  # [batch, pos]: κ_q μ_q (the frozen mean, weighted)
    embedding: Tensor  # [batch, d_out]: the model's output e


def _pool_weights(tower, inputs: Tensor | None, x: Tensor) -> Tensor:
    """π [batch, pos]: how the tower pools its final residual stream ``x``."""
    batch, pos = x.shape[:2]
    pi = torch.zeros(batch, pos, device=x.device, dtype=x.dtype)
    if hasattr(tower, "pool_index"):  # text: the EOT (or configured) token
        pi[torch.arange(batch), tower.pool_index(inputs)] = 1.0
    elif tower.cfg.pool_type == "tok":
        pi[:, 0] = 1.0
    else:
        start = int(tower.cfg.class_token)
        pi[:, start:] = 1.0 / (pos - start)
    return pi


def _final_ln(tower):
    return tower.ln_post if hasattr(tower, "ln_post") else tower.ln_final


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


def _pattern_rows(tower) -> int | None:
    """How many leading query rows of the attention pattern the readout reads: 1 when the
    tower pools its class token, all (``None``) otherwise."""
    pools_first = not hasattr(tower, "pool_index") and tower.cfg.pool_type == "tok"
    return 1 if pools_first else None


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


def _final_ln_scale(name: str) -> str:
    """The hook of the final LayerNorm's scale σ: ``ln_post`` (vision) or ``ln_final`` (text)."""
    return act_name("ln_post_scale" if name == "visual" else "ln_final_scale", tower=name)


def _readout(model, name: str, inputs: Tensor, cache: dict[str, Tensor], embedding: Tensor) -> _Readout:
    """Readout weights and frozen LayerNorm statistics from a forward pass's cache."""
    tower = getattr(model, name)
    x = cache[act_name("resid_post", len(tower.blocks) - 1, name)]
    pi = _pool_weights(tower, inputs, x)
    sigma = cache[_final_ln_scale(name)]
    if getattr(tower.cfg, "final_ln_after_pool", False):
        pooled = (pi.unsqueeze(-1) * x).sum(1)
        kappa = pi / sigma.view(-1, 1)
        mu = pooled.mean(-1, keepdim=True).expand_as(pi)
    else:
        kappa = pi / sigma.squeeze(-1)
        mu = x.mean(-1)
    return _Readout(kappa, kappa * mu, embedding)


# ---------------------------------------------------------------------------- main entry
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
    if ln_mode not in ("reference", "center_each"):
        raise ValueError(f"ln_mode must be 'reference' or 'center_each', got {ln_mode!r}")
    if target != "embed":
        if max_memory is not None:
            _check_memory(model, images.shape[0], positions, components, target, max_memory)
        return _identified(_decompose_resid(model, images, target, positions, components, head_chunk), model)
    per_pass, head_chunk = plan_chunks(model, images.shape[0], positions, components, max_memory, head_chunk)
    if per_pass == images.shape[0]:
        stack = _decompose_embed(model, "visual", images, positions, components, ln_mode, normalize, head_chunk)
    else:
        stack = _decompose_in_passes(model, images, per_pass, positions, components, ln_mode, normalize, head_chunk)
    return _identified(stack, model)


def _identified(stack: ComponentStack, model) -> ComponentStack:
    """``stack`` with the decomposed model's identity recorded (a few milliseconds even for ViT-L)."""
    stack.model = model_identity(model)
    return stack


def _decompose_in_passes(model, images: Tensor, per_pass: int, positions: Positions, components, ln_mode: LnMode,
                         normalize: bool, head_chunk: int) -> ComponentStack:
    """One forward pass per ``per_pass`` images, each writing its slice of one output tensor."""
    cfg = model.visual.cfg
    n_rows = _n_rows(model, components)
    width = (cfg.n_tokens,) if positions == "all" else ()
    tensor = images.new_empty(n_rows, images.shape[0], *width, cfg.output_dim)
    wanted = needed_hooks(model, "visual", components) | {act_name("out")}
    scales, stack = [], None
    for start in range(0, images.shape[0], per_pass):
        part = images[start : start + per_pass]
        cache = _run(model, "visual", part, wanted)
        stack = stack_from_cache(model, "visual", part, cache, cache[act_name("out")], positions, components,
                                 ln_mode, normalize, head_chunk, out=tensor[:, start : start + per_pass])
        scales.append(stack.scale)
    scale = torch.cat(scales) if normalize else None
    return ComponentStack(tensor, stack.labels, stack.bias, stack.components, scale)


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


@renamed_arguments(tokens="positions")
def plan_chunks(model, batch: int, positions: Positions = "cls", components=ALL_COMPONENTS,
                max_memory: int | None = None,
                head_chunk: int = 8) -> tuple[int, int]:
    """(images per forward pass, heads per step) for a :func:`decompose_image` call that
    stays under ``max_memory`` bytes (:func:`estimate_memory`): the whole batch and
    ``head_chunk`` heads when they fit, else fewer heads, then fewer images per pass.

    Raises ``MemoryError`` when the output alone, or one image with one head at a time,
    would exceed ``max_memory``."""
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
def estimate_memory(model, batch: int, positions: Positions = "cls", components=ALL_COMPONENTS, target="embed",
                    per_pass: int | None = None, head_chunk: int = 8) -> int:
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


@torch.no_grad()
def decompose_text(
    model,
    tokens: Int[Tensor, "batch seq"],
    positions: Positions = "cls",
    components: ComponentLike | Sequence[ComponentLike] = ALL_COMPONENTS,
    ln_mode: LnMode = "reference",
    normalize: bool = True,
    head_chunk: int = 8,
) -> ComponentStack:
    """Direct contributions of the text tower's components to the text embedding, with the
    same conventions as :func:`decompose_image` (the pooled position is the EOT token, or
    whatever the tower pools). ``positions="all"``: per source token."""
    if model.text is None:
        raise ValueError("this model has no text tower")
    return _identified(_decompose_embed(model, "text", tokens, positions, components, ln_mode, normalize, head_chunk),
                       model)


def _decompose_embed(model, name: str, inputs: Tensor, positions: Positions, components, ln_mode: LnMode,
                     normalize: bool, head_chunk: int) -> ComponentStack:
    tower = getattr(model, name)
    if tower.W_proj is None:
        raise ValueError(f"the {name} tower has no projection; use target=('resid', layer)")
    if ln_mode not in ("reference", "center_each"):
        raise ValueError(f"ln_mode must be 'reference' or 'center_each', got {ln_mode!r}")
    cache = _run(model, name, inputs, needed_hooks(model, name, components) | {act_name("out", tower=name)})
    return stack_from_cache(model, name, inputs, cache, cache[act_name("out", tower=name)], positions, components,
                            ln_mode, normalize, head_chunk)


@renamed_arguments(tokens="positions")
def stack_from_cache(model, name: str, inputs: Tensor | None, cache: dict[str, Tensor], embedding: Tensor,
                     positions: Positions = "cls", components=ALL_COMPONENTS, ln_mode: LnMode = "reference",
                     normalize: bool = True, head_chunk: int = 8,
                     out: Tensor | None = None) -> ComponentStack:
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


def _into(out: Tensor, value: Tensor) -> None:
    out.copy_(value.view(out.shape))


class _Rows:
    """Joint-space rows of the decomposition for one forward pass (see the module doc),
    each multiplied by the per-image ``scale`` (``1/‖e‖`` or one)."""

    def __init__(self, tower, readout: _Readout, ln_mode: LnMode, positional: bool, scale: Tensor) -> None:
        ln = _final_ln(tower)
        P = tower.W_proj
        G = ln.w[:, None] * P  # diag(γ) P: [d_model, d_out]
        if ln_mode == "center_each":
            G = G - G.mean(0, keepdim=True)  # (c - mean(c)) ⊙ γ @ P == c @ (C_D diag(γ) P)
        self.G, self.g, self.b_beta = G, ln.w @ P, ln.b @ P
        self.reference = ln_mode == "reference"
        self.positional = positional
        L, H = len(tower.blocks), tower.cfg.heads
        self.n_heads = H
        self.omega_slot = 1.0 / (2 * L + 1)  # N_c = 2L + 1 slots share μ and β
        self.omega_head = self.omega_slot / H
        # The scale rides on κ (every term but β's is linear in κ), and on β's share.
        self.kappa = readout.kappa * scale[:, None]  # [batch, pos]
        self.mu_kappa = readout.mu_kappa * scale[:, None]  # [batch, pos]: κ_q μ_q / ‖e‖
        self.scale = scale
        self.kappa_sum = self.kappa.sum(1)  # [batch]
        self.mu_total = self.mu_kappa.sum(1)  # [batch]: Σ_q κ_q μ_q
        self.share = readout.kappa / readout.kappa.sum(1, keepdim=True)  # [batch, pos]: where β enters

    def _constant(self, omega: float, bias_joint: Tensor | None = None) -> Float[Tensor, "batch d_out"]:
        """The part of a row that does not depend on the component's output: its shares of
        β (and of μ in the reference convention) and of the output bias."""
        c = omega * self.scale[:, None] * self.b_beta
        if self.reference:
            c = c - omega * self.mu_total[:, None] * self.g
        if bias_joint is not None:
            c = c + self.kappa_sum[:, None] * bias_joint
        return c

    def slot(self, values: Float[Tensor, "batch pos d_model"], out: Tensor) -> None:
        """Embedding or MLP slot into ``out [batch, (pos,) d_out]``; per token, each
        position keeps its own share."""
        omega = self.omega_slot
        if not self.positional:
            _into(out, torch.einsum("bq,bqm->bm", self.kappa, values) @ self.G + self._constant(omega))
            return
        weighted = self.kappa.unsqueeze(-1) * values
        if _writable(out, weighted, self.G):
            torch.matmul(weighted, self.G, out=out)
        else:
            _into(out, weighted @ self.G)
        out += omega * (self.share * self.scale[:, None]).unsqueeze(-1) * self.b_beta
        if self.reference:
            out -= omega * self.mu_kappa.unsqueeze(-1) * self.g

    def heads(self, attn, heads: list[int], pattern: Tensor, v: Tensor, out: Tensor) -> None:
        """Rows of the listed heads of one layer into ``out [len(heads), batch, (pos,) d_out]``.

        ``pattern`` may hold only the leading query rows (those the readout reads, see
        :func:`_pattern_rows`); κ is zero on the others."""
        h0 = heads[0]
        sl = slice(h0, h0 + len(heads)) if heads == list(range(h0, h0 + len(heads))) else heads
        kappa = self.kappa[:, : pattern.shape[2]]
        alpha = torch.einsum("bq,bhqk->hbk", kappa, pattern[:, sl])  # κ-weighted attention
        v = v[:, :, sl].permute(2, 0, 1, 3)  # [h, b, k, e]
        W_joint = torch.einsum("hem,md->hed", attn.W_O[sl], self.G)  # W_O[h] diag(γ) P
        bias_joint = (attn.b_O @ self.G) / self.n_heads  # b_O split uniformly over heads
        constant = self._constant(self.omega_head, bias_joint)  # [b, d]
        h, b, k, e = v.shape
        if self.positional:
            weighted = (alpha.unsqueeze(-1) * v).reshape(h, b * k, e)
            flat = out.view(h, b * k, -1) if out.is_contiguous() else out
            _bmm_into(weighted, W_joint, flat)
            # Through the view that was written: under autograd, ``out`` (a sibling view made
            # before the write) would still count as a leaf and refuse the in-place add.
            flat.view(out.shape).add_((constant / k)[None, :, None])
        else:
            z_bar = torch.einsum("hbk,hbke->hbe", alpha, v)
            _bmm_into(z_bar, W_joint, out)
            out += constant


def _bmm_into(a: Tensor, b: Tensor, out: Tensor) -> None:
    if _writable(out, a, b):
        torch.bmm(a, b, out=out)
    else:
        _into(out, torch.bmm(a, b))


def _writable(out: Tensor, *inputs: Tensor) -> bool:
    """Whether a kernel can write into ``out`` directly (``out=`` takes contiguous
    tensors and does not record gradients)."""
    grad = torch.is_grad_enabled() and any(x.requires_grad for x in inputs)
    return out.is_contiguous() and not grad


def _decompose_resid(model, images: Tensor, target, positions: Positions, components,
                     head_chunk: int) -> ComponentStack:
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
    stack = ComponentStack(tensor, labels, torch.zeros(tensor.shape[-1], dtype=tensor.dtype, device=tensor.device), comps)
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
