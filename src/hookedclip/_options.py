"""Keyword options one public function shares with its twin, declared once as a ``TypedDict``.

The twin takes ``**options: Unpack[SomeOptions]`` (editors and type checkers still see every
name) and reads the defaults from the reference function's signature, so no default is written
twice."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from typing import Any


def completed(reference: Callable, options_type: type, given: Mapping[str, Any], caller: str) -> dict[str, Any]:
    """``given`` with every option ``options_type`` declares that it lacks set to ``reference``'s
    default. A name ``options_type`` does not declare is a ``TypeError`` naming ``caller``."""
    known = options_type.__required_keys__ | options_type.__optional_keys__
    unknown = sorted(set(given) - known)
    if unknown:
        raise TypeError(f"{caller}() got unexpected option(s) {unknown}; it accepts {sorted(known)}")
    params = inspect.signature(reference).parameters
    return {name: given[name] if name in given else params[name].default for name in known}
