"""Regenerate the figures of docs/toy_world.md: docs/figures/toy_grid.png (16 held-out images
with training-style captions) and docs/figures/toy_spurious.png (two images of each group of
the spurious split). Deterministic: the same world seeds give the same pictures.

Run: python docs/make_toy_figures.py [--out docs/figures]
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from figure_args import figure_args

from hookedclip import plotting
from hookedclip.toy.world import SpuriousSpec, ToyWorld, caption

GRID_SEED, CAPTION_SEED, SPURIOUS_SEED = 5, 0, 1


def toy_grid(path: Path) -> Path:
    world = ToyWorld(16, seed=GRID_SEED, split="test")
    rng = np.random.default_rng(CAPTION_SEED)
    captions = [caption(a, rng)[0] for a in world.attributes()]
    return plotting.image_grid(world.images(), captions, path)


def toy_spurious(path: Path) -> Path:
    spec = SpuriousSpec()
    world = ToyWorld(8, seed=SPURIOUS_SEED, split="test", spurious=spec, group_balanced=True)
    names = spec.group_names()
    return plotting.image_grid(world.images(), [names[g] for g in world.groups()], path)


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__, argv)
    for path in (toy_grid(args.out / "toy_grid.png"), toy_spurious(args.out / "toy_spurious.png")):
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
