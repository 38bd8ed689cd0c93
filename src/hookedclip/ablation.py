"""The intervention engine: every edit of a component's output is a context manager that
composes with every other edit and always undoes itself (``docs/engine.md``).

:func:`intervene` is the one entry point and the extension point for new methods: a method
supplies the components, a ``replace(row, component) -> row`` and, in direct mode, an optional
``finalize(unit, rows, new_rows) -> unit`` over the whole rewritten unit embedding. The usual
ablations below (zero / mean / resample / project-out / keep-only) and PCLens's ``keep`` /
``remove`` / ``reweight`` / ``amplify`` are thin wrappers around it. :func:`intervene_at`
hosts a replacement at any hook site (an SAE spliced into ``blocks.{l}.hook_resid_post``).
:func:`active` lists the edits in force on a model.

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
  of the network is untouched. The rows are read from the activations the forward actually
  used, so ``model.hooks`` edits and total-mode edits, entered inside or outside, are part of
  what is decomposed.

Nested contexts of any kinds compose in one way (``docs/engine.md`` has the diagram):

- total edits are hook functions: at one hook point they run in entry order, outer first;
- direct edits are applied together by one rewrite of ``visual.hook_out``: per component,
  the replacements of every context listing it, outer first (an inner replace receives the
  outer one's result); then ``u = e/‖e₀‖ + Σ_c (φ'_c − φ_c)``; then every ``finalize``,
  outer first; then ``e' = ‖e₀‖ u``. ``‖e₀‖`` is the norm of the embedding before any direct
  rewrite, so nesting ``A`` then ``B`` over disjoint components equals ``B`` then ``A`` and
  one context over ``A ∪ B``.

Replacement values (``means``, ``directions``) live in the space the mode edits: for
``"total"``, the hook's space (``hook_z`` ``[pos, d_head]`` per head, ``[pos, d_model]`` for
MLPs and embed; directions in ``d_model``); for ``"direct"``, the joint space ``d_out``.
:func:`component_means` computes either kind from batches of images.
"""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.components import Component, ComponentLike, Head, select
from hookedclip.decompose import ComponentStack, needed_hooks, stack_from_cache
from hookedclip.names import act_name, component_hook

Mode = Literal["total", "direct"]
# replace(values, component) -> new values; values are the component's output in the edited space
Replace = Callable[[Tensor, Component], Tensor]
# finalize(unit, rows, new_rows) -> unit: the whole rewritten unit embedding [batch, d_out] (direct mode);
# rows / new_rows map each of the context's component labels to its row before / after every replacement
Finalize = Callable[[Tensor, dict[str, Tensor], dict[str, Tensor]], Tensor]
# replace(values, hook_name) -> new values at an arbitrary hook site (total mode)
SiteReplace = Callable[[Tensor, str], Tensor]


def _components(model, components: ComponentLike | Sequence[ComponentLike]) -> list[Component]:
    return select(model, components)


# ---------------------------------------------------------------------------- the registry
@dataclass(eq=False)
class Edit:
    """One intervention in force on a model, as :func:`active` lists them (outermost first).

    ``site`` is set for :func:`intervene_at` edits (``components`` is then empty)."""

    mode: Mode
    components: tuple[Component, ...]
    replace: Callable | None
    finalize: Finalize | None = None
    site: str | None = None

    def __str__(self) -> str:
        where = self.site or ", ".join(map(str, self.components)) or "the unit embedding"
        parts = [name for name, fn in (("replace", self.replace), ("finalize", self.finalize)) if fn is not None]
        return f"{self.mode} {'+'.join(parts)} on {where}"


@dataclass
class _Engine:
    """The edits in force on one model, outermost first, and what the next direct rewrite reads."""

    edits: list[Edit] = field(default_factory=list)
    captured: dict[str, Tensor] = field(default_factory=dict)

    def direct(self) -> list[Edit]:
        return [edit for edit in self.edits if edit.mode == "direct"]


_ENGINES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def active(model) -> list[Edit]:
    """The engine's edits in force on ``model``, outermost first (empty outside every context)."""
    engine = _ENGINES.get(model)
    return list(engine.edits) if engine is not None else []


@contextlib.contextmanager
def _registered(model, edit: Edit) -> Iterator[_Engine]:
    engine = _ENGINES.setdefault(model, _Engine())
    engine.edits.append(edit)
    try:
        yield engine
    finally:
        engine.edits.remove(edit)  # by identity (eq=False): contexts closed out of order remove their own
        if not engine.edits:
            _ENGINES.pop(model, None)


