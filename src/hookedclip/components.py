"""Addresses of model components: ``Head(layer, head)``, ``MLP(layer)``, ``Embed()``.

Strings parse to them: ``"L10H3"``, ``"mlp9"``, ``"embed"``, and ranges ``"L8-11"`` (every
head of layers 8 to 11) or ``"L10"`` (every head of layer 10). Negative layers count
from the end when a model is given.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Union


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


Component = Union[Head, MLP, Embed]
ComponentLike = Union[Component, str]

_HEAD = re.compile(r"^L(-?\d+)H(\d+)$", re.IGNORECASE)
_LAYER_RANGE = re.compile(r"^L(-?\d+)(?:-(-?\d+))?$", re.IGNORECASE)
_MLP = re.compile(r"^mlp(-?\d+)$", re.IGNORECASE)


def parse(spec: ComponentLike | Iterable[ComponentLike], n_layers: int | None = None, n_heads: int | None = None) -> list[Component]:
    """Components named by ``spec`` (one or many), ranges expanded, validated against the
    model's ``n_layers`` / ``n_heads`` when given."""
    if isinstance(spec, (Head, MLP, Embed, str)):
        spec = [spec]
    out: list[Component] = []
    for item in spec:
        out += _parse_one(item, n_layers, n_heads)
    return out


def _parse_one(item: ComponentLike, n_layers: int | None, n_heads: int | None) -> list[Component]:
    if isinstance(item, (Head, MLP, Embed)):
        comps = [item]
    elif not isinstance(item, str):
        raise TypeError(f"cannot parse {item!r} as a component (use Head, MLP, Embed or 'L10H3', 'mlp9', 'embed', 'L8-11')")
    elif item.lower() == "embed":
        comps = [Embed()]
    elif m := _HEAD.match(item):
        comps = [Head(int(m.group(1)), int(m.group(2)))]
    elif m := _MLP.match(item):
        comps = [MLP(int(m.group(1)))]
    elif m := _LAYER_RANGE.match(item):
        if n_heads is None:
            raise ValueError(f"{item!r} names whole layers: give the model's n_heads to expand it")
        first = int(m.group(1))
        last = int(m.group(2)) if m.group(2) is not None else first
        first, last = (_resolve_layer(x, n_layers, item) for x in (first, last))
        comps = [Head(layer, h) for layer in range(first, last + 1) for h in range(n_heads)]
    else:
        raise ValueError(f"cannot parse component {item!r}; examples: 'L10H3', 'mlp9', 'embed', 'L8-11', 'L10'")
    return [_validated(c, n_layers, n_heads) for c in comps]


def _resolve_layer(layer: int, n_layers: int | None, what: object) -> int:
    if layer < 0:
        if n_layers is None:
            raise ValueError(f"negative layer in {what!r} needs the model's n_layers")
        layer += n_layers
    if n_layers is not None and not 0 <= layer < n_layers:
        raise ValueError(f"{what}: layer {layer} does not exist; the model has layers 0..{n_layers - 1}")
    return layer


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
