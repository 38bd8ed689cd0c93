"""ActivationStore: a directory of safetensors shards, a manifest, and streaming moments.

Layout of a store directory::

    manifest.json                    written last: the store is complete and readable
    rank000-shard00000.safetensors   rows [start, stop) of rank 0's slice of the dataset
    rank000.json                     rank 0's progress log (header, committed shards, skips)
    moments.safetensors              merged RunningMoments of every target (float64)

Every file is written to a temporary name and renamed (``os.replace``), so an interrupt
or a full disk never leaves a half-written file under a final name. A shard is committed
when its rank log lists it (with its sha256); anything on disk and not listed is
redone on resume. The log names a moments checkpoint written *before* it, so the
moments always describe exactly the committed shards.

A shard holds one tensor per target, ``[rows, *shape]``, plus int64 ``index`` (position
in the dataset), ``label`` and ``group`` rows; its safetensors metadata holds the image
ids (a single key, so the file bytes are deterministic).
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from jaxtyping import Shaped
from safetensors import safe_open
from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from hookedclip.data.stats import RunningMoments
from hookedclip.identity import ModelIdentity, describe_mismatch, model_identity, same_model

#: v2: the manifest's ``model`` is :func:`hookedclip.identity.model_identity` (v1 hashed every weight's bytes).
FORMAT = "hookedclip-store/2"
MANIFEST = "manifest.json"
MOMENTS = "moments.safetensors"
ROW_KEYS = ("index", "label", "group")  # int64 bookkeeping rows stored with every target
MAX_COVARIANCE_BYTES = 64 * 2**20  # larger float64 scatters are tracked as means only ("auto")


class StoreError(RuntimeError):
    """A store that cannot be used as asked (incomplete, mismatched, corrupt)."""


class StoreMismatch(StoreError):
    """Resuming or reading a store with another model, dataset, target list or layout."""


class CorruptShard(StoreError):
    """A shard whose bytes are not those recorded in the manifest."""


# ---------------------------------------------------------------------------- files
def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same directory and
    ``os.replace``: readers see the old file or the new one, never a partial one."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # also KeyboardInterrupt / a full disk: leave nothing behind
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def tensors_bytes(tensors: dict[str, Tensor], metadata: dict[str, str] | None = None) -> bytes:
    """safetensors serialisation (deterministic for a given input). Tensors sharing memory
    are copied, since safetensors refuses them."""
    out, seen = {}, set()
    for k, v in tensors.items():
        v = v.detach().cpu().contiguous()
        ptr = v.untyped_storage().data_ptr()
        out[k] = v.clone() if ptr in seen else v
        seen.add(ptr)
    return save_bytes(out, metadata=metadata)


def remove_temporaries(directory: Path, prefix: str = "") -> None:
    """Delete leftovers of interrupted atomic writes (``.NAME.XXXX.tmp``)."""
    for tmp in Path(directory).glob(f".{prefix}*.tmp"):
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- manifest parts
@dataclass
class TargetSpec:
    """One stored quantity: per-row ``shape``, stored ``dtype`` and what moments are kept
    (``"cov"``: mean and covariance over the last axis, ``"mean"``, or ``"none"``).
    ``labels`` names the rows of a decomposition target's component axis."""

    name: str
    dtype: str
    shape: list[int]
    moments: str = "cov"
    labels: list[str] | None = None

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)


def moments_kind(shape: Sequence[int], requested: str = "auto") -> str:
    """``"auto"``: covariance when its float64 scatter ``[*shape[:-1], d, d]`` fits in
    ``MAX_COVARIANCE_BYTES``, else the mean only."""
    if requested != "auto":
        if requested not in ("cov", "mean", "none"):
            raise ValueError(f"moments must be 'auto', 'cov', 'mean' or 'none', got {requested!r}")
        return requested
    lead = 1
    for s in shape[:-1]:
        lead *= s
    return "cov" if shape and lead * shape[-1] ** 2 * 8 <= MAX_COVARIANCE_BYTES else "mean"


def model_fingerprint(model) -> ModelIdentity:
    """Deprecated: :func:`hookedclip.identity.model_identity`, which stores record."""
    import warnings

    warnings.warn("model_fingerprint is deprecated; use hookedclip.identity.model_identity", DeprecationWarning,
                  stacklevel=2)
    return model_identity(model)


def dataset_fingerprint(dataset) -> dict:
    """What identifies a dataset for resuming: its length and its ``fingerprint()`` (or,
    for a dataset without one, only its class name: such a store cannot tell two
    datasets of the same class and length apart)."""
    fp = getattr(dataset, "fingerprint", None)
    return {"length": len(dataset), "fingerprint": fp() if callable(fp) else f"{type(dataset).__name__} (no fingerprint)"}


