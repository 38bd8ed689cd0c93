"""Ablations as context managers over ``model.hooks``: they compose and always undo themselves.

Every context takes a set of components (``"L10H3"``, ``"mlp9"``, ``"embed"``, ``"L8-11"``)
and a ``mode``:

- ``mode="total"`` changes the component's output inside the real forward pass, so
  downstream layers see the change. Heads are edited at ``hook_z`` (zero / mean /
  resample) or ``hook_result`` (projections), MLPs at ``hook_mlp_out``, the embedding slot
  at ``blocks.0.hook_resid_pre``.
- ``mode="direct"`` changes only the component's direct path into the image embedding,
  with ``ln_post`` statistics frozen at the clean run: the embedding becomes
  ``e' = ‖e‖ (Σ_kept φ_c + Σ_ablated φ'_c)`` where ``φ_c`` are the decomposition rows of
  :func:`hookedclip.decompose.decompose_image` (TextSpan/PCLens accuracy protocol). The rest
  of the network is untouched. Nested direct contexts compose exactly: nesting ``A`` then
  ``B`` equals one context over ``A ∪ B`` (an overlapping component gets the inner
  replacement applied to the outer one's result), every row normalised by the ``‖e‖`` of
  the forward before any direct rewrite. The rows are read from the activations the
  forward actually used, so ``model.hooks`` edits entered inside or outside are part of it.

Replacement values (``means``, ``directions``) live in the space the mode edits: for
``"total"``, the hook's space (``hook_z`` ``[pos, d_head]`` per head, ``[pos, d_model]`` for
MLPs and embed; directions in ``d_model``); for ``"direct"``, the joint space ``d_out``.
:func:`component_means` computes either kind from batches of images.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.components import MLP, Component, ComponentLike, Embed, Head, select
from hookedclip.decompose import ComponentStack, needed_hooks, stack_from_cache

Mode = Literal["total", "direct"]
# replace(values, component) -> new values; values are the component's output in the edited space
Replace = Callable[[Tensor, Component], Tensor]


def _components(model, components: ComponentLike | Sequence[ComponentLike]) -> list[Component]:
    return select(model, components)


def ablate(
    model,
    components: ComponentLike | Sequence[ComponentLike],
    replace: Replace,
    mode: Mode = "total",
    head_space: Literal["z", "result"] = "z",
) -> contextlib.AbstractContextManager:
    """The general ablation context: ``replace`` maps each listed component's output to its
    new value. ``head_space`` picks where heads are edited in total mode (``hook_z``,
    ``[batch, pos, d_head]``, or ``hook_result``, ``[batch, pos, d_model]``)."""
    comps = _components(model, components)
    if mode not in ("total", "direct"):
        raise ValueError(f"mode must be 'total' or 'direct', got {mode!r}")
    if not comps:
        return model.hooks()
    if mode == "direct":
        return _direct_context(model, comps, replace)
    return model.hooks(fwd_hooks=_total_hooks(comps, replace, head_space))


def _total_hooks(comps: list[Component], replace: Replace, head_space: str) -> list:
    hooks = []
    for comp in comps:
        if isinstance(comp, Head):
            name = f"visual.blocks.{comp.layer}.attn.hook_{head_space}"
            hooks.append((name, _edit_head(comp, replace)))
        elif isinstance(comp, MLP):
            hooks.append((f"visual.blocks.{comp.layer}.hook_mlp_out", lambda x, hook, c=comp: replace(x, c)))
        else:
            hooks.append(("visual.blocks.0.hook_resid_pre", lambda x, hook, c=comp: replace(x, c)))
    return hooks


def _edit_head(comp: Head, replace: Replace):
    def hook(x: Tensor, hp) -> Tensor:  # x: [batch, pos, head, d]
        x = x.clone()
        x[:, :, comp.head] = replace(x[:, :, comp.head], comp)
        return x

    return hook


# Direct-mode contexts active on each model, outermost first. One hook_out rewrite (the
# outermost context's) applies all of them, so nested direct contexts compose like nested
# functions on each row and every row is normalised by the clean ‖e‖.
_DIRECT: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


@dataclass
class _DirectState:
    edits: list[tuple[list[Component], Replace]] = field(default_factory=list)
    captured: dict[str, Tensor] = field(default_factory=dict)


@contextlib.contextmanager
def _direct_context(model, comps: list[Component], replace: Replace):
    """Rewrite ``hook_out`` to ``e_in + ‖e₀‖ Σ_c (φ'_c − φ_c)``.

    ``e₀`` is the projection of ``hook_pooled`` (the embedding before any rewrite of
    ``hook_out``) and the rows ``φ_c`` come from the activations the forward actually used:
    they are read by module forward hooks, which run after every ``model.hooks`` function
    at that point whatever the nesting order. An outer ``model.hooks`` edit of
    ``hook_out`` itself runs before the rewrite, an inner one after it.
    """
    state = _DIRECT.setdefault(model, _DirectState())
    edit = (comps, replace)
    state.edits.append(edit)
    names = needed_hooks(model, "visual", [str(c) for c in comps]) | {"visual.hook_pooled"}

    def capture(module, inputs, output: Tensor) -> None:
        state.captured[module.name] = output

    def rewrite(e: Tensor, hook) -> Tensor | None:
        if state.edits[0] is not edit:
            return None  # the outermost direct context rewrites for all of them
        return _rewrite(model, state, e)

    handles = [model.hook_dict[n].register_forward_hook(capture) for n in names]
    try:
        # The no-op functions make the hook points active (hook_pattern is only computed then).
        with model.hooks(fwd_hooks=[(lambda n: n in names, _keep_active), ("visual.hook_out", rewrite)]):
            yield model
    finally:
        for handle in handles:
            handle.remove()
        state.edits.pop(next(i for i, x in enumerate(state.edits) if x is edit))
        if not state.edits:
            del _DIRECT[model]


def _keep_active(x: Tensor, hook) -> None:
    return None


def _rewrite(model, state: _DirectState, e: Tensor) -> Tensor:
    visual = model.visual
    pooled = state.captured["visual.hook_pooled"]
    clean = pooled if visual.W_proj is None else F.linear(pooled, visual.W_proj.T, visual.b_proj)
    labels = list(dict.fromkeys(str(c) for comps, _ in state.edits for c in comps))
    stack = stack_from_cache(model, "visual", None, state.captured, clean, components=labels)
    state.captured.clear()
    delta = torch.zeros_like(e)
    for row, comp in zip(stack.tensor, stack.components):
        if comp is None:  # the "rest" row
            continue
        new = row
        for comps, replace in state.edits:  # outer contexts first, as in total mode
            if comp in comps:
                new = replace(new, comp)
        delta = delta + (new - row)
    return e + clean.norm(dim=-1, keepdim=True) * delta


# ---------------------------------------------------------------------------- the usual ablations
def zero_ablate(model, components, mode: Mode = "total"):
    """Set each component's output to zero."""
    return ablate(model, components, lambda x, c: torch.zeros_like(x), mode)


def mean_ablate(model, components, means: Mapping[str, Tensor], mode: Mode = "total"):
    """Replace each component's output by its mean (``means[label]``, see :func:`component_means`)."""
    comps = _components(model, components)
    missing = [str(c) for c in comps if str(c) not in means]
    if missing:
        raise KeyError(f"no mean for {', '.join(missing)}; compute them with ablation.component_means(model, batches, mode={mode!r})")
    for c in comps:
        _check_mean_shape(model, c, means[str(c)], mode)
    return ablate(model, comps, lambda x, c: means[str(c)].to(x).expand_as(x), mode)


def _check_mean_shape(model, comp: Component, mean: Tensor, mode: Mode) -> None:
    """Means must broadcast to the edited space: ``[d_out]`` (direct); ``[(pos,) d_head]`` for
    heads and ``[(pos,) d_model]`` otherwise (total)."""
    cfg = model.cfg.vision
    if mode == "direct":
        allowed = [(cfg.output_dim,)]
    else:
        d = cfg.d_head if isinstance(comp, Head) else cfg.width
        allowed = [(d,), (cfg.n_tokens, d)]
    if tuple(mean.shape) not in allowed:
        raise ValueError(
            f"mean for {comp} has shape {tuple(mean.shape)}; {mode} mode needs one of {allowed}. "
            f"Compute means with ablation.component_means(model, batches, mode={mode!r})"
        )


def resample_ablate(model, components, source: Tensor, mode: Mode = "total"):
    """Replace each component's output by its output on ``source`` images (same batch size,
    or one image broadcast to the batch)."""
    comps = _components(model, components)
    model.visual.check_images(source)
    values = _outputs_on(model, comps, source, mode)
    n_source = source.shape[0]

    def check_batch(x: Tensor, hook) -> None:  # the first hook of the forward: before any block runs
        if n_source not in (1, x.shape[0]):
            raise ValueError(
                f"resample_ablate: source has {n_source} images but the batch being run has {x.shape[0]}; "
                "pass one source image (broadcast to the batch) or exactly one per image"
            )

    return _then(model.hooks(fwd_hooks=[("visual.hook_embed", check_batch)]),
                 ablate(model, comps, lambda x, c: values[str(c)].to(x).expand_as(x), mode))


@contextlib.contextmanager
def _then(first: contextlib.AbstractContextManager, second: contextlib.AbstractContextManager):
    with first, second as model:
        yield model


def project_out(model, components, directions: Tensor | Mapping[str, Tensor], means: Mapping[str, Tensor] | None = None,
                mode: Mode = "direct"):
    """Remove the span of ``directions`` (``[k, d]``, one set for all or a dict per label)
    from each component's output, relative to its mean when ``means`` is given:
    ``φ' = φ − (φ − m) Q Qᵀ``."""
    return _projection(model, components, directions, means, mode, keep=False)


def keep_only(model, components, directions: Tensor | Mapping[str, Tensor], means: Mapping[str, Tensor] | None = None,
              mode: Mode = "direct"):
    """Keep only the span of ``directions``: ``φ' = m + (φ − m) Q Qᵀ`` (``m`` = mean or zero).
    With no directions this is mean (or zero) ablation."""
    return _projection(model, components, directions, means, mode, keep=True)


def _projection(model, components, directions, means, mode: Mode, keep: bool):
    comps = _components(model, components)
    _check_directions(model, comps, directions, means, mode)

    def basis(c: Component, like: Tensor) -> Tensor:
        d = directions[str(c)] if isinstance(directions, Mapping) else directions
        if d.numel() == 0:
            return d.new_zeros(like.shape[-1], 0).to(like)
        return torch.linalg.qr(d.to(like).T).Q  # orthonormal columns spanning the directions

    def replace(x: Tensor, c: Component) -> Tensor:
        m = means[str(c)].to(x) if means is not None else torch.zeros_like(x)
        Q = basis(c, x)
        inside = ((x - m) @ Q) @ Q.T
        return m + inside if keep else x - inside

    return ablate(model, comps, replace, mode, head_space="result")


def _check_directions(model, comps: list[Component], directions, means, mode: Mode) -> None:
    """Directions ``[k, d]`` and means ``[(pos,) d]`` in the edited space: ``d = d_out``
    (direct) or ``d_model`` (total: heads are edited at ``hook_result``)."""
    cfg = model.cfg.vision
    d = cfg.output_dim if mode == "direct" else cfg.width
    space = "d_out" if mode == "direct" else "d_model"
    for c in comps:
        if isinstance(directions, Mapping) and str(c) not in directions:
            raise KeyError(f"no directions for {c}; give one [k, {d}] tensor per listed component, or one for all")
        dirs = directions[str(c)] if isinstance(directions, Mapping) else directions
        if dirs.ndim != 2 or dirs.shape[1] != d:
            raise ValueError(
                f"directions for {c} have shape {tuple(dirs.shape)}; {mode} mode edits {space} = {d}, "
                f"so they must be [k, {d}]"
            )
        if means is not None:
            if str(c) not in means:
                raise KeyError(f"no mean for {c}; compute them with ablation.component_means")
            if means[str(c)].shape[-1] != d or means[str(c)].ndim > 2:
                raise ValueError(f"mean for {c} has shape {tuple(means[str(c)].shape)}; {mode} mode needs [(pos,) {d}]")


# ---------------------------------------------------------------------------- statistics
def _outputs_on(model, comps: list[Component], images: Tensor, mode: Mode) -> dict[str, Tensor]:
    """Each component's output on ``images`` in the space ``mode`` edits."""
    with torch.no_grad():
        if mode == "direct":
            from hookedclip.decompose import decompose_image

            stack = decompose_image(model, images, components=[str(c) for c in comps])
            return {label: row for label, row in zip(stack.labels, stack.tensor) if label != "rest"}
        names = {_hook_name(c) for c in comps}
        _, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
        return {str(c): _slice(cache[_hook_name(c)], c) for c in comps}


def _hook_name(c: Component) -> str:
    if isinstance(c, Head):
        return f"visual.blocks.{c.layer}.attn.hook_z"
    if isinstance(c, MLP):
        return f"visual.blocks.{c.layer}.hook_mlp_out"
    return "visual.blocks.0.hook_resid_pre"


def _slice(x: Tensor, c: Component) -> Tensor:
    return x[:, :, c.head] if isinstance(c, Head) else x


def component_means(
    model,
    batches: Iterable[Tensor],
    components: Sequence[ComponentLike] | None = None,
    mode: Mode = "direct",
) -> dict[str, Float[Tensor, "..."]]:
    """Dataset means of component outputs for :func:`mean_ablate`, accumulated in float64
    over ``batches`` of images (never the batch under test unless you pass it).

    ``mode="direct"``: mean decomposition rows ``[d_out]`` (normalised, reference LN
    convention); ``mode="total"``: mean hook activations per position (``[pos, d_head]`` for
    heads, ``[pos, d_model]`` for MLPs and the embedding slot).
    """
    cfg = model.cfg.vision
    comps = _components(model, components) if components is not None else _every_component(cfg)
    sums: dict[str, Tensor] = {}
    count = 0
    for images in batches:
        images = images.to(model.device, model.dtype)
        outputs = _outputs_on(model, comps, images, mode)
        for label, value in outputs.items():
            total = value.double().sum(0)
            sums[label] = sums[label] + total if label in sums else total
        count += images.shape[0]
    if count == 0:
        raise ValueError("component_means got no images")
    return {label: (s / count).to(model.dtype) for label, s in sums.items()}


def _every_component(cfg) -> list[Component]:
    from hookedclip.components import all_components

    return all_components(cfg.layers, cfg.heads)


__all__ = [
    "ablate", "zero_ablate", "mean_ablate", "resample_ablate", "project_out", "keep_only", "component_means",
    "ComponentStack",
]
