"""``hookedclip demo``: the HTML report on the shipped toy model."""

from __future__ import annotations

import argparse


def _cmd_demo(args: argparse.Namespace) -> None:
    from hookedclip.report.demo import run_demo

    path = run_demo(args.out, n_images=args.n, seed=args.seed)
    print(f"report written to {path}")


def add_demo_command(subparsers) -> argparse.ArgumentParser:
    """Register ``hookedclip demo`` on the ``hookedclip`` command's subparsers."""
    demo = subparsers.add_parser("demo", help="write the HTML report on the toy model (the main job)")
    demo.add_argument("--out", default="hookedclip-demo", help="report folder (default: ./hookedclip-demo)")
    demo.add_argument("--n", type=int, default=512, help="held-out toy images to analyse")
    demo.add_argument("--seed", type=int, default=2024)
    demo.set_defaults(func=_cmd_demo)
    return demo
