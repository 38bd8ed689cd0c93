"""The hook-managing root module: names every :class:`~hookedclip.hook_point.HookPoint` of a model
and adds, removes and scopes hook functions on them (``model.hooks(...)``, ``model.cache(...)``,
``run_with_hooks``, ``run_with_cache``). ``HookPoint`` itself lives in :mod:`hookedclip.hook_point`
and is re-exported here.
"""

from __future__ import annotations

import contextlib
import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Literal, TypedDict

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from hookedclip._options import completed
from hookedclip.hook_point import Direction, HookFn, HookPoint

if TYPE_CHECKING:
    from hookedclip.cache import ActivationCache
    from hookedclip.caching import PosSlice

NameFilter = str | Sequence[str] | Callable[[str], bool] | None
HookSpec = tuple[str | Callable[[str], bool], HookFn]
#: Hook points that make attention run on per-head inputs while active (left out of "every hook").
SPLIT_INPUT_HOOKS = ("hook_attn_in", "hook_q_input", "hook_k_input", "hook_v_input")


class CachingOptions(TypedDict, total=False):
    """The keyword options every caching method shares (:meth:`HookedRootModule.get_caching_hooks`
    documents them): what is stored, where, and which slice of it."""

    incl_bwd: bool
    device: torch.device | str | None
    remove_batch_dim: bool
    cache: dict | None
    pos_slice: PosSlice
    dtype: torch.dtype | None


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

        ``None`` means every hook point except the per-head input hooks (``hook_attn_in``,
        ``hook_q_input``, ``hook_k_input``, ``hook_v_input``), which switch attention to per-head
        inputs; name them (or accept them in a predicate) to use them. A string or list names
        hook points exactly; an unknown name raises ``KeyError`` listing the closest valid names.
        """
        if name_or_filter is None:
            return [n for n in self.hook_dict if not n.endswith(SPLIT_INPUT_HOOKS)]
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
            f"unknown hook point {name!r}{hint}. `model.hook_points()` lists all {len(self.hook_dict)} names."
        )

    # ------------------------------------------------------------------ adding and removing
    def add_hook(
        self,
        name: str | Callable[[str], bool],
        hook: HookFn,
        dir: Literal["fwd", "bwd"] = "fwd",
        is_permanent: bool = False,
        prepend: bool = False,
    ) -> None:
        """Attach ``hook`` to a hook point (or every point a predicate accepts) until removed
        (:meth:`reset_hooks`); prefer the :meth:`hooks` context, which always cleans up."""
        for hook_name in self.resolve_hook_names(name):
            self.hook_dict[hook_name].add_hook(hook, dir=dir, is_permanent=is_permanent, prepend=prepend)

    def add_perma_hook(
        self, name: str | Callable[[str], bool], hook: HookFn, dir: Literal["fwd", "bwd"] = "fwd"
    ) -> None:
        """A hook that :meth:`reset_hooks` keeps unless ``including_permanent=True``."""
        self.add_hook(name, hook, dir=dir, is_permanent=True)

    def remove_all_hook_fns(self, direction: Direction = "both", including_permanent: bool = False) -> None:
        for hp in self.hook_dict.values():
            hp.remove_hooks(direction, including_permanent=including_permanent)

    def reset_hooks(
        self, clear_contexts: bool = True, direction: Direction = "both", including_permanent: bool = False
    ) -> None:
        """Remove every hook function (permanent ones too with ``including_permanent``).
        ``clear_contexts`` is accepted for TransformerLens compatibility (hook points keep no
        context here)."""
        self.remove_all_hook_fns(direction, including_permanent=including_permanent)

    # ------------------------------------------------------------------ contexts
    @contextlib.contextmanager
    def hooks(
        self,
        fwd_hooks: Iterable[HookSpec] = (),
        bwd_hooks: Iterable[HookSpec] = (),
    ) -> Iterator[HookedRootModule]:
        """Add hooks for the duration of the ``with`` block; they are removed on exit.

        ``fwd_hooks`` and ``bwd_hooks`` are ``(name_or_filter, fn)`` pairs, where
        ``name_or_filter`` is a hook point name or a predicate on names and
        ``fn(tensor, hook)`` returns a replacement tensor or ``None``. Hooks are removed
        even when the body raises. Contexts nest; inner hooks run after outer ones.
        """
        added: list[tuple[HookPoint, HookFn, str]] = []
        try:
            for specs, dir in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
                for name_or_filter, fn in specs:
                    for name in self.resolve_hook_names(name_or_filter):
                        self.hook_dict[name].add_hook(fn, dir=dir)
                        added.append((self.hook_dict[name], fn, dir))
            yield self
        finally:
            # Remove by identity: the same function may legitimately be added twice.
            for hp, fn, dir in reversed(added):
                hp.remove_hook_fn(fn, dir)

    def get_caching_hooks(
        self,
        names_filter: NameFilter = None,
        incl_bwd: bool = False,
        device: torch.device | str | None = None,
        remove_batch_dim: bool = False,
        cache: dict | None = None,
        pos_slice: PosSlice = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[dict[str, Tensor], list[HookSpec], list[HookSpec]]:
        """``(cache, fwd_hooks, bwd_hooks)``: hooks that store each activation (detached, moved
        to ``device`` / ``dtype``) in ``cache``, gradients under ``name + "_grad"``.

        ``remove_batch_dim`` keeps batch element 0 (for batch-size-1 runs); ``pos_slice`` (an
        int, a slice, or a list of indices) keeps those positions: the query position of
        attention scores and patterns, the token axis elsewhere; tensors with no token axis
        (``hook_pooled``, ``hook_out``) are kept whole.
        """
        from hookedclip.caching import recorder

        store: dict[str, Tensor] = {} if cache is None else cache
        keep = recorder(store, device, dtype, remove_batch_dim, pos_slice)
        names = self.resolve_hook_names(names_filter)
        fwd = [(name, keep) for name in names]
        bwd = (
            [(name, recorder(store, device, dtype, remove_batch_dim, pos_slice, "_grad")) for name in names]
            if incl_bwd
            else []
        )
        return store, fwd, bwd

    def add_caching_hooks(
        self, names_filter: NameFilter = None, **options: Unpack[CachingOptions]
    ) -> dict[str, Tensor]:
        """Attach the hooks of :meth:`get_caching_hooks` (same options) until :meth:`reset_hooks`;
        returns the dict they fill."""
        store, fwd, bwd = self.get_caching_hooks(names_filter, **options)
        self._add_all(fwd, bwd)
        return store

    def _add_all(self, fwd_hooks: Iterable[HookSpec], bwd_hooks: Iterable[HookSpec]) -> None:
        for specs, dir in ((fwd_hooks, "fwd"), (bwd_hooks, "bwd")):
            for name, fn in specs:
                self.add_hook(name, fn, dir=dir)

    @contextlib.contextmanager
    def cache(self, names_filter: NameFilter = None, **options: Unpack[CachingOptions]) -> Iterator[ActivationCache]:
        """Yield an :class:`ActivationCache` that fills with whatever runs inside, with the options of
        :meth:`get_caching_hooks`: forward values stored detached, optionally moved to ``device`` /
        ``dtype``; with ``incl_bwd=True`` the gradients reaching each hook point during a backward
        pass inside the block too, under ``name + "_grad"``."""
        from hookedclip.cache import ActivationCache

        options = completed(self.get_caching_hooks, CachingOptions, options, "cache")
        store, fwd, bwd = self.get_caching_hooks(names_filter, **options)
        with self.hooks(fwd_hooks=fwd, bwd_hooks=bwd):
            yield ActivationCache(store, self, has_batch_dim=not options["remove_batch_dim"])

    def run_with_hooks(
        self,
        *args,
        fwd_hooks: Iterable[HookSpec] = (),
        bwd_hooks: Iterable[HookSpec] = (),
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **kwargs,
    ):
        """``model(*args, **kwargs)`` with the given hooks active for this one call.

        ``reset_hooks_end=False`` leaves the hooks attached (e.g. backward hooks for a
        ``.backward()`` after the call); remove them with :meth:`reset_hooks`.
        """
        if not reset_hooks_end:
            self._add_all(fwd_hooks, bwd_hooks)
            return self(*args, **kwargs)
        with self.hooks(fwd_hooks=fwd_hooks, bwd_hooks=bwd_hooks):
            return self(*args, **kwargs)

    def run_with_cache(
        self,
        *args,
        names_filter: NameFilter = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        remove_batch_dim: bool = False,
        incl_bwd: bool = False,
        loss_fn: Callable[[Tensor], Tensor] | None = None,
        pos_slice: PosSlice = None,
        return_cache_object: bool = True,
        reset_hooks_end: bool = True,
        clear_contexts: bool = False,
        **kwargs,
    ):
        """Run ``model(*args, **kwargs)`` and return ``(output, cache)``.

        ``incl_bwd=True`` also runs a backward pass and caches gradients (``name + "_grad"``):
        from the output itself when it is a scalar, else from ``loss_fn(output)`` (a scalar,
        e.g. ``lambda emb: emb @ class_direction`` summed over the batch). With
        ``return_cache_object=False`` the cache is a plain dict, as in TransformerLens.
        """
        with self.cache(
            names_filter,
            device=device,
            dtype=dtype,
            incl_bwd=incl_bwd,
            remove_batch_dim=remove_batch_dim,
            pos_slice=pos_slice,
        ) as cache:
            out = self(*args, **kwargs)
            if incl_bwd:
                loss = out if loss_fn is None else loss_fn(out)
                if loss.numel() != 1:
                    raise ValueError(
                        f"incl_bwd=True needs a scalar to differentiate, but the output has shape "
                        f"{tuple(loss.shape)}: pass loss_fn=, e.g. loss_fn=lambda out: out[:, 0].sum()"
                    )
                loss.backward()
        return out, (cache if return_cache_object else dict(cache.items()))


__all__ = [
    "SPLIT_INPUT_HOOKS",
    "CachingOptions",
    "Direction",
    "HookFn",
    "HookPoint",
    "HookSpec",
    "HookedRootModule",
    "NameFilter",
]
