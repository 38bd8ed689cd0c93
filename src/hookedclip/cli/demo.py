"""``hookedclip demo``: the HTML report on the shipped toy model."""

from __future__ import annotations

import argparse

from hookedclip.cli._common import add_held_out_arguments


def _cmd_demo(args: argparse.Namespace) -> None:
    from hookedclip.cli._common import CommandError
    from hookedclip.report.demo import MIN_IMAGES, run_demo

    if args.n < MIN_IMAGES:
        raise CommandError(
            f"--n {args.n}: the demo needs at least {MIN_IMAGES} images (its probes train on half and "
            f"score on the other half, every shape in both); use --n {MIN_IMAGES} or more"
        )
    if args.n_test is not None and args.n_test < 1:
        raise CommandError(f"--n-test {args.n_test}: give a positive number of images (or omit it for all)")
    path = run_demo(args.out, n_images=args.n, seed=args.seed, n_test=args.n_test)
    print(f"report written to {path}")


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip demo`` on the ``hookedclip`` command's subparsers."""
    demo = subparsers.add_parser("demo", help="write the HTML report on the toy model (the main job)")
    demo.add_argument("--out", default="hookedclip-demo", help="report folder")
    add_held_out_arguments(demo, 512, seed=2024, n_help="held-out toy images to analyse (at least 64)", n_type=int)
    demo.add_argument(
        "--n-test",
        type=int,
        default=None,
        help="measure accuracies on only the first N images of each canonical test/validation set "
        "(default: all, the numbers of `hookedclip toy evaluate`)",
    )
    demo.set_defaults(func=_cmd_demo)
    return demo
