"""Addresses of model components: ``Head(layer, head)``, ``MLP(layer)``, ``Embed()``.

Strings parse to them: ``"L10H3"``, ``"mlp9"``, ``"embed"``, and ranges ``"L8-11"`` (every
head of layers 8 to 11), ``"L10"`` (every head of layer 10) or ``"L8-"`` (layer 8 to the
last). Negative layers count from the end when a model is given: ``"L-4-"`` is every head
of the last four layers. With a model, ``"heads"`` is every head and ``"all"`` every
component (embedding slot, heads and MLPs).

:func:`select` is the one parser every method uses to choose components; its default,
:data:`ALL_HEADS`, is every attention head of the vision tower.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True, order=True)
class Head:
    layer: int
    head: int

    def __str__(self) -> str:
        return f"L{self.layer}H{self.head}"


@dataclass(frozen=True, order=True)
class MLP:
    layer: int

    def __str__(self) -> str:
        return f"mlp{self.layer}"


@dataclass(frozen=True, order=True)
class Embed:
    def __str__(self) -> str:
        return "embed"


Component = Head | MLP | Embed
ComponentLike = Component | str

_HEAD = re.compile(r"^L(-?\d+)H(\d+)$", re.IGNORECASE)
_LAYER_RANGE = re.compile(r"^L(-?\d+)(-(-?\d+)?)?$", re.IGNORECASE)  # "L10", "L8-11", "L8-" (to the last)
_MLP = re.compile(r"^mlp(-?\d+)$", re.IGNORECASE)


#: Every attention head of the vision tower: the default wherever a method chooses components.
ALL_HEADS = "heads"
#: Every component (embedding slot, then each layer's heads and MLP): what a decomposition keeps.
ALL_COMPONENTS = "all"
#: The heads of the last four layers, the set the TextSpan and PCLens papers analyse.
LAST_4_LAYERS = "L-4-"

_EXAMPLES = "'L10H3', 'mlp9', 'embed', 'L8-11', 'L10', 'L-4-', 'heads', 'all'"


def parse(
    spec: ComponentLike | Iterable[ComponentLike], n_layers: int | None = None, n_heads: int | None = None
) -> list[Component]:
    """Components named by ``spec`` (one or many), ranges expanded, validated against the
    model's ``n_layers`` / ``n_heads`` when given."""
    if isinstance(spec, (Head, MLP, Embed, str)):
        spec = [spec]
    out: list[Component] = []
    for item in spec:
        out += _parse_one(item, n_layers, n_heads)
    return out


def select(
    model_or_cfg,
    components: ComponentLike | Iterable[ComponentLike] | None = ALL_HEADS,
    tower: str = "visual",
    heads_only: bool = False,
) -> list[Component]:
    """The components a method works on: ``components`` parsed against ``model_or_cfg``'s
    ``tower`` (ranges expanded, negative layers resolved, repeats dropped, request order kept).

    Args:
        model_or_cfg: a :class:`~hookedclip.HookedCLIP`, one of its towers, a ``CLIPConfig``
            or a tower config (anything that knows its layers and heads).
        components: one spec or several (``"L10H3"``, ``"L8-11"``, ``"L-4-"``, ``"mlp9"``,
            ``Head(10, 3)``, ...); ``"heads"`` (:data:`ALL_HEADS`, the default; ``None``
            means the same) or ``"all"`` (:data:`ALL_COMPONENTS`).
        tower: ``"visual"`` or ``"text"``.
        heads_only: refuse MLPs and the embedding slot (methods that analyse attention heads).

    Raises ``ValueError`` naming the model's valid layers and heads for a spec outside them.
    """
    n_layers, n_heads = _dims(model_or_cfg, tower)
    spec = ALL_HEADS if components is None else components
    comps = list(dict.fromkeys(parse(spec, n_layers, n_heads)))
    if heads_only:
        other = [str(c) for c in comps if not isinstance(c, Head)]
        if other:
            raise ValueError(
                f"{', '.join(other)}: not heads; this method analyses attention heads only "
                "(e.g. 'L8-11', 'L10H3', 'heads')"
            )
    return comps