def _describe_mismatch(key: str, stored, wanted) -> str:
    if key == "model":
        return f"it was extracted from {describe_mismatch(stored, wanted)}"
    if key == "dataset":
        return f"it was extracted from dataset {stored}; this run's dataset is {wanted}"
    if key == "targets":
        s = {t["name"]: (t["dtype"], t["shape"], t["moments"]) for t in stored}
        w = {t["name"]: (t["dtype"], t["shape"], t["moments"]) for t in wanted}
        return f"it holds targets {s}; this run asks for {w}"
    return f"its {key} is {stored!r}; this run's is {wanted!r}"


HEADER_KEYS = ("format", "model", "dataset", "targets", "rows_per_shard", "world_size", "params")
RESUME_FIX = "Use another output directory, or delete this one to start over."


def check_header(path: Path, stored: dict, wanted: dict, keys: Sequence[str] = HEADER_KEYS, action: str = "resume",
                 fix: str = RESUME_FIX) -> None:
    """Refuse to ``action`` (resume, read) ``stored`` with a different ``wanted`` header,
    comparing ``keys`` and naming what differs."""
    for key in keys:
        same = stored.get(key) == wanted.get(key) or (key == "model" and same_model(stored.get(key), wanted.get(key)))
        if not same:
            raise StoreMismatch(f"cannot {action} the store at {path}: "
                                f"{_describe_mismatch(key, stored.get(key), wanted.get(key))}. {fix}")


# ---------------------------------------------------------------------------- moments files
def moments_bytes(moments: dict[str, RunningMoments]) -> bytes:
    flat = {f"{name}/{k}": v for name, m in moments.items() for k, v in m.state_dict().items()}
    return tensors_bytes(flat)


def moments_from_tensors(flat: dict[str, Tensor]) -> dict[str, RunningMoments]:
    grouped: dict[str, dict[str, Tensor]] = {}
    for key, value in flat.items():
        name, _, part = key.rpartition("/")
        grouped.setdefault(name, {})[part] = value
    return {name: RunningMoments.from_state_dict(state) for name, state in grouped.items()}


def read_moments(path: Path) -> dict[str, RunningMoments]:
    return moments_from_tensors(load_bytes(Path(path).read_bytes()))


# ---------------------------------------------------------------------------- writing
def shard_name(rank: int, k: int) -> str:
    return f"rank{rank:03d}-shard{k:05d}.safetensors"


def rank_log_name(rank: int) -> str:
    return f"rank{rank:03d}.json"


