"""Store files: atomic writes, hashes, safetensors bytes, moments files and shard checks."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

from safetensors.torch import load as load_bytes
from safetensors.torch import save as save_bytes
from torch import Tensor

from hookedclip.data.stats import RunningMoments
from hookedclip.data.store.errors import CorruptShard


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


def check_shard(path: Path, entry: dict, full: bool = True) -> None:
    """Raise :class:`CorruptShard` naming the shard if its size (and, with ``full``, its
    sha256) is not the recorded one."""
    file = Path(path) / entry["file"]
    fix = "delete the store directory and extract again (or restore the file from a copy)"
    if not file.exists():
        raise CorruptShard(f"shard {entry['file']} of the store at {path} is missing: {fix}")
    size = file.stat().st_size
    if size != entry["bytes"]:
        raise CorruptShard(
            f"shard {entry['file']} of the store at {path} has {size} bytes, "
            f"the manifest says {entry['bytes']} (truncated?): {fix}"
        )
    if full and sha256_file(file) != entry["sha256"]:
        raise CorruptShard(
            f"shard {entry['file']} of the store at {path} does not match its sha256 in the manifest (corrupted): {fix}"
        )
