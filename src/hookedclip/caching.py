"""What a caching hook stores: detached activations, optionally moved, without the batch axis,
or restricted to some token positions (TransformerLens's ``pos_slice``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

PosSlice = int | slice | Sequence[int] | Tensor | None

# Hook points whose token axis is third from the end ([batch, pos, head, d]); attention scores
# and patterns ([batch, head, q_pos, k_pos]) and everything else have it second from the end
# (the query axis for patterns); pooled tensors have none.
_HEAD_AXIS_POINTS = (
    "hook_q",
    "hook_k",
    "hook_v",
    "hook_z",
    "hook_result",
    "hook_attn_in",
    "hook_q_input",
    "hook_k_input",
    "hook_v_input",
)
_NO_TOKEN_AXIS = ("hook_pooled", "hook_out")


def position_index(pos_slice: PosSlice):
    """``pos_slice`` as an index: a list becomes a tensor; an int drops the axis, as in TL."""
    if pos_slice is None:
        return slice(None)
    if isinstance(pos_slice, (list, tuple)):
        return torch.as_tensor(pos_slice)
    return pos_slice


def slice_positions(x: Tensor, pos_slice: PosSlice, dim: int) -> Tensor:
    """``x`` restricted to ``pos_slice`` along ``dim``."""
    if pos_slice is None:
        return x
    index = position_index(pos_slice)
    if isinstance(index, Tensor):
        index = index.to(x.device)
    return x[(slice(None),) * (dim % x.ndim) + (index,)]


def token_axis(name: str, ndim: int, has_batch: bool = True) -> int | None:
    """The token axis (negative) of the activation at hook point ``name``, or ``None``."""
    point = name.rsplit(".", 1)[-1]
    if point in _NO_TOKEN_AXIS or ndim < 2 + int(has_batch):
        return None
    return -3 if point in _HEAD_AXIS_POINTS else -2


def recorder(
    store: dict[str, Tensor],
    device=None,
    dtype=None,
    remove_batch_dim: bool = False,
    pos_slice: PosSlice = None,
    suffix: str = "",
) -> Callable:
    """A hook function storing ``store[hook.name + suffix]``: the activation detached, moved to
    ``device`` / ``dtype``, batch element 0 alone with ``remove_batch_dim`` (a batch of 1 is
    required), and ``pos_slice`` kept along its token axis."""

    def record(tensor: Tensor, hook) -> None:
        value = tensor.detach().to(device=device, dtype=dtype)
        if remove_batch_dim:
            if value.shape[0] != 1:
                raise ValueError(
                    f"remove_batch_dim=True needs a batch of 1, but {hook.name} has batch "
                    f"{value.shape[0]}; run one input or drop remove_batch_dim"
                )
            value = value[0]
        axis = token_axis(hook.name, value.ndim, has_batch=not remove_batch_dim) if pos_slice is not None else None
        store[hook.name + suffix] = value if axis is None else slice_positions(value, pos_slice, axis)

    return record
