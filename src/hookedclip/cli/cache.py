"""``hookedclip cache``: extract activations into a resumable ActivationStore.

Launched by ``torchrun``, every rank sets up ``torch.distributed``, takes its slice of the
dataset and writes its own shards (see :func:`hookedclip.data.extract.extract`). Run as a module::

    torchrun --nproc-per-node 2 -m hookedclip.cli.cache --model toy --data toy:4096 --targets heads --out store/
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

import torch

from hookedclip.data.extract import extract
from hookedclip.data.store import ActivationStore
from hookedclip.model.resolve import load_model


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="toy", help="toy | open_clip name | saved HookedCLIP dir | hf:LOCAL_DIR")
    parser.add_argument("--pretrained", default=None, help="open_clip pretrained tag or checkpoint file")
    parser.add_argument("--data", default="toy:1024",
                        help="toy[:N] | an image folder | waterbirds:ROOT[:SPLIT] | imagenet-val:ROOT | "
                             "imagenet-seg:FILE.mat")
    parser.add_argument("--targets", nargs="+", default=["heads", "embedding"],
                        help="hook names (NAME or NAME@POS), heads, heads/tokens, components, embedding, "
                             "decompose:SPEC")
    parser.add_argument("--out", required=True, help="store directory (resumed if it holds an unfinished run)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    parser.add_argument("--rows-per-shard", type=int, default=4096)
    parser.add_argument("--moments", default="auto", choices=["auto", "cov", "mean", "none"])
    parser.add_argument("--workers", type=int, default=0, help="DataLoader worker processes")
    parser.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")


def run_cache(args: argparse.Namespace) -> ActivationStore | None:
    """``hookedclip cache``: set up torch.distributed when launched by torchrun, load the
    model and dataset, extract."""
    from hookedclip.data.datasets import open_dataset

    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = args.device or (f"cuda:{local}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        model = load_model(args.model, args.pretrained, device=device).eval()
        dataset = open_dataset(args.data)
        store = extract(model, dataset, args.targets, args.out, batch_size=args.batch_size,
                        dtype=getattr(torch, args.dtype), rows_per_shard=args.rows_per_shard, moments=args.moments,
                        num_workers=args.workers)
        if world == 1 or torch.distributed.get_rank() == 0:
            print(f"{store}; skipped {len(store.skipped)} unreadable images")
        return store
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def add_cache_command(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip cache`` on the ``hookedclip`` command's subparsers."""
    cache = subparsers.add_parser("cache", help="extract activations into a resumable ActivationStore (torchrun-aware)")
    add_arguments(cache)
    cache.set_defaults(func=run_cache)
    return cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hookedclip.cli.cache", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser)
    run_cache(parser.parse_args(argv))
    return 0


if __name__ == "__main__":
    sys.exit(main())
