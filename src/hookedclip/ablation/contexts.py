"""The usual ablations as engine contexts: zero, mean, resample, project-out and keep-only."""

from __future__ import annotations

import contextlib
from collections.abc import Mapping

import torch
from torch import Tensor

from hookedclip.ablation.engine import Mode, intervene
from hookedclip.ablation.means import _outputs_on
from hookedclip.components import Component, Head, select
from hookedclip.names import act_name


def zero_ablate(model, components, mode: Mode = "total"):
    """Set each component's output to zero."""
    return intervene(model, components, lambda x, c: torch.zeros_like(x), mode)


def mean_ablate(model, components, means: Mapping[str, Tensor], mode: Mode = "total"):
    """Replace each component's output by its mean (``means[label]``, see :func:`component_means`)."""
    comps = select(model, components)
    missing = [str(c) for c in comps if str(c) not in means]
    if missing:
        raise KeyError(
            f"no mean for {', '.join(missing)}; compute them with ablation.component_means(model, batches, mode={mode!r})"
        )
    for c in comps:
        _check_mean_shape(model, c, means[str(c)], mode)
    return intervene(model, comps, lambda x, c: means[str(c)].to(x).expand_as(x), mode)


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
    comps = select(model, components)
    model.visual.check_images(source)
    values = _outputs_on(model, comps, source, mode)
    n_source = source.shape[0]

    def check_batch(x: Tensor, hook) -> None:  # the first hook of the forward: before any block runs
        if n_source not in (1, x.shape[0]):
            raise ValueError(
                f"resample_ablate: source has {n_source} images but the batch being run has {x.shape[0]}; "
                "pass one source image (broadcast to the batch) or exactly one per image"
            )

    return _then(
        model.hooks(fwd_hooks=[(act_name("embed"), check_batch)]),
        intervene(model, comps, lambda x, c: values[str(c)].to(x).expand_as(x), mode),
    )


@contextlib.contextmanager
def _then(first: contextlib.AbstractContextManager, second: contextlib.AbstractContextManager):
    with first, second as model:
        yield model


def _projection_context(name: str, keep: bool, doc: str):
    """A public projection context; ``project_out`` and ``keep_only`` differ only in ``keep``."""

    def context(
        model,
        components,
        directions: Tensor | Mapping[str, Tensor],
        means: Mapping[str, Tensor] | None = None,
        mode: Mode = "direct",
    ):
        return _projection(model, components, directions, means, mode, keep=keep)

    context.__name__ = context.__qualname__ = name
    context.__doc__ = doc
    return context


project_out = _projection_context(
    "project_out",
    keep=False,
    doc="""Remove the span of ``directions`` (``[k, d]``, one set for all or a dict per label)
    from each component's output, relative to its mean when ``means`` is given:
    ``φ' = φ − (φ − m) Q Qᵀ``.""",
)
keep_only = _projection_context(
    "keep_only",
    keep=True,
    doc="""Keep only the span of ``directions``: ``φ' = m + (φ − m) Q Qᵀ`` (``m`` = mean or zero).
    With no directions this is mean (or zero) ablation.""",
)


def _projection(model, components, directions, means, mode: Mode, keep: bool):
    comps = select(model, components)
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

    return intervene(model, comps, replace, mode, head_space="result")


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
