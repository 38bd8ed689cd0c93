"""``hookedclip toy train`` and ``hookedclip toy evaluate``."""

from __future__ import annotations

import argparse
import json

from hookedclip.cli._common import add_canonical_set_arguments, positive
from hookedclip.toy.train import DEFAULTS


def _cmd_train(args: argparse.Namespace) -> None:
    from hookedclip.toy.train import train

    result = train(
        args.out,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        resume=not args.no_resume,
        eval_every=args.eval_every,
        num_threads=args.threads,
    )
    card = result.get("card")
    if card is None:
        print(f"stopped at step {result['step']}; run the same command again to resume")
        return
    from hookedclip.toy.evaluate import format_table

    print(
        f"trained {card['steps']} steps in {card['train_time_s'] / 60:.1f} min; wrote "
        f"toy_clip.safetensors, card.json, MODEL_CARD.md to {args.out}"
    )
    print(
        format_table(
            {**card["eval"], "accuracy": card["accuracy"], "chance": card["chance"], "spurious": card["spurious"]}
        )
    )
    print(
        f"load it with HookedCLIP.from_pretrained('toy', weights={str(args.out)!r}), or copy "
        "toy_clip.safetensors and card.json into hookedclip/toy/weights/ to replace the shipped model"
    )


def _cmd_evaluate(args: argparse.Namespace) -> None:
    from pathlib import Path

    from hookedclip.cli._common import CommandError
    from hookedclip.toy.evaluate import evaluate, format_table
    from hookedclip.toy.model import load_toy_model

    if args.weights is not None and not Path(args.weights).is_dir():
        raise CommandError(
            f"--weights {args.weights!r} is not a folder; give the --out folder of `hookedclip toy "
            "train` (it holds toy_clip.safetensors and card.json), or omit it for the shipped model"
        )
    model = load_toy_model(weights=args.weights)
    result = evaluate(model, n=args.n, seed=args.seed)
    print(json.dumps(result, indent=2) if args.json else format_table(result))


def add_toy_commands(subparsers) -> argparse.ArgumentParser:
    """Register ``toy train`` and ``toy evaluate`` on the ``hookedclip`` command's subparsers."""
    toy = subparsers.add_parser("toy", help="the shipped toy CLIP: train it, evaluate it")
    sub = toy.add_subparsers(dest="toy_command", required=True, metavar="{train,evaluate}")

    train = sub.add_parser("train", help="train the toy CLIP on the toy world (about 20 min on 2 CPU cores)")
    train.add_argument(
        "--out",
        default="toy_clip_run",
        help="output directory (checkpoints, then the exported toy_clip.safetensors, card.json, MODEL_CARD.md)",
    )
    train.add_argument("--steps", type=positive, default=DEFAULTS["steps"], help="optimizer steps")
    train.add_argument(
        "--batch-size", type=positive, default=DEFAULTS["batch_size"], help="image-caption pairs per step"
    )
    train.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate")
    train.add_argument("--seed", type=int, default=DEFAULTS["seed"], help="init and data seed")
    train.add_argument("--no-resume", action="store_true", help="start over instead of resuming from --out")
    train.add_argument(
        "--eval-every", type=int, default=0, help="held-out evaluation every N steps (0: only at the end)"
    )
    train.add_argument("--threads", type=positive, default=2, help="torch CPU threads")
    train.set_defaults(func=_cmd_train)

    ev = sub.add_parser("evaluate", help="zero-shot accuracy per attribute and spurious-split WGA")
    add_canonical_set_arguments(ev, seed_flag="--seed", every_set=True)
    ev.add_argument("--weights", default=None, help="directory written by `toy train` (default: shipped weights)")
    ev.add_argument("--json", action="store_true", help="print the result as JSON")
    ev.set_defaults(func=_cmd_evaluate)
    return toy
