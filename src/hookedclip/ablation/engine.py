"""The engine itself: the edits in force on a model, and :func:`intervene` / :func:`intervene_at`,
through which every context enters (total edits as hook functions, direct edits as one
rewrite of ``visual.hook_out``; the package doc gives the composition rule)."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

from hookedclip.components import Component, ComponentLike, Head, select
from hookedclip.decompose import needed_hooks, stack_from_cache
from hookedclip.names import act_name, component_hook

Mode = Literal["total", "direct"]
# replace(values, component) -> new values; values are the component's output in the edited space
Replace = Callable[[Tensor, Component], Tensor]
# finalize(unit, rows, new_rows) -> unit: the whole rewritten unit embedding [batch, d_out] (direct mode);
# rows / new_rows map each of the context's component labels to its row before / after every replacement
Finalize = Callable[[Tensor, dict[str, Tensor], dict[str, Tensor]], Tensor]
# replace(values, hook_name) -> new values at an arbitrary hook site (total mode)
SiteReplace = Callable[[Tensor, str], Tensor]


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
    comps = select(model, components)
    _check_mode(mode)
    if head_space not in ("z", "result"):
        raise ValueError(f"head_space must be 'z' or 'result', got {head_space!r}")
    if finalize is not None and mode != "direct":
        raise ValueError(
            "finalize acts on the embedding's direct path: use mode='direct' (total mode edits the "
            "forward pass, where there is no rewritten embedding to finalize)"
        )
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
    warnings.warn(
        "ablation.ablate is deprecated; use ablation.intervene (same arguments)", DeprecationWarning, stacklevel=2
    )
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
        raise ValueError(
            f"{what} returned shape {tuple(value.shape)}; direct mode needs {tuple(like.shape)} "
            "([batch, d_out]) or a shape that broadcasts to it"
        ) from None
