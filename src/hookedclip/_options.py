"""Keyword options several public functions share, declared once as a ``TypedDict``.

A function takes ``**options: Unpack[SomeOptions]`` (editors and type checkers still see every
name) and fills the ones not given from one place: the signature of the reference function it
twins, or a module's table of defaults where a family of functions shares its options. No
default is written twice."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


def completed(
    defaults: Callable | Mapping[str, Any], options_type: type, given: Mapping[str, Any], caller: str
) -> dict[str, Any]:
    """``given`` with every option ``options_type`` declares that it lacks set to its default:
    the parameter's default when ``defaults`` is a reference function, else ``defaults[name]``.
    A name ``options_type`` does not declare is a ``TypeError`` naming ``caller``."""
    known = options_type.__required_keys__ | options_type.__optional_keys__
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{caller}() got unexpected option(s) {unknown}; it accepts {sorted(known)}")
    if callable(defaults):
        defaults = {name: param.default for name, param in inspect.signature(defaults).parameters.items()}
    return {name: given[name] if name in given else defaults[name] for name in known}
