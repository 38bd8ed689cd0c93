"""Writing a store: one rank's shards and progress log, and the manifest that completes it."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from torch import Tensor

from hookedclip.data.stats import RunningMoments
from hookedclip.data.store.errors import StoreError
from hookedclip.data.store.files import (
    atomic_write,
    atomic_write_json,
    check_shard,
    moments_bytes,
    read_moments,
    remove_temporaries,
    tensors_bytes,
)
from hookedclip.data.store.manifest import MANIFEST, MOMENTS, check_header, rank_log_name, shard_name


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

    def commit(
        self,
        start: int,
        stop: int,
        rows: dict[str, Tensor],
        ids: list[str],
        skipped: list[dict],
        moments: dict[str, RunningMoments],
    ) -> None:
        """Write shard ``n_done`` (dataset indices ``[start, stop)``), then the moments
        after it, then the log entry that makes both count."""
        k = self.n_done
        name = shard_name(self.rank, k)
        data = tensors_bytes(rows, metadata={"ids": json.dumps(ids)})
        atomic_write(self.path / name, data)
        n_rows = int(rows["index"].shape[0])
        entry = {
            "file": name,
            "rank": self.rank,
            "shard": k,
            "start": start,
            "stop": stop,
            "rows": n_rows,
            "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(),
        }
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
    manifest = {
        **header,
        "shards": shards,
        "n_rows": sum(s["rows"] for s in shards),
        "skipped": skipped,
        "n_skipped": len(skipped),
        "moments": MOMENTS,
        "moments_sha256": hashlib.sha256(data).hexdigest(),
    }
    atomic_write_json(path / MANIFEST, manifest)
    return path / MANIFEST