# ---------------------------------------------------------------------------- the entry points
def intervene(
    model,
    components: ComponentLike | Sequence[ComponentLike],
    replace: Replace | None = None,
    mode: Mode = "total",
    finalize: Finalize | None = None,
    head_space: Literal["z", "result"] = "z",
) -> contextlib.AbstractContextManager:
    """The engine's one entry point: a context in which each listed component's output is
    ``replace(output, component)``.

    Args:
        components: labels or components (``"L10H3"``, ``"mlp9"``, ``"embed"``, ``"L8-11"``);
            a component listed twice is edited once.
        replace: ``replace(x, component) -> x``. In total mode ``x`` is the hook's value (heads:
            ``[batch, pos, d_head]`` at ``hook_z`` or ``[batch, pos, d_model]`` at ``hook_result``
            per ``head_space``; MLPs and embed: ``[batch, pos, d_model]``), in the forward's dtype.
            In direct mode ``x`` is the component's decomposition row ``φ_c [batch, d_out]``
            (normalised by the clean ``‖e‖``, float64) as left by outer contexts; the result must
            broadcast to it. ``None``: leave the rows as they are (a finalize-only edit).
        mode: ``"total"`` or ``"direct"`` (module docstring).
        finalize: direct mode only. ``finalize(unit, rows, new_rows) -> unit`` maps the whole
            rewritten unit embedding ``u [batch, d_out]`` (float64, bias included) after every
            context's replacements; ``rows`` / ``new_rows`` are this context's rows before / after
            them, by label. PCLens's ``mean_ablate_all`` and ``amplify`` are finalizes.
        head_space: where heads are edited in total mode.
    """
    comps = _components(model, components)
    _check_mode(mode)
    if head_space not in ("z", "result"):
        raise ValueError(f"head_space must be 'z' or 'result', got {head_space!r}")
    if finalize is not None and mode != "direct":
        raise ValueError("finalize acts on the embedding's direct path: use mode='direct' (total mode edits the "
                         "forward pass, where there is no rewritten embedding to finalize)")
    if replace is None and (mode == "total" or finalize is None):
        raise TypeError("intervene needs a replace function (direct mode: a replace, a finalize or both)")
    if not comps and finalize is None:
        return model.hooks()
    edit = Edit(mode, tuple(comps), replace, finalize)
    if mode == "direct":
        return _direct_context(model, edit)
    return _hooked(model, edit, _total_hooks(comps, replace, head_space))


def ablate(model, components, replace: Replace, mode: Mode = "total", head_space: Literal["z", "result"] = "z"):
    """Deprecated name of :func:`intervene`."""
    warnings.warn("ablation.ablate is deprecated; use ablation.intervene (same arguments)", DeprecationWarning,
                  stacklevel=2)
    return intervene(model, components, replace, mode, head_space=head_space)


def intervene_at(model, site: str, replace: SiteReplace) -> contextlib.AbstractContextManager:
    """A total-mode replacement at any hook site: ``replace(x, site) -> x`` on the value of the
    hook point ``site`` (e.g. ``act_name("resid_post", 3)`` for an SAE spliced into the
    residual stream; same shape). It nests like every total edit (hook order, inner after
    outer) and direct-mode rows downstream of the site are read from the spliced forward."""
    model.resolve_hook_names(site)  # an unknown site raises, naming the closest ones
    edit = Edit("total", (), replace, site=site)
    return _hooked(model, edit, [(site, lambda x, hook: replace(x, hook.name))])


def _check_mode(mode: str) -> None:
    if mode not in ("total", "direct"):
        raise ValueError(f"mode must be 'total' or 'direct', got {mode!r}")


@contextlib.contextmanager
def _hooked(model, edit: Edit, hooks: list) -> Iterator:
    with _registered(model, edit), model.hooks(fwd_hooks=hooks):
        yield model


# ---------------------------------------------------------------------------- total mode
def _total_hooks(comps: list[Component], replace: Replace, head_space: str) -> list:
    hooks = []
    for comp in comps:
        name = component_hook(comp, head_space)
        if isinstance(comp, Head):
            hooks.append((name, _edit_head(comp, replace)))
        else:
            hooks.append((name, lambda x, hook, c=comp: replace(x, c)))
    return hooks


def _edit_head(comp: Head, replace: Replace):
    def hook(x: Tensor, hp) -> Tensor:  # x: [batch, pos, head, d]
        x = x.clone()
        x[:, :, comp.head] = replace(x[:, :, comp.head], comp)
        return x

    return hook


# ---------------------------------------------------------------------------- direct mode
@contextlib.contextmanager
def _direct_context(model, edit: Edit) -> Iterator:
    """Register ``edit`` and rewrite ``hook_out`` while it is in force.

    Every direct context captures the activations its rows need with module forward hooks,
    which run after every ``model.hooks`` function at that point whatever the nesting order;
    the outermost direct context's ``hook_out`` function applies all of them (:func:`_rewrite`).
    An outer ``model.hooks`` edit of ``hook_out`` itself runs before that rewrite, an inner
    one after it.
    """
    names = sorted(needed_hooks(model, "visual", [str(c) for c in edit.components]) | {act_name("pooled")})
    with _registered(model, edit) as engine:

        def capture(module, inputs, output: Tensor) -> None:
            engine.captured[module.name] = output

        def rewrite(e: Tensor, hook) -> Tensor | None:
            if engine.direct()[0] is not edit:
                return None  # the outermost direct context rewrites for all of them
            return _rewrite(model, engine, e)

        handles = []
        try:
            handles = [model.hook_dict[n].register_forward_hook(capture) for n in names]
            # The no-op functions make the hook points active (hook_pattern is only computed then).
            with model.hooks(fwd_hooks=[(names, _keep_active), (act_name("out"), rewrite)]):
                yield model
        finally:
            for handle in handles:
                handle.remove()


