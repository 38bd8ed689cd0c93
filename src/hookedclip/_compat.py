"""Old argument names kept for one release: they still work and warn, naming the new one."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable
from typing import Any


def renamed_arguments(**renames: str | tuple[str, Callable[[Any], Any]]):
    """Decorator: accept each old keyword ``old=`` as the new one, with a ``DeprecationWarning``.

    ``renames`` maps an old name to the new name, or to ``(new name, convert)`` when the old
    value needs translating (e.g. ``last_layers=2`` becomes ``components="L-2-"``). Passing
    both the old and the new name is a ``TypeError``.
    """

    def wrap(fn: Callable) -> Callable:
        @functools.wraps(fn)
        def call(*args, **kwargs):
            for old, target in renames.items():
                if old in kwargs:
                    new, convert = target if isinstance(target, tuple) else (target, None)
                    if new in kwargs:
                        raise TypeError(f"{fn.__name__}() got both {old}= (deprecated) and {new}=; pass only {new}=")
                    warnings.warn(
                        f"{fn.__name__}({old}=...) is deprecated and will be removed; use {new}=...",
                        DeprecationWarning,
                        stacklevel=2,
                    )
                    value = kwargs.pop(old)
                    kwargs[new] = convert(value) if convert is not None else value
            return fn(*args, **kwargs)

        return call

    return wrap
