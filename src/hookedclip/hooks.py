"""Hook points and the hook-managing root module.

A :class:`HookPoint` is an identity module placed on every interesting tensor. Hook
functions are kept in plain lists on the hook point (not as ``nn.Module`` hooks), so an
inactive hook point costs one attribute lookup, and modules can ask ``hook.is_active()``
to decide whether to materialise an expensive tensor (the per-head ``hook_result``) or
to take a fused kernel.
"""

from __future__ import annotations

import contextlib
import difflib
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Union

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from hookedclip.cache import ActivationCache

HookFn = Callable[[Tensor, "HookPoint"], Union[Tensor, None]]
NameFilter = Union[None, str, Sequence[str], Callable[[str], bool]]
HookSpec = tuple[Union[str, Callable[[str], bool]], HookFn]


class HookPoint(nn.Module):
    """Identity on a named tensor; runs forward and backward hook functions on it.

    A forward hook ``fn(tensor, hook)`` may return a replacement tensor (same shape) or
    ``None`` to leave the tensor unchanged. A backward hook receives the gradient of the
    loss with respect to the tensor and may likewise return a replacement gradient.
    Hooks run in the order they were added: outer contexts before inner ones.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []

    def is_active(self) -> bool:
        return bool(self.fwd_fns or self.bwd_fns)

    def forward(self, x: Tensor) -> Tensor:
        for fn in self.fwd_fns:
            out = fn(x, self)
            if out is not None:
                _check_replacement(self.name, x, out)
                x = out
        if self.bwd_fns and x.requires_grad:
            x.register_hook(self._run_bwd)
        return x

    def _run_bwd(self, grad: Tensor) -> Tensor:
        for fn in list(self.bwd_fns):
            out = fn(grad, self)
            if out is not None:
                grad = out
        return grad

    def layer(self) -> int | None:
        """The block index this hook point sits in, or ``None`` outside the blocks."""
        match = re.search(r"blocks\.(\d+)\.", self.name)
        return int(match.group(1)) if match else None

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _check_replacement(name: str, old: Tensor, new: object) -> None:
    if not isinstance(new, Tensor):
        raise TypeError(
            f"hook on {name!r} returned {type(new).__name__}; a hook must return a Tensor or None"
        )
    if new.shape != old.shape:
        raise ValueError(
            f"hook on {name!r} returned shape {tuple(new.shape)}, expected {tuple(old.shape)}; "
            "a replacement must keep the hooked tensor's shape"
        )


class HookedRootModule(nn.Module):
    """Mixin for the top-level model: names its hook points and manages hooks on them.

    Call :meth:`setup` at the end of ``__init__`` so every :class:`HookPoint` learns its
    full dotted name (``visual.blocks.3.attn.hook_z``).
    """

    hook_dict: dict[str, HookPoint]

    def setup(self) -> None:
        self.hook_dict = {}
        for name, module in self.named_modules():
            if isinstance(module, HookPoint):
                module.name = name
                self.hook_dict[name] = module

    def hook_points(self) -> list[str]:
        """All hook point names, in forward order."""
        return list(self.hook_dict)

    # ------------------------------------------------------------------ resolution
    def resolve_hook_names(self, name_or_filter: NameFilter) -> list[str]:
        """Turn a name, a list of names or a predicate into the matching hook point names.

        ``None`` means every hook point. A string or list names hook points exactly; an
        unknown name raises ``KeyError`` listing the closest valid names.
        """
        if name_or_filter is None:
            return self.hook_points()
        if callable(name_or_filter):
            return [n for n in self.hook_dict if name_or_filter(n)]
        names = [name_or_filter] if isinstance(name_or_filter, str) else list(name_or_filter)
        for name in names:
            self._check_name(name)
        return names

    def _check_name(self, name: str) -> None:
        if name in self.hook_dict:
            return
        close = difflib.get_close_matches(name, list(self.hook_dict), n=5, cutoff=0.5)
        hint = f"; closest: {', '.join(close)}" if close else ""
        raise KeyError(
            f"unknown hook point {name!r}{hint}. `model.hook_points()` lists all "
            f"{len(self.hook_dict)} names."
        )

    # ------------------------------------------------------------------ contexts
    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[HookSpec] = (),
        bwd_hooks: Iterable[HookSpec] = (),
    ) -> Iterator["HookedRootModule"]:
        """Add hooks for the duration of the ``with`` block; they are removed on exit.

        ``fwd_hooks`` and ``bwd_hooks`` are ``(name_or_filter, fn)`` pairs, where
        ``name_or_filter`` is a hook point name or a predicate on names and
        ``fn(tensor, hook)`` returns a replacement tensor or ``None``. Hooks are removed
        even when the body raises. Contexts nest; inner hooks run after outer ones.
        """
        added: list[tuple[list[HookFn], HookFn]] = []
        try:
            for specs, attr in ((fwd_hooks, "fwd_fns"), (bwd_hooks, "bwd_fns")):
                for name_or_filter, fn in specs:
                    for name in self.resolve_hook_names(name_or_filter):
                        fns = getattr(self.hook_dict[name], attr)
                        fns.append(fn)
                        added.append((fns, fn))
            yield self
        finally:
            for fns, fn in reversed(added):
                # Remove by identity: the same function may legitimately be added twice.
                for i in range(len(fns) - 1, -1, -1):
                    if fns[i] is fn:
                        del fns[i]
                        break

    def reset_hooks(self) -> None:
        """Remove every hook from every hook point (escape hatch for interactive use)."""
        for hp in self.hook_dict.values():
            hp.fwd_fns.clear()
            hp.bwd_fns.clear()

    @contextlib.contextmanager
    def cache(
        self,
        names_filter: NameFilter = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        incl_bwd: bool = False,
    ) -> Iterator["ActivationCache"]:
        """Yield an :class:`ActivationCache` that fills with whatever runs inside.

        Forward values are stored detached, optionally moved to ``device`` / ``dtype``.
        With ``incl_bwd=True`` the gradients reaching each hook point during a backward
        pass inside the block are stored too, under ``name + "_grad"``.
        """
        from hookedclip.cache import ActivationCache

        store: dict[str, Tensor] = {}
        cache = ActivationCache(store, self)

        def keep(suffix: str) -> HookFn:
            def fn(tensor: Tensor, hook: HookPoint) -> None:
                store[hook.name + suffix] = tensor.detach().to(device=device, dtype=dtype)

            return fn

        names = self.resolve_hook_names(names_filter)
        fwd = [(name, keep("")) for name in names]
        bwd = [(name, keep("_grad")) for name in names] if incl_bwd else []
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            yield cache

    def run_with_hooks(
        self,
        *args,
        fwd_hooks: Iterable[HookSpec] = (),
        bwd_hooks: Iterable[HookSpec] = (),
        **kwargs,
    ):
        """``model(*args, **kwargs)`` with the given hooks active for this one call."""
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self,
        *args,
        names_filter: NameFilter = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        **kwargs,
    ):
        """Run ``model(*args, **kwargs)`` and return ``(output, cache)``."""
        with self.cache(names_filter=names_filter, device=device, dtype=dtype) as cache:
            out = self(*args, **kwargs)
        return out, cache

