"""PCLens from a store: the moment path against loading every row and an SVD per head.

A synthetic ActivationStore with ViT-B-16 shapes (the heads of the last 4 layers: 48 rows of
d' = 512 per image, float32, moments kept as float64 mean + scatter during the write, as
``extract`` does) is analysed two ways, each in a fresh process:

- ``ours-stream`` (the fair comparison): :func:`hookedclip.methods.pclens.fit_from_store` on a
  store extracted with ``--moments mean``: the scatter is streamed from the shards
  (:meth:`~hookedclip.data.stats.RunningMoments.update`, in-place float64 ``baddbmm`` over all
  heads at once), then ``eigh`` per head;
- ``ours-stored``: ``fit_from_store`` on the scatter the extraction kept (``--moments cov``).
  Its time includes the accumulation the extraction paid for it (``RunningMoments.update`` on
  every shard, timed while the store is written), not only the ``eigh``;
- ``naive``: ``store.rows("heads")`` (every row in memory), then ``pca_from_data`` (centre,
  thin SVD in float64) per head: what the reference scripts do after ``np.load``.

Time and peak RSS above the process after start-up (``VmHWM`` − ``VmRSS``) are printed for
``--small`` and ``--large`` rows (the accumulation during the write is timed, its memory not).
Targets: ours >= 2x faster; our memory flat in N.

Usage: ``python benchmarks/pclens.py [--small 5000] [--large 20000] [--heads 48] [--d 512]``
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time

import torch
from _memory import status_bytes  # benchmarks/ is on sys.path when run as a script

PER_SHARD = 2500


def _write_child(path: str, rows: int, heads: int, d: int) -> float:
    """A store of ``rows`` rows of ``[heads, d]`` with low-rank structure plus noise (so each
    head has a realistic spectrum), and its float64 moments accumulated shard by shard as
    ``extract`` does; returns the seconds spent accumulating them."""
    from hookedclip.data.stats import RunningMoments
    from hookedclip.data.store import FORMAT, RankWriter, TargetSpec, finalize, spec_dicts

    labels = [f"L{8 + h // 12}H{h % 12}" for h in range(heads)]
    header = {
        "format": FORMAT,
        "model": {"name": "bench", "config_hash": "x", "weights": "y"},
        "dataset": {"length": rows},
        "world_size": 1,
        "rows_per_shard": PER_SHARD,
        "params": {},
        "targets": spec_dicts([TargetSpec("heads", "float32", [heads, d], "cov", labels)]),
    }
    writer = RankWriter(path, header)
    gen = torch.Generator().manual_seed(0)
    mix = torch.randn(heads, 64, d, generator=gen) / 8  # each head: 64 strong directions
    acc = RunningMoments.empty((heads,), d)
    accumulate = 0.0
    for a in range(0, rows, PER_SHARD):
        b = min(a + PER_SHARD, rows)
        x = torch.einsum("nhr,hrd->nhd", torch.randn(b - a, heads, 64, generator=gen), mix)
        x += 0.05 * torch.randn(b - a, heads, d, generator=gen)
        start = time.perf_counter()
        acc.update(x)
        accumulate += time.perf_counter() - start
        idx = torch.arange(a, b)
        writer.commit(a, b, {"heads": x, "index": idx, "label": idx, "group": idx}, [], [], {"heads": acc})
    writer.finish()
    finalize(path)
    return accumulate


def ours_stored(path: str) -> None:
    from hookedclip.data.store import ActivationStore
    from hookedclip.methods.pclens import fit_from_store

    store = ActivationStore(path, verify="size")
    fit_from_store(store, embedding=None, max_pcs=80)


def ours_stream(path: str) -> None:
    from hookedclip.data.store import ActivationStore
    from hookedclip.methods.pclens import fit_from_store

    store = ActivationStore(path, verify="size")
    store.targets["heads"].moments = "mean"  # as if extracted with --moments mean: stream the scatter
    fit_from_store(store, embedding=None, max_pcs=80)


def naive(path: str) -> None:
    from hookedclip.data.store import ActivationStore
    from hookedclip.methods.pclens import pca_from_data

    store = ActivationStore(path, verify="size")
    x = store.rows("heads")  # [N, heads, d]: everything in memory
    for h in range(x.shape[1]):
        pca_from_data(x[:, h], max_pcs=80)


def _run_child(path: str) -> None:
    fn = {"ours-stored": ours_stored, "ours-stream": ours_stream, "naive": naive}[
        sys.argv[sys.argv.index("--child") + 1]
    ]
    import hookedclip.methods.pclens  # noqa: F401  (imports are start-up, not the measured path)

    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset peak RSS so only the measured call counts
    base = status_bytes("VmRSS")
    start = time.perf_counter()
    fn(path)
    print(time.perf_counter() - start, status_bytes("VmHWM") - base)


def measure(name: str, path: str) -> tuple[float, float]:
    cmd = [sys.executable, __file__, "--child", name, "--store", path]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.split()
    return float(out[0]), float(out[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", type=int, default=5000)
    parser.add_argument("--large", type=int, default=20000)
    parser.add_argument("--heads", type=int, default=48, help="12 heads x last 4 layers of ViT-B-16")
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--store", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.child:
        return _run_child(args.store)
    results: dict[int, dict[str, tuple[float, float]]] = {}
    names = ("ours-stream", "ours-stored", "naive")
    for rows in (args.small, args.large):
        path = tempfile.mkdtemp()
        try:
            accumulate = _write_child(path, rows, args.heads, args.d)
            results[rows] = {name: measure(name, path) for name in names}
            t, m = results[rows]["ours-stored"]
            results[rows]["ours-stored"] = (t + accumulate, m)  # + what the extraction spent on the scatter
        finally:
            shutil.rmtree(path)
    print(f"PCLens of {args.heads} heads, d' = {args.d}, float32 store ({PER_SHARD} rows per shard), CPU, 1 thread")
    print(f"{'rows':>7} {'path':<12}{'seconds':>9}{'peak MiB':>10}")
    for rows, r in results.items():
        for name, (t, m) in r.items():
            print(f"{rows:>7} {name:<12}{t:>9.2f}{m / 2**20:>10.0f}")
    for rows, r in results.items():
        (t_s, m_s), (t_o, m_o), (t_n, m_n) = (r[name] for name in names)
        print(
            f"{rows:>7} rows: naive / ours-stream time {t_n / t_s:.1f}x, memory {m_n / max(m_s, 1):.1f}x; "
            f"naive / ours-stored (incl. accumulation) time {t_n / t_o:.1f}x, memory {m_n / max(m_o, 1):.1f}x "
            "(target time >= 2)"
        )
    small, large = results[args.small], results[args.large]
    for name in names:
        print(
            f"peak memory {args.large} / {args.small} rows, {name}: {large[name][1] / max(small[name][1], 1):.2f} "
            f"(target for ours: flat, about 1)"
        )


if __name__ == "__main__":
    main()
