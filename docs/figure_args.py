"""The command line every ``docs/make_*.py`` script shares."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import torch

#: Where the pages look for their figures.
FIGURES = Path(__file__).resolve().parent / "figures"


def figure_args(
    doc: str, argv: list[str] | None = None, options: Callable[[argparse.ArgumentParser], object] | None = None
) -> argparse.Namespace:
    """Parse ``--out`` (default: docs/figures, created when missing) and the options a script adds
    with ``options(parser)``; the help shows the first paragraph of the script's docstring ``doc``.
    Torch runs one thread, so the numbers a script prints do not depend on the machine's cores."""
    parser = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    parser.add_argument(
        "--out", type=Path, default=FIGURES, help="folder the figures are written to (default: docs/figures)"
    )
    if options is not None:
        options(parser)
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    return args