def _keep_active(x: Tensor, hook) -> None:
    return None


def _rewrite(model, engine: _Engine, e: Float[Tensor, "batch d_out"]) -> Float[Tensor, "batch d_out"]:
    """``e' = ‖e₀‖ · finalize_n(… finalize_1(e/‖e₀‖ + Σ_c (φ'_c − φ_c)))`` over every direct edit
    in force, ``e₀`` the embedding before any direct rewrite (the projection of ``hook_pooled``)."""
    captured, engine.captured = engine.captured, {}
    direct = engine.direct()
    clean = _projected(model, captured[act_name("pooled")])
    norm = clean.norm(dim=-1, keepdim=True).to(torch.float64)
    rows = _rows(model, captured, clean, [str(c) for edit in direct for c in edit.components])
    new = dict(rows)
    for edit in direct:  # outer first: an inner replace receives the outer one's result
        if edit.replace is not None:
            for c in edit.components:
                new[str(c)] = _as_row(edit.replace(new[str(c)], c), rows[str(c)], f"replace for {c}")
    unit = e.to(torch.float64) / norm
    for label, row in rows.items():
        unit = unit + (new[label] - row)
    for edit in direct:
        if edit.finalize is not None:
            mine = [str(c) for c in edit.components]
            out = edit.finalize(unit, {k: rows[k] for k in mine}, {k: new[k] for k in mine})
            unit = _as_row(out, unit, "finalize")
    return (unit * norm).to(e.dtype)


def _projected(model, pooled: Tensor) -> Tensor:
    visual = model.visual
    return pooled if visual.W_proj is None else F.linear(pooled, visual.W_proj.T, visual.b_proj)


def _rows(model, captured: dict[str, Tensor], clean: Tensor, labels: list[str]) -> dict[str, Tensor]:
    """Each labelled component's row ``φ_c [batch, d_out]`` (float64), normalised by ``‖clean‖``."""
    labels = list(dict.fromkeys(labels))
    if not labels:
        return {}
    stack = stack_from_cache(model, "visual", None, captured, clean, components=labels)
    return {label: row.to(torch.float64) for label, row in zip(stack.labels, stack.tensor) if label != "rest"}


def _as_row(value: object, like: Tensor, what: str) -> Tensor:
    if not isinstance(value, Tensor):
        raise TypeError(f"{what} returned {type(value).__name__}; it must return a Tensor shaped like its input")
    try:
        return torch.broadcast_to(value.to(like), like.shape)
    except RuntimeError:
        raise ValueError(f"{what} returned shape {tuple(value.shape)}; direct mode needs {tuple(like.shape)} "
                         "([batch, d_out]) or a shape that broadcasts to it") from None


# ---------------------------------------------------------------------------- the usual ablations
def zero_ablate(model, components, mode: Mode = "total"):
    """Set each component's output to zero."""
    return intervene(model, components, lambda x, c: torch.zeros_like(x), mode)


def mean_ablate(model, components, means: Mapping[str, Tensor], mode: Mode = "total"):
    """Replace each component's output by its mean (``means[label]``, see :func:`component_means`)."""
    comps = _components(model, components)
    missing = [str(c) for c in comps if str(c) not in means]
    if missing:
        raise KeyError(f"no mean for {', '.join(missing)}; compute them with ablation.component_means(model, batches, mode={mode!r})")
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

    return _then(model.hooks(fwd_hooks=[(act_name("embed"), check_batch)]),
                 intervene(model, comps, lambda x, c: values[str(c)].to(x).expand_as(x), mode))


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


# ---------------------------------------------------------------------------- statistics
def _outputs_on(model, comps: list[Component], images: Tensor, mode: Mode) -> dict[str, Tensor]:
    """Each component's output on ``images`` in the space ``mode`` edits."""
    with torch.no_grad():
        if mode == "direct":
            from hookedclip.decompose import decompose_image

            stack = decompose_image(model, images, components=[str(c) for c in comps])
            return {label: row for label, row in zip(stack.labels, stack.tensor) if label != "rest"}
        names = {component_hook(c) for c in comps}
        _, cache = model.run_with_cache(images, names_filter=lambda n: n in names)
        return {str(c): _slice(cache[component_hook(c)], c) for c in comps}


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
    "intervene", "intervene_at", "active", "Edit", "zero_ablate", "mean_ablate", "resample_ablate", "project_out",
    "keep_only", "component_means", "ablate", "ComponentStack",
]
