"""ActivationStore: extraction throughput and the memory of streaming covariance.

1. Throughput: ``extract(model, toy images, targets)`` (shards, sha256, atomic renames,
   float64 moments of every target) against the plain loop a user would write: the same
   DataLoader and preprocessing, the same forward and targets, rows concatenated and
   ``torch.save``-d per shard. Target: ours within 10% (ratio <= 1.10).
2. Memory: peak RSS of ``store.compute_moments`` (mean and covariance) over stores of
   ``--small`` and ``--large`` rows, each in a fresh process. Flat (ratio about 1) means
   memory does not grow with the number of rows.

Usage: ``python benchmarks/store.py [--n 1024] [--small 10000] [--large 100000] [--d 256]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

TARGETS = ["heads", "embedding"]


def plain_loop(model, dataset, out: Path, batch_size: int, rows_per_shard: int) -> None:
    from hookedclip.data.extract import _collate, _forward, _Loading, parse_target

    targets = [parse_target(t, model) for t in TARGETS]
    loader = torch.utils.data.DataLoader(
        _Loading(dataset, model.preprocess), batch_size=batch_size, collate_fn=_collate
    )
    rows, n, k = {t.name: [] for t in targets}, 0, 0
    with torch.no_grad():
        for batch in loader:
            for t, v in zip(targets, _forward(model, targets, batch["images"])):
                rows[t.name].append(v)
            n += len(batch["ids"])
            if n >= rows_per_shard:
                torch.save({k_: torch.cat(v) for k_, v in rows.items()}, out / f"{k}.pt")
                rows, n, k = {t.name: [] for t in targets}, 0, k + 1
    if n:
        torch.save({k_: torch.cat(v) for k_, v in rows.items()}, out / f"{k}.pt")


def throughput(n: int, batch_size: int, rows_per_shard: int, repeats: int) -> None:
    from hookedclip import HookedCLIP
    from hookedclip.data import toy_dataset
    from hookedclip.data.extract import extract

    model = HookedCLIP.from_pretrained("toy").eval()
    dataset = toy_dataset(n)
    times = {"plain": [], "ours": []}
    for _ in range(repeats):  # interleaved, so drift in machine load hits both
        for name in ("plain", "ours"):
            out = Path(tempfile.mkdtemp())
            start = time.perf_counter()
            if name == "plain":
                plain_loop(model, dataset, out, batch_size, rows_per_shard)
            else:
                extract(
                    model, dataset, TARGETS, out, batch_size=batch_size, rows_per_shard=rows_per_shard, progress=False
                )
            times[name].append(time.perf_counter() - start)
            shutil.rmtree(out)
    plain, ours = min(times["plain"]), min(times["ours"])
    print(f"extraction of {n} toy images, targets {TARGETS}, batch {batch_size}, best of {repeats}:")
    print(f"  plain loop + torch.save: {plain:.2f} s ({n / plain:.0f} img/s)")
    print(f"  extract (store + moments): {ours:.2f} s ({n / ours:.0f} img/s)")
    print(f"  ratio ours / plain: {ours / plain:.3f} (target <= 1.10)")


def _write_child(path: str, rows: int, d: int) -> None:
    """Write a store of ``rows`` random float32 rows of width ``d`` at ``path``."""
    from hookedclip.data.stats import RunningMoments
    from hookedclip.data.store import FORMAT, RankWriter, TargetSpec, finalize, spec_dicts

    per_shard = 5000
    header = {
        "format": FORMAT,
        "model": {"name": "bench"},
        "dataset": {"length": rows},
        "world_size": 1,
        "targets": spec_dicts([TargetSpec("x", "float32", [d], "cov")]),
        "rows_per_shard": per_shard,
        "params": {},
    }
    writer = RankWriter(path, header)
    gen = torch.Generator().manual_seed(0)
    for a in range(0, rows, per_shard):
        b = min(a + per_shard, rows)
        idx = torch.arange(a, b)
        writer.commit(
            a,
            b,
            {"x": torch.randn(b - a, d, generator=gen), "index": idx, "label": idx, "group": idx},
            [],
            [],
            {"x": RunningMoments.empty((), d)},
        )
    writer.finish()
    finalize(path)


def _read_child(path: str) -> None:
    """Peak RSS (KiB) after opening the store, and after compute_moments, in a fresh process."""
    import resource

    from hookedclip.data.store import ActivationStore

    store = ActivationStore(path, verify="size")
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    store.compute_moments("x")
    print(before, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)


def memory(small: int, large: int, d: int) -> None:
    peaks = {}
    for rows in (small, large):
        path = tempfile.mkdtemp()
        run = [sys.executable, __file__, "--d", str(d), "--store", path]
        subprocess.run(run + ["--child", "write", "--rows", str(rows)], check=True)
        out = subprocess.run(run + ["--child", "read"], capture_output=True, text=True, check=True).stdout.split()
        shutil.rmtree(path)
        peaks[rows] = (int(out[0]) / 1024, int(out[1]) / 1024)  # ru_maxrss is in KiB on Linux
    print(f"peak RSS of compute_moments (mean + covariance, d = {d}, 5000 rows per shard), fresh process each:")
    for rows, (base, peak) in peaks.items():
        print(
            f"  {rows:>7} rows ({rows * d * 4 / 2**20:.0f} MiB of activations): {peak:.0f} MiB "
            f"(+{peak - base:.0f} MiB over the process after opening the store)"
        )
    (b1, p1), (b2, p2) = peaks[small], peaks[large]
    print(
        f"  ratio {large} / {small} rows: peak {p2 / p1:.3f}, increase {(p2 - b2) / max(p1 - b1, 1e-9):.3f} "
        "(target: flat, 0.9-1.1)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1024, help="toy images for the throughput test")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rows-per-shard", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--small", type=int, default=10_000)
    parser.add_argument("--large", type=int, default=100_000)
    parser.add_argument("--d", type=int, default=256)
    parser.add_argument("--child", choices=["write", "read"], default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child == "write":
        return _write_child(args.store, args.rows, args.d)
    if args.child == "read":
        return _read_child(args.store)
    throughput(args.n, args.batch, args.rows_per_shard, args.repeats)
    memory(args.small, args.large, args.d)


if __name__ == "__main__":
    main()