class RankWriter:
    """Writes one rank's shards and progress log; picks up after the last committed shard.

    ``header`` identifies the run (model, dataset, targets, layout, parameters): a log or
    manifest already in ``path`` with another header is refused (:class:`StoreMismatch`).
    """

    def __init__(self, path: str | Path, header: dict, rank: int = 0) -> None:
        self.path, self.header, self.rank = Path(path), header, rank
        self.path.mkdir(parents=True, exist_ok=True)
        self.log_path = self.path / rank_log_name(rank)
        manifest = self.path / MANIFEST
        if manifest.exists():
            check_header(self.path, json.loads(manifest.read_text()), header)
        if self.log_path.exists():
            self.log = json.loads(self.log_path.read_text())
            check_header(self.path, self.log["header"], header)
            self.log["header"] = header  # identical where it matters; informational keys from this run
            self._check_committed()
        else:
            self.log = {"header": header, "rank": rank, "shards": [], "skipped": [], "moments": None, "done": False}
        remove_temporaries(self.path, f"rank{rank:03d}")

    def _check_committed(self) -> None:
        for shard in self.log["shards"]:
            check_shard(self.path, shard)

    @property
    def n_done(self) -> int:
        """Shards committed so far (resume starts at this shard)."""
        return len(self.log["shards"])

    @property
    def done(self) -> bool:
        return bool(self.log["done"])

    def moments(self) -> dict[str, RunningMoments] | None:
        """The moments of the committed shards, or None before the first commit."""
        name = self.log["moments"]
        return None if name is None else read_moments(self.path / name)

    def commit(self, start: int, stop: int, rows: dict[str, Tensor], ids: list[str],
               skipped: list[dict], moments: dict[str, RunningMoments]) -> None:
        """Write shard ``n_done`` (dataset indices ``[start, stop)``), then the moments
        after it, then the log entry that makes both count."""
        k = self.n_done
        name = shard_name(self.rank, k)
        data = tensors_bytes(rows, metadata={"ids": json.dumps(ids)})
        atomic_write(self.path / name, data)
        n_rows = int(rows["index"].shape[0])
        entry = {"file": name, "rank": self.rank, "shard": k, "start": start, "stop": stop, "rows": n_rows,
                 "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
        old = self.log["moments"]
        new = f"rank{self.rank:03d}-moments{k % 2}.safetensors"  # alternate: the committed one stays intact
        atomic_write(self.path / new, moments_bytes(moments))
        self.log["shards"].append(entry)
        self.log["skipped"].extend(skipped)
        self.log["moments"] = new
        atomic_write_json(self.log_path, self.log)
        if old and old != new:
            (self.path / old).unlink(missing_ok=True)

    def finish(self) -> None:
        self.log["done"] = True
        atomic_write_json(self.log_path, self.log)


def check_shard(path: Path, entry: dict, full: bool = True) -> None:
    """Raise :class:`CorruptShard` naming the shard if its size (and, with ``full``, its
    sha256) is not the recorded one."""
    file = Path(path) / entry["file"]
    fix = "delete the store directory and extract again (or restore the file from a copy)"
    if not file.exists():
        raise CorruptShard(f"shard {entry['file']} of the store at {path} is missing: {fix}")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise CorruptShard(f"shard {entry['file']} of the store at {path} has {size} bytes, "
                           f"the manifest says {entry['bytes']} (truncated?): {fix}")
    if full and sha256_file(file) != entry["sha256"]:
        raise CorruptShard(f"shard {entry['file']} of the store at {path} does not match its sha256 "
                           f"in the manifest (corrupted): {fix}")


def finalize(path: str | Path) -> Path:
    """Merge the rank logs of a finished extraction into ``manifest.json`` and the rank
    moments (Chan merge, in rank order) into ``moments.safetensors``. Run once, by one
    process, after every rank has finished (rank 0 after a barrier under torchrun; by hand
    after copying the rank files of several machines into one directory)."""
    path = Path(path)
    logs = sorted(path.glob("rank[0-9][0-9][0-9].json"))
    if not logs:
        raise StoreError(f"{path} has no rank logs (rankNNN.json): nothing was extracted there")
    logs = [json.loads(p.read_text()) for p in logs]
    header = logs[0]["header"]
    world = header["world_size"]
    ranks = sorted(log["rank"] for log in logs)
    if ranks != list(range(world)):
        raise StoreError(f"{path}: rank logs {ranks} found, the run had {world} ranks: copy the missing ones here")
    for log in logs:
        check_header(path, log["header"], header)
        if not log["done"]:
            raise StoreError(f"{path}: rank {log['rank']} has not finished; resume the extraction")
    logs.sort(key=lambda log: log["rank"])
    merged: dict[str, RunningMoments] | None = None
    for log in logs:
        if log["moments"] is None:
            continue
        m = read_moments(path / log["moments"])
        merged = m if merged is None else {k: merged[k].merge(m[k]) for k in merged}
    data = moments_bytes(merged or {})
    atomic_write(path / MOMENTS, data)
    shards = [s for log in logs for s in log["shards"]]
    skipped = [s for log in logs for s in log["skipped"]]
    manifest = {**header, "shards": shards, "n_rows": sum(s["rows"] for s in shards),
                "skipped": skipped, "n_skipped": len(skipped),
                "moments": MOMENTS, "moments_sha256": hashlib.sha256(data).hexdigest()}
    atomic_write_json(path / MANIFEST, manifest)
    return path / MANIFEST


# ---------------------------------------------------------------------------- reading
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
                raise StoreError(f"the store at {self.path} is incomplete (no {MANIFEST}; the extraction did not "
                                 "finish): run the same extraction again to resume it")
            raise FileNotFoundError(f"{manifest} not found: is {self.path} a store written by hookedclip.data.extract?")
        self.manifest = json.loads(manifest.read_text())
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{manifest} is format {self.manifest.get('format')!r}, this library reads {FORMAT!r} "
                             "(stores before v2 recorded the model by a fingerprint this version no longer "
                             "computes): extract the store again")
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
        return (f"ActivationStore({str(self.path)!r}, rows={len(self)}, shards={len(self.shards)}, "
                f"targets={list(self.targets)})")

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

    def check(self, model=None, dataset=None, targets: Sequence[str] | None = None,
              text_embeddings: torch.Tensor | None = None) -> None:
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
        check_header(self.path, self.manifest, wanted, keys=list(wanted), action="read",
                     fix="Pass the model and dataset it was extracted from, or extract a store for these.")
        missing = [t for t in targets or [] if t not in self.targets]
        if missing:
            raise StoreMismatch(f"the store at {self.path} holds no target {', '.join(map(repr, missing))} "
                                f"(it holds {list(self.targets)}): extract them with --targets")
        for target in targets or []:
            d = self.targets[target].shape[-1]
            if text_embeddings is not None and text_embeddings.shape[-1] != d:
                raise ValueError(f"the text embeddings have dimension {text_embeddings.shape[-1]}, the store's "
                                 f"{target!r} rows {d}: embed the texts with the model the store was extracted from")

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

    def rows(self, key: str, start: int = 0, stop: int | None = None) -> Shaped[Tensor, "rows *shape"]:
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

    def dataset(self, keys: Sequence[str] | None = None) -> "StoreDataset":
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


def spec_dicts(specs: Sequence[TargetSpec]) -> list[dict]:
    return [asdict(s) for s in specs]
