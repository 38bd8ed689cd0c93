"""Removing a spurious feature with PCLens on the toy CLIP.

The toy CLIP was trained with circles mostly on striped and squares mostly on dotted
backgrounds, so its circle-vs-square classifier partly reads the texture. PCLens finds the PCs
that carry "a striped background" and "a dotted background", removes the top K of them for
several K, and reports average and worst-group accuracy on a group-balanced test split.

Run: python examples/spurious_removal.py [--n 1000] [--out pclens-debias]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods import pclens
from hookedclip.methods.pclens.debias import debias_sweep, toy_task
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, default=1000, help="images of the group-balanced spurious split (default: %(default)s)"
    )
    parser.add_argument(
        "--n-fit", type=int, default=1024, help="held-out toy images PCLens is fitted on (default: %(default)s)"
    )
    parser.add_argument(
        "--out", default="pclens-debias", help="folder for debias.csv and debias.png (default: %(default)s)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = HookedCLIP.from_pretrained("toy")
    # Fit on ordinary held-out images (all shapes, any texture), not on the evaluation split.
    world = ToyWorld(args.n_fit, seed=11, split="test", image_size=model.cfg.vision.image_size)
    x = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    result = pclens.fit(model, x.split(256), components=["L0-3"], texts=toy_text_pool(), n_texts=3)

    task = toy_task(model, n=args.n)  # circle vs square, 4 balanced (shape, texture) groups
    qs = pclens.QuerySystem(result, model)
    for concept in task.concepts:
        print(qs.query_text(concept, top_k=3, approx=1.1), "\n")

    sweep = debias_sweep(
        model,
        result,
        task.classifier,
        task.concepts,
        task.images,
        task.labels,
        task.groups,
        ks=(1, 2, 3, 5, 8, 12, 20, 30, 50),
        margin=0.01,
        group_names=task.group_names,
    )
    print(f"{'K':>3} {'PCs':>4} {'average':>8} {'worst':>7}  " + "  ".join(task.group_names))
    for p in sweep.points:
        groups = "  ".join(f"{100 * p.groups[g]:>{len(g)}.1f}" for g in task.group_names)
        print(f"{p.k:>3} {p.n_removed:>4} {100 * p.average:7.1f}% {100 * p.worst_group:6.1f}%  {groups}")
    print()
    print(sweep.summary())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep.to_csv(out / "debias.csv")
    sweep.plot(out / "debias.png")
    print(f"\nwritten: {out / 'debias.csv'}, {out / 'debias.png'}")


if __name__ == "__main__":
    main()
