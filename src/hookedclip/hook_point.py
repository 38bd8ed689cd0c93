"""The hook point: an identity module on a named tensor that runs forward and backward hook functions.

Hook functions are kept in plain lists on the hook point (not as ``nn.Module`` hooks), so an
inactive hook point costs one attribute lookup, and modules can ask ``hook.is_active()``
to decide whether to materialise an expensive tensor (the per-head ``hook_result``) or
to take a fused kernel. :class:`~hookedclip.hooks.HookedRootModule` names and manages them.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import weakref
from collections.abc import Callable
from typing import Literal

from torch import Tensor, nn

HookFn = Callable[[Tensor, "HookPoint"], Tensor | None]
Direction = Literal["fwd", "bwd", "both"]


class HookPoint(nn.Module):
    """Identity on a named tensor; runs forward and backward hook functions on it.

    A forward hook ``fn(tensor, hook)`` may return a replacement tensor (same shape) or
    ``None`` to leave the tensor unchanged (an in-place edit of ``tensor`` then counts). It
    is called as ``fn(tensor, hook=self)`` when its ``hook`` parameter is keyword-only, as
    TransformerLens does, else positionally. A backward hook receives the gradient of the
    loss with respect to the tensor and may return a replacement gradient (or a 1-tuple
    ``(grad,)``). Hooks run in the order they were added: outer contexts before inner ones.

    A hook never sees a view of a parameter, a view shared with other hook points, or (under
    autograd) a tensor the backward pass needs: such tensors are copied before the first hook
    function, so an in-place edit changes this forward pass only, as a replacement would.
    """

    def __init__(self) -> None:
        super().__init__()
        self.name: str = ""
        self.fwd_fns: list[HookFn] = []
        self.bwd_fns: list[HookFn] = []
        self._permanent: set[int] = set()

    def is_active(self) -> bool:
        return bool(self.fwd_fns or self.bwd_fns)

    def has_hooks(self, dir: Direction = "both", including_permanent: bool = True) -> bool:
        """Whether any hook function (of direction ``dir``) is attached."""
        return any(including_permanent or id(fn) not in self._permanent for fn in self._fns(dir))

    def add_hook(
        self, hook: HookFn, dir: Literal["fwd", "bwd"] = "fwd", is_permanent: bool = False, prepend: bool = False
    ) -> None:
        """Attach ``hook`` (``prepend`` runs it before the hooks already there). Permanent hooks
        survive :meth:`remove_hooks` and ``reset_hooks`` unless ``including_permanent``."""
        fns = self._list(dir)
        fns.insert(0, hook) if prepend else fns.append(hook)
        if is_permanent:
            self._permanent.add(id(hook))

    def remove_hooks(self, dir: Direction = "fwd", including_permanent: bool = False) -> None:
        """Remove the hook functions of direction ``dir`` (``"fwd"``, ``"bwd"`` or ``"both"``)."""
        for d in _directions(dir):
            fns = self._list(d)
            fns[:] = [fn for fn in fns if not including_permanent and id(fn) in self._permanent]
        if including_permanent:
            live = {id(fn) for fn in self.fwd_fns + self.bwd_fns}
            self._permanent &= live

    def remove_hook_fn(self, fn: HookFn, dir: Literal["fwd", "bwd"]) -> None:
        """Remove one attachment of ``fn`` (by identity; the last one added)."""
        fns = self._list(dir)
        for i in range(len(fns) - 1, -1, -1):
            if fns[i] is fn:
                del fns[i]
                break
        if not any(f is fn for f in self.fwd_fns + self.bwd_fns):
            self._permanent.discard(id(fn))

    def _list(self, dir: str) -> list[HookFn]:
        if dir not in ("fwd", "bwd"):
            raise ValueError(f"dir must be 'fwd' or 'bwd', got {dir!r}")
        return self.fwd_fns if dir == "fwd" else self.bwd_fns

    def _fns(self, dir: Direction) -> list[HookFn]:
        return [fn for d in _directions(dir) for fn in self._list(d)]

    def forward(self, x: Tensor) -> Tensor:
        if self.fwd_fns:
            if x._base is not None or x.requires_grad or isinstance(x, nn.Parameter):
                # A view (of a parameter, or shared with other hook points) or a tensor autograd
                # may have saved: a copy lets a hook edit it in place for this forward only.
                x = x.clone()
            for fn in self.fwd_fns:
                out = _call(fn, x, self)
                if out is not None:
                    _check_replacement(self.name, x, out)
                    x = out
        if self.bwd_fns and x.requires_grad:
            x.register_hook(self._run_bwd)
        return x

    def _run_bwd(self, grad: Tensor) -> Tensor:
        for fn in list(self.bwd_fns):
            out = _call(fn, grad, self)
            if isinstance(out, tuple) and len(out) == 1:
                out = out[0]
            if out is not None:
                _check_replacement(self.name + " (backward)", grad, out)
                grad = out
        return grad

    def layer(self) -> int | None:
        """The block index this hook point sits in, or ``None`` outside the blocks."""
        match = re.search(r"blocks\.(\d+)\.", self.name)
        return int(match.group(1)) if match else None

    def extra_repr(self) -> str:
        return f"name={self.name!r}"


def _directions(dir: Direction) -> tuple[str, ...]:
    if dir == "both":
        return ("fwd", "bwd")
    if dir not in ("fwd", "bwd"):
        raise ValueError(f"dir must be 'fwd', 'bwd' or 'both', got {dir!r}")
    return (dir,)


_KEYWORD_HOOK: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _call(fn: HookFn, x: Tensor, hook: HookPoint):
    """``fn(x, hook)``, or ``fn(x, hook=hook)`` when ``hook`` is keyword-only."""
    try:
        keyword = _KEYWORD_HOOK[fn]
    except (KeyError, TypeError):
        keyword = _takes_keyword_hook(fn)
        with contextlib.suppress(TypeError):
            _KEYWORD_HOOK[fn] = keyword
    return fn(x, hook=hook) if keyword else fn(x, hook)


def _takes_keyword_hook(fn: HookFn) -> bool:
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    param = params.get("hook")
    return param is not None and param.kind is inspect.Parameter.KEYWORD_ONLY


def _check_replacement(name: str, old: Tensor, new: object) -> None:
    if not isinstance(new, Tensor):
        raise TypeError(f"hook on {name!r} returned {type(new).__name__}; a hook must return a Tensor or None")
    if new.shape != old.shape:
        raise ValueError(
            f"hook on {name!r} returned shape {tuple(new.shape)}, expected {tuple(old.shape)}; "
            "a replacement must keep the hooked tensor's shape"
        )
