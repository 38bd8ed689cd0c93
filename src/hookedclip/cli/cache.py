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

from hookedclip.cli._common import (
    CommandError,
    Parser,
    add_weights_arguments,
    check_pretrained_available,
    positive,
    run_command,
    warn,
)
from hookedclip.data.extract import extract, parse_target
from hookedclip.data.store import ActivationStore
from hookedclip.model.resolve import load_model

NAME = "hookedclip cache"
DATA_FORMS = "toy[:N], waterbirds:ROOT[:SPLIT], imagenet-val:ROOT[:LABELS_OR_DEVKIT], imagenet-seg:FILE.mat or a folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="toy", help="toy | open_clip name | saved HookedCLIP dir | hf:LOCAL_DIR")
    add_weights_arguments(parser)
    parser.add_argument("--data", default="toy:1024", help=DATA_FORMS)
    parser.add_argument(
        "--targets",
        nargs="+",
        default=["heads", "embedding"],
        help="hook names (NAME or NAME@POS), heads, heads/tokens, components, embedding, decompose:SPEC",
    )
    parser.add_argument("--out", required=True, help="store directory (resumed if it holds an unfinished run)")
    parser.add_argument("--batch-size", type=positive, default=64, help="images per forward pass")
    parser.add_argument(
        "--dtype", default="float32", choices=["float32", "float16", "bfloat16"], help="stored dtype of the activations"
    )
    parser.add_argument("--rows-per-shard", type=positive, default=4096, help="images per safetensors shard")
    parser.add_argument(
        "--moments",
        default="auto",
        choices=["auto", "cov", "mean", "none"],
        help="running statistics kept per target (auto: covariance where it fits in 64 MiB)",
    )
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
        _check_data_spec(args.data)
        check_pretrained_available(args.model, args.pretrained, args.download)
        model = load_model(args.model, args.pretrained, device=device).eval()
        _check_targets(model, args.targets)
        dataset = open_dataset(args.data)
        _warn_if_far_from_training(model, dataset, args.data)
        store = extract(
            model,
            dataset,
            args.targets,
            args.out,
            batch_size=args.batch_size,
            dtype=getattr(torch, args.dtype),
            rows_per_shard=args.rows_per_shard,
            moments=args.moments,
            num_workers=args.workers,
        )
        if world == 1 or torch.distributed.get_rank() == 0:
            print(f"{store}; skipped {len(store.skipped)} unreadable images")
        return store
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def _check_data_spec(spec: str) -> None:
    kind, colon, rest = spec.partition(":")
    if kind == "toy" and colon and not (rest.isdigit() and int(rest) > 0):
        raise CommandError(f"--data {spec!r}: the toy world's size must be a positive integer, e.g. --data toy:1024")
    if kind in ("waterbirds", "imagenet-val", "imagenet-seg") and not rest:
        raise CommandError(f"--data {spec!r} names no path; use {kind}:PATH (forms: {DATA_FORMS})")


def _check_targets(model, targets: list[str]) -> None:
    """Every target parses against the model, before any image is read."""
    import difflib

    for target in targets:
        try:
            parse_target(target, model)
        except ValueError as exc:
            raise CommandError(f"--targets {target!r}: {exc}") from exc
        except KeyError as exc:
            close = difflib.get_close_matches(target.partition("@")[0], model.hook_points(), n=3, cutoff=0.5)
            hint = f" (closest hook points: {', '.join(close)})" if close else ""
            raise CommandError(
                f"--targets {target!r} is neither a target name nor a hook point{hint}; use heads, heads/tokens, "
                f"components, embedding, decompose:SPEC or a hook name[@POS] (`hookedclip info "
                f"{model.cfg.model_name} --all-hooks` lists them)"
            ) from exc


def _warn_if_far_from_training(model, dataset, spec: str) -> None:
    """Warn when the images are unlike what the model was trained on: the toy model on anything
    but the toy world, or images much smaller or larger than the model's input."""
    size = model.cfg.vision.image_size
    toy_model, toy_data = model.cfg.source == "toy", spec.split(":")[0] == "toy"
    if toy_model and not toy_data:
        warn(
            NAME,
            f"the toy model was trained on {size} px pictures of coloured shapes, not on {spec}; its "
            "activations say little about other images: pass a real model, e.g. --model ViT-B-16 "
            "--pretrained TAG",
        )
        return
    if len(dataset) == 0:
        return
    try:
        image = dataset[0]["image"]
    except Exception:  # noqa: BLE001 - an unreadable first image: extraction skips it and says so
        return
    height, width = _image_size(image)
    if min(height, width) < size / 2 or min(height, width) > 8 * size:
        warn(
            NAME,
            f"the first image of {spec} is {width}x{height} px, far from the model's {size} px input; its "
            "preprocessing will resize every image: check that this is the model you meant",
        )


def _image_size(image) -> tuple[int, int]:
    """``(height, width)`` of a PIL image, a ``[H, W, C]`` array or a ``[C, H, W]`` tensor."""
    from PIL import Image

    if isinstance(image, Image.Image):
        width, height = image.size
        return height, width
    shape = tuple(image.shape)
    return (shape[-2], shape[-1]) if isinstance(image, torch.Tensor) else (shape[0], shape[1])


def add_cache_command(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip cache`` on the ``hookedclip`` command's subparsers."""
    cache = subparsers.add_parser("cache", help="extract activations into a resumable ActivationStore (torchrun-aware)")
    add_arguments(cache)
    cache.set_defaults(func=run_cache)
    return cache


def main(argv: Sequence[str] | None = None) -> int:
    parser = Parser(prog="python -m hookedclip.cli.cache", description=__doc__.split("\n\n")[0])
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as done:
        return done.code if isinstance(done.code, int) else 2
    return run_command(run_cache, args, NAME)


if __name__ == "__main__":
    sys.exit(main())
