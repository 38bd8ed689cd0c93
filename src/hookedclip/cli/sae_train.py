"""``hookedclip sae train`` (an autoencoder from an activation store) and ``hookedclip sae info``.

Under ``torchrun`` (``torchrun --nproc-per-node N -m hookedclip.cli sae train ...``) every process
sets up ``torch.distributed`` (NCCL on GPUs, gloo on the CPU) and trains its share of every
global batch with ``DistributedDataParallel``; rank 0 writes the checkpoints and the result.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

from hookedclip.cli._common import CommandError, positive


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def _config(args: argparse.Namespace):
    from hookedclip.methods.sae import TrainConfig

    given = {
        "d_sae": args.latents,
        "k": args.k,
        "token": args.token,
        "seed": args.seed,
        "layer": args.layer,
        "checkpoint_every": args.checkpoint_every,
        "log_every": args.log_every,
        "precision": args.precision,
    }
    for name, value in (("steps", args.steps), ("batch_size", args.batch), ("lr", args.lr)):
        if value is not None:
            given[name] = value
    return TrainConfig.fast(**given) if args.fast else TrainConfig(**given)


def _cmd_train(args: argparse.Namespace) -> None:
    import torch

    from hookedclip.data.store import ActivationStore
    from hookedclip.methods.sae import train

    cfg = _config(args)  # a bad recipe (k > latents) is named before anything is read
    if not Path(args.store).is_dir():
        raise CommandError(f"--store {args.store}: no such directory; make a store with `hookedclip cache --out DIR`")
    store = ActivationStore(args.store)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    device = args.device or (f"cuda:{os.environ.get('LOCAL_RANK', '0')}" if torch.cuda.is_available() else "cpu")
    if world > 1:
        import torch.distributed as dist

        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        sae, log = train(store, args.target, cfg, out=args.out, resume=args.resume, device=device)
        if world == 1 or torch.distributed.get_rank() == 0:
            final = ", ".join(f"{k} {v:.4g}" for k, v in log.final.items())
            print(f"{sae!r} -> {args.out}; step {log.step[-1] if log.step else 0}: {final}")
    finally:
        if world > 1:
            import torch.distributed as dist

            dist.destroy_process_group()


def describe(path: str) -> str:
    """The autoencoder at ``path`` (or the shipped ``toy``): config, model, hook point, weight statistics."""
    from hookedclip.methods.sae import TopKSAE
    from hookedclip.methods.sae.pretrained import WEIGHTS

    folder = WEIGHTS if path == "toy" else Path(path)
    sae = TopKSAE.load(folder)
    meta = json.loads((folder / "sae.json").read_text())
    hook = meta.get("hook")
    where = "none recorded" if hook is None else f"{hook['site']} after block {hook['layer']}, token {hook['token']}"
    atoms, rows = sae.W_dec.norm(dim=0), sae.W_enc.norm(dim=1)
    lines = [
        repr(sae),
        f"model: {sae.model_identity or 'none recorded'}",
        f"hook point: {where}",
        f"parameters: {sum(p.numel() for p in sae.parameters()):,} ({sae.W_enc.dtype})",
        f"encoder row norms: min {rows.min():.4g}, mean {rows.mean():.4g}, max {rows.max():.4g}",
        f"encoder bias: mean {sae.b_enc.mean():.4g}, std {sae.b_enc.std():.4g}",
        f"atom norms: min {atoms.min():.6f}, max {atoms.max():.6f}",
    ]
    log_file = next((f for f in (folder / "train_log.json", folder / "sae_train_log.json") if f.exists()), None)
    if log_file is not None:
        from hookedclip.methods.sae import TrainLog

        log = TrainLog.load(log_file)
        final = ", ".join(f"{k} {v:.4g}" for k, v in log.final.items())
        lines.append(
            f"training: {log.step[-1] if log.step else 0} steps, {log.samples[-1] if log.samples else 0:,} vectors; {final}"
        )
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> None:
    print(describe(args.path))


def add_commands(sub) -> None:
    """Register ``train`` and ``info`` on the ``sae`` group's subparsers."""
    from hookedclip.methods.sae import TrainConfig

    tr = sub.add_parser(
        "train",
        help="train a TopK autoencoder from an activation store",
        description="Train a TopK autoencoder from a store's rows (no model in the loop). The defaults are the "
        "published recipe (batch 32, lr 2e-4, 120,000 steps); --fast departs from it for speed "
        "(batch 1024, lr 1e-3, as many vectors in fewer steps).",
    )
    tr.add_argument("--store", required=True, help="an activation store directory (hookedclip cache --out DIR)")
    tr.add_argument("--target", default=None, help="the store target to read (default: its only target)")
    tr.add_argument("--out", required=True, help="directory for checkpoints, the autoencoder and its log")
    tr.add_argument("--latents", type=positive, default=TrainConfig.d_sae, help="number of latents H")
    tr.add_argument("--k", type=positive, default=TrainConfig.k, help="active latents per vector")
    tr.add_argument("--steps", type=positive, default=None, help="optimiser steps (default: 120000; --fast: scaled)")
    tr.add_argument("--batch", type=positive, default=None, help="global batch (default: 32; --fast: 1024)")
    tr.add_argument("--lr", type=_positive_float, default=None, help="learning rate (default: 2e-4; --fast: 1e-3)")
    tr.add_argument("--fast", action="store_true", help="the faster mode (departs from the published recipe)")
    tr.add_argument("--resume", action="store_true", help="continue from the checkpoint in --out")
    tr.add_argument("--token", choices=("cls", "spatial"), default="cls", help="class token or every patch token")
    tr.add_argument("--layer", type=int, default=None, help="block the target reads (default: from its name)")
    tr.add_argument("--seed", type=int, default=0, help="initialisation and data-order seed")
    tr.add_argument("--checkpoint-every", type=int, default=TrainConfig.checkpoint_every, help="steps")
    tr.add_argument("--log-every", type=int, default=TrainConfig.log_every, help="steps")
    tr.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto", help="GPU autocast")
    tr.add_argument("--device", default=None, help="default: cuda:LOCAL_RANK if available, else cpu")
    tr.set_defaults(func=_cmd_train)
    info = sub.add_parser("info", help="config, model, hook point and weight statistics of an autoencoder")
    info.add_argument("path", help="a folder written by TopKSAE.save or sae train, or 'toy'")
    info.set_defaults(func=_cmd_info)