def _dims(model_or_cfg, tower: str) -> tuple[int, int]:
    """``(n_layers, n_heads)`` of ``tower``, from a model, a tower or a config."""
    cfg = getattr(model_or_cfg, "cfg", model_or_cfg)
    if hasattr(cfg, "vision"):  # the whole model's config: pick the tower
        if tower not in ("visual", "text"):
            raise ValueError(f"tower must be 'visual' or 'text', got {tower!r}")
        cfg = cfg.vision if tower == "visual" else cfg.text
        if cfg is None:
            raise ValueError("this model has no text tower")
    if not (hasattr(cfg, "layers") and hasattr(cfg, "heads")):
        raise TypeError(
            f"cannot read layers and heads from {type(model_or_cfg).__name__}; "
            "pass a HookedCLIP, one of its towers or a config"
        )
    return int(cfg.layers), int(cfg.heads)


def _parse_one(item: ComponentLike, n_layers: int | None, n_heads: int | None) -> list[Component]:
    if isinstance(item, (Head, MLP, Embed)):
        comps = [item]
    elif not isinstance(item, str):
        raise TypeError(f"cannot parse {item!r} as a component (use Head, MLP, Embed or {_EXAMPLES})")
    elif item.lower() in (ALL_HEADS, ALL_COMPONENTS):
        if n_layers is None or n_heads is None:
            raise ValueError(f"{item!r} names components of a model: give its n_layers and n_heads")
        every = all_components(n_layers, n_heads)
        comps = every if item.lower() == ALL_COMPONENTS else [c for c in every if isinstance(c, Head)]
    elif item.lower() == "embed":
        comps = [Embed()]
    elif m := _HEAD.match(item):
        comps = [Head(int(m.group(1)), int(m.group(2)))]
    elif m := _MLP.match(item):
        comps = [MLP(int(m.group(1)))]
    elif m := _LAYER_RANGE.match(item):
        comps = _layer_range(item, m, n_layers, n_heads)
    else:
        raise ValueError(f"cannot parse component {item!r}{_valid(n_layers, n_heads)}; examples: {_EXAMPLES}")
    return [_validated(c, n_layers, n_heads) for c in comps]


def _valid(n_layers: int | None, n_heads: int | None) -> str:
    """`` (the model has layers 0..L-1, heads 0..H-1)`` as far as known, for error messages."""
    known = [f"{what} 0..{n - 1}" for what, n in (("layers", n_layers), ("heads", n_heads)) if n is not None]
    return f" (the model has {', '.join(known)})" if known else ""


def _layer_range(item: str, m: re.Match, n_layers: int | None, n_heads: int | None) -> list[Component]:
    """Every head of the layers ``first..last`` named by ``"L8-11"``, ``"L10"`` or ``"L8-"``."""
    if n_heads is None:
        raise ValueError(f"{item!r} names whole layers: give the model's n_heads to expand it")
    first = int(m.group(1))
    if m.group(2) is None:
        last = first
    elif m.group(3) is not None:
        last = int(m.group(3))
    elif n_layers is None:
        raise ValueError(f"{item!r} runs to the last layer: give the model's n_layers")
    else:
        last = n_layers - 1
    first, last = (_resolve_layer(x, n_layers, item) for x in (first, last))
    if first > last:
        raise ValueError(
            f"{item!r} is an empty range: layer {first} comes after layer {last}{_valid(n_layers, n_heads)}"
        )
    return [Head(layer, h) for layer in range(first, last + 1) for h in range(n_heads)]


def _resolve_layer(layer: int, n_layers: int | None, what: object) -> int:
    if layer < 0 and n_layers is None:
        raise ValueError(f"negative layer in {what!r} needs the model's n_layers")
    if n_layers is not None and not -n_layers <= layer < n_layers:
        raise ValueError(
            f"{what}: layer {layer} does not exist; the model has layers 0..{n_layers - 1} "
            f"(-{n_layers}..-1 from the end)"
        )
    return layer + n_layers if layer < 0 else layer


def _validated(c: Component, n_layers: int | None, n_heads: int | None) -> Component:
    if isinstance(c, Embed):
        return c
    layer = _resolve_layer(c.layer, n_layers, c)
    if isinstance(c, MLP):
        return MLP(layer)
    if n_heads is not None and not 0 <= c.head < n_heads:
        raise ValueError(f"{c}: head {c.head} does not exist; each layer has heads 0..{n_heads - 1}")
    return Head(layer, c.head)


def all_components(n_layers: int, n_heads: int) -> list[Component]:
    """Every component in decomposition order: embed, then per layer its heads and its MLP."""
    comps: list[Component] = [Embed()]
    for layer in range(n_layers):
        comps += [Head(layer, h) for h in range(n_heads)]
        comps.append(MLP(layer))
    return comps
