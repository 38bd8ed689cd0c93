"""Reading a finished store: rows, shards, a torch Dataset and the moments."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from jaxtyping import Shaped
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from torch import Tensor

from hookedclip.data.stats import RunningMoments
from hookedclip.data.store.errors import CorruptShard, StoreError, StoreMismatch
from hookedclip.data.store.files import check_shard, moments_from_tensors
from hookedclip.data.store.manifest import FORMAT, MANIFEST, ROW_KEYS, TargetSpec, check_header, dataset_fingerprint
from hookedclip.identity import ModelIdentity, model_identity


class ActivationStore:
    """Read a finished store: rows by index or range, whole shards, a torch Dataset, and the
    per-target moments, all memory-mapped (``safe_open``); nothing is loaded up front.

    ``verify``: ``"lazy"`` (default) checks every shard's size on open and its sha256 the
    first time it is read; ``"full"`` hashes every shard on open; ``"size"`` sizes only.
    A shard that fails raises :class:`CorruptShard` naming it.
    """

    def __init__(self, path: str | Path, verify: str = "lazy") -> None:
        self.path = Path(path)
        manifest = self.path / MANIFEST
        if not manifest.exists():
            if list(self.path.glob("rank[0-9][0-9][0-9].json")):
                raise StoreError(
                    f"the store at {self.path} is incomplete (no {MANIFEST}; the extraction did not "
                    "finish): run the same extraction again to resume it"
                )
            raise FileNotFoundError(f"{manifest} not found: is {self.path} a store written by hookedclip.data.extract?")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise StoreError(
                f"{manifest} is format {self.manifest.get('format')!r}, this library reads {FORMAT!r} "
                "(stores before v2 recorded the model by a fingerprint this version no longer "
                "computes): extract the store again"
            )
        self.targets = {t["name"]: TargetSpec(**t) for t in self.manifest["targets"]}
        self.shards = self.manifest["shards"]
        self._verify = verify
        self._verified: set[int] = set()
        for k, entry in enumerate(self.shards):
            check_shard(self.path, entry, full=verify == "full")
            if verify in ("full", "size"):
                self._verified.add(k)
        counts = torch.tensor([0] + [s["rows"] for s in self.shards])
        self._offsets = counts.cumsum(0)  # row offset of each shard, [n_shards + 1]
        self._handles: dict[int, object] = {}

    def __repr__(self) -> str:
        return (
            f"ActivationStore({str(self.path)!r}, rows={len(self)}, shards={len(self.shards)}, "
            f"targets={list(self.targets)})"
        )

    def __len__(self) -> int:
        return int(self._offsets[-1])

    @property
    def model(self) -> ModelIdentity | None:
        """The :func:`~hookedclip.identity.model_identity` of the model the store was extracted from."""
        return ModelIdentity.of(self.manifest.get("model"))

    @property
    def keys(self) -> list[str]:
        """Every stored tensor name: the targets, then ``index``, ``label``, ``group``."""
        return list(self.targets) + list(ROW_KEYS)

    def check(
        self,
        model=None,
        dataset=None,
        targets: Sequence[str] | None = None,
        text_embeddings: torch.Tensor | None = None,
    ) -> None:
        """Raise :class:`StoreMismatch`, naming the difference, unless the store was extracted
        from ``model`` (same config and weights), from ``dataset`` and holds ``targets``
        (names); ``None`` skips that check. Hashing a model's weights reads all of them.
        ``text_embeddings`` ``[m, d]`` must share ``d`` with every listed target's rows
        (``ValueError`` otherwise)."""
        wanted = {}
        if model is not None:
            wanted["model"] = model_identity(model)
        if dataset is not None:
            wanted["dataset"] = dataset_fingerprint(dataset)
        check_header(
            self.path,
            self.manifest,
            wanted,
            keys=list(wanted),
            action="read",
            fix="Pass the model and dataset it was extracted from, or extract a store for these.",
        )
        missing = [t for t in targets or [] if t not in self.targets]
        if missing:
            raise StoreMismatch(
                f"the store at {self.path} holds no target {', '.join(map(repr, missing))} "
                f"(it holds {list(self.targets)}): extract them with --targets"
            )
        for target in targets or []:
            d = self.targets[target].shape[-1]
            if text_embeddings is not None and text_embeddings.shape[-1] != d:
                raise ValueError(
                    f"the text embeddings have dimension {text_embeddings.shape[-1]}, the store's "
                    f"{target!r} rows {d}: embed the texts with the model the store was extracted from"
                )

    @property
    def skipped(self) -> list[dict]:
        """Images that could not be read: ``{"index", "id", "error"}`` each."""
        return self.manifest["skipped"]

    def _handle(self, k: int):
        if k not in self._verified:
            check_shard(self.path, self.shards[k], full=self._verify != "size")
            self._verified.add(k)
        if k not in self._handles:
            self._handles[k] = safe_open(str(self.path / self.shards[k]["file"]), framework="pt")
        return self._handles[k]

    def __getstate__(self):  # open handles do not pickle (DataLoader workers reopen them)
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def _check_key(self, key: str) -> None:
        if key not in self.keys:
            raise KeyError(f"{key!r} is not in this store; it holds {self.keys}")

    def shard(self, k: int, keys: Sequence[str] | None = None) -> dict[str, Tensor]:
        """Every row of shard ``k``: ``{key: [rows, *shape]}``."""
        f = self._handle(k)
        keys = self.keys if keys is None else keys
        for key in keys:
            self._check_key(key)
        return {key: f.get_tensor(key) for key in keys}

    def ids(self, k: int | None = None) -> list[str]:
        """Image ids of shard ``k``, or of every row."""
        if k is None:
            return [i for j in range(len(self.shards)) for i in self.ids(j)]
        return json.loads(self._handle(k).metadata()["ids"])

    def rows(self, key: str, start: int = 0, stop: int | None = None) -> Shaped[Tensor, "rows *shape"]:  # noqa: F821 (a jaxtyping shape)
        """Rows ``[start, stop)`` of one key, reading only the shards (and rows) involved."""
        self._check_key(key)
        stop = len(self) if stop is None else min(stop, len(self))
        parts = []
        for k in range(len(self.shards)):
            lo, hi = int(self._offsets[k]), int(self._offsets[k + 1])
            a, b = max(start, lo), min(stop, hi)
            if a < b:
                parts.append(self._handle(k).get_slice(key)[a - lo : b - lo])
        if not parts:
            return self._empty(key)
        return torch.cat(parts) if len(parts) > 1 else parts[0]

    def _empty(self, key: str) -> Tensor:
        if key in ROW_KEYS:
            return torch.zeros(0, dtype=torch.int64)
        spec = self.targets[key]
        return torch.zeros(0, *spec.shape, dtype=spec.torch_dtype)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        """Row ``i`` of every key."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"row {i} out of range for a store of {len(self)} rows")
        i %= len(self)
        k = int(torch.searchsorted(self._offsets, torch.tensor(i), right=True)) - 1
        f, j = self._handle(k), i - int(self._offsets[k])
        return {key: f.get_slice(key)[j : j + 1][0] for key in self.keys}

    def iter_shards(self, keys: Sequence[str] | None = None) -> Iterator[dict[str, Tensor]]:
        """Every shard in turn; each shard's file is closed before the next is opened, so the
        pages read stay out of the process's memory (a pass over a large store stays flat)."""
        for k in range(len(self.shards)):
            opened = k not in self._handles
            yield self.shard(k, keys)
            if opened:
                self._handles.pop(k, None)

    def dataset(self, keys: Sequence[str] | None = None) -> StoreDataset:
        """A ``torch.utils.data.Dataset`` of rows (dicts of tensors)."""
        return StoreDataset(self, list(self.keys if keys is None else keys))

    def moments(self, target: str) -> RunningMoments:
        """The moments accumulated during extraction, read without touching any row."""
        if target not in self.targets:
            raise KeyError(f"{target!r} is not a target of this store; targets: {list(self.targets)}")
        if self.targets[target].moments == "none":
            raise ValueError(f"no moments were kept for {target!r}; use compute_moments")
        file = self.path / self.manifest["moments"]
        data = file.read_bytes()
        if hashlib.sha256(data).hexdigest() != self.manifest["moments_sha256"]:
            raise CorruptShard(f"{file} does not match its sha256 in the manifest (corrupted)")
        return moments_from_tensors(load_bytes(data))[target]

    def compute_moments(self, target: str, covariance: bool = True) -> RunningMoments:
        """Moments of ``target`` streamed from the rows, one shard in memory at a time."""
        spec = self.targets[target]
        acc = RunningMoments.empty(tuple(spec.shape[:-1]), spec.shape[-1], covariance)
        for shard in self.iter_shards([target]):
            acc.update(shard[target])
        return acc

    def verify(self) -> None:
        """Hash every shard now (raises :class:`CorruptShard` naming the first bad one)."""
        for k, entry in enumerate(self.shards):
            check_shard(self.path, entry)
            self._verified.add(k)


class StoreDataset(torch.utils.data.Dataset):
    """Rows of an :class:`ActivationStore` as a map-style Dataset of ``{key: tensor}``."""

    def __init__(self, store: ActivationStore, keys: list[str]) -> None:
        for key in keys:
            store._check_key(key)
        self.store, self.keys = store, keys

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        row = self.store[i]
        return {k: row[k] for k in self.keys}
