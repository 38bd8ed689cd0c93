"""Where training rows come from: an activation store (rows gathered by index, memory-mapped) or
a running model (tokens streamed from image batches), and the order they are read in.

The order of a store's rows is a pure function of the seed and the step: the rows are an endless
sequence of epochs, each a fresh permutation of every row (``torch.randperm`` seeded by
``(seed, epoch)``), and step ``s`` reads positions ``[s·B, (s+1)·B)`` of that sequence. A resumed
run therefore needs only the step to continue with the very same batches, and ``W`` processes
sharing a global batch ``B`` each read their own contiguous ``B/W`` of it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from hookedclip.data.batches import iter_images
from hookedclip.data.store import ActivationStore
from hookedclip.names import act_name

_RESID = re.compile(r"^visual\.blocks\.(\d+)\.hook_resid_post(?:@(\d+))?$")
_NUMPY = {"F16": np.float16, "F32": np.float32, "F64": np.float64, "BF16": np.int16}


@dataclass(frozen=True)
class TargetSite:
    """What a store target (or a streamed hook) holds: the absolute ``layer`` of a
    ``resid_post`` hook (``None`` for any other hook), its stored position (``None``: every
    token; ``0``: the class token) and the row width."""

    name: str
    layer: int | None
    position: int | None
    width: int

    @classmethod
    def parse(cls, name: str, width: int) -> TargetSite:
        match = _RESID.match(name)
        if match is None:
            hook, _, pos = name.partition("@")
            return cls(name, None, int(pos) if pos else None, width)
        layer, pos = match.groups()
        return cls(name, int(layer), None if pos is None else int(pos), width)


def tokens_of(rows: Tensor, token: str) -> Float[Tensor, "n d"]:
    """Training vectors from stored or cached rows: ``[n, D]`` as they are; ``[n, T, D]`` the
    class token (``"cls"``) or every patch token flattened (``"spatial"``, ``n·(T−1)`` rows)."""
    if rows.ndim == 2:
        return rows
    if rows.ndim != 3:
        raise ValueError(f"rows of shape {tuple(rows.shape)}: expected [n, D] vectors or [n, tokens, D] token rows")
    return rows[:, 0] if token == "cls" else rows[:, 1:].reshape(-1, rows.shape[-1])


class ShardedRows:
    """Random access by row index to one target of a store. A target of at most ``max_memory``
    bytes is read into memory once; a larger one stays memory-mapped shard by shard (the
    safetensors layout is a JSON header, then raw little-endian data), so a batch reads only its
    own rows and memory stays flat however large the store."""

    def __init__(self, store: ActivationStore, target: str, max_memory: int = 2 << 30) -> None:
        self.target, self.offsets = target, store._offsets
        self.dtype = store.targets[target].torch_dtype
        self.arrays = [self._map(store.path / entry["file"], target) for entry in store.shards]
        # a target that fits is read once into memory: indexing a tensor costs far less per batch
        size = sum(a.nbytes for a in self.arrays)
        self.loaded = store.rows(target) if size <= max_memory else None

    @staticmethod
    def _map(file: Path, key: str) -> np.ndarray:
        with open(file, "rb") as f:
            size = int.from_bytes(f.read(8), "little")
            header = json.loads(f.read(size))
        info = header[key]
        start, _ = info["data_offsets"]
        shape = tuple(info["shape"])
        if 0 in shape:
            return np.zeros(shape, dtype=_NUMPY[info["dtype"]])
        return np.memmap(file, dtype=_NUMPY[info["dtype"]], mode="r", offset=8 + size + start, shape=shape)

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def gather(self, index: Int[Tensor, " n"]) -> Tensor:
        """Rows ``index`` (any order, repeats allowed), in that order."""
        if self.loaded is not None:
            return self.loaded[index]
        shard = torch.searchsorted(self.offsets, index, right=True) - 1
        out = None
        for k in shard.unique().tolist():
            where = (shard == k).nonzero().squeeze(1)
            local = (index[where] - self.offsets[k]).numpy()
            part = torch.from_numpy(np.ascontiguousarray(self.arrays[k][local]))
            if self.dtype == torch.bfloat16:
                part = part.view(torch.bfloat16)
            if out is None:
                out = torch.empty(len(index), *part.shape[1:], dtype=part.dtype)
            out[where] = part
        return out


class StoreOrder:
    """Global batch positions of a step -> row indices (module docstring)."""

    def __init__(self, n_rows: int, seed: int) -> None:
        self.n_rows, self.seed = n_rows, seed
        self._epoch, self._perm = -1, None

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            self._epoch, self._perm = epoch, torch.randperm(self.n_rows, generator=generator)
        return self._perm

    def rows(self, start: int, stop: int) -> Int[Tensor, " n"]:
        """Row indices at positions ``[start, stop)`` of the endless sequence of epochs."""
        parts, position = [], start
        while position < stop:
            epoch, offset = divmod(position, self.n_rows)
            take = min(stop - position, self.n_rows - offset)
            parts.append(self._permutation(epoch)[offset : offset + take])
            position += take
        return torch.cat(parts)


class StoreSource:
    """Training vectors from a store: for step ``s`` of a global batch ``B`` split over
    ``world`` processes, this process's ``B/world`` rows, as tokens."""

    def __init__(self, store: ActivationStore, target: str, token: str, seed: int) -> None:
        self.rows, self.token = ShardedRows(store, target), token
        self.order = StoreOrder(len(self.rows), seed)

    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Float[Tensor, "n d"]:
        local = batch_size // world
        start = step * batch_size + rank * local
        return tokens_of(self.rows.gather(self.order.rows(start, start + local)), self.token)


class ModelSource:
    """Training vectors computed on the fly: each step runs the model (no gradients) on the
    next image batch of ``batches`` and reads ``hook``'s rows; the batches are read again from
    the start when they run out, so they must be re-iterable (a list or a DataLoader) for more
    steps than batches. A resumed run skips the batches already used without running the model."""

    def __init__(self, model, batches: Iterable, hook: str, token: str) -> None:
        self.model, self.batches, self.hook, self.token = model, batches, hook, token
        self._iterator: Iterator | None = None
        self._next = 0

    def _images(self, step: int) -> Tensor:
        if self._iterator is None or step != self._next:
            self._iterator, self._next = self._cycle(), 0
            for _ in range(step):
                next(self._iterator)
                self._next += 1
        self._next += 1
        return next(self._iterator)

    def _cycle(self) -> Iterator[Tensor]:
        while True:
            empty = True
            for images in iter_images(self.batches, self.model):
                empty = False
                yield images
            if empty:
                raise ValueError(
                    "the image batches ran out: pass a list or a DataLoader (read again at each epoch), "
                    "not a one-shot iterator, or train for fewer steps"
                )

    @torch.no_grad()
    def batch(self, step: int, batch_size: int, rank: int = 0, world: int = 1) -> Float[Tensor, "n d"]:
        images = self._images(step)
        _, cache = self.model.run_with_cache(images, names_filter=self.hook)
        return tokens_of(cache[self.hook], self.token)


def model_hook(model, layer: int | None) -> str:
    """The residual-stream hook an autoencoder of ``layer`` (default: the last block) reads."""
    return act_name("resid_post", -1 if layer is None else layer, n_layers=model.cfg.n_layers)
