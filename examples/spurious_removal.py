"""Removing a spurious feature with PCLens on the toy CLIP.

The toy CLIP was trained with circles mostly on striped and squares mostly on dotted
backgrounds, so its circle-vs-square classifier partly reads the texture. PCLens finds the PCs
that carry "a striped background" and "a dotted background", removes the top K of them for
several K, picks K on the canonical validation set and reports average and worst-group accuracy
(with 95% intervals) on the canonical group-balanced test set, with two controls: as many random
PCs removed, and texture / shape accuracy on all shapes with the picked PCs removed.

Run: python examples/spurious_removal.py [--n 2000] [--out pclens-debias]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods import pclens
from hookedclip.methods.pclens.debias import removal_accuracy, sweep_task, toy_attribute_data, toy_task
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld
from hookedclip.zeroshot import accuracy_text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n", type=int, default=None, help="images of the canonical spurious test set (default: all 2000)"
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

    task = toy_task(model, n=args.n)  # circle vs square, 4 balanced (shape, texture) groups: the test set
    validation = toy_task(model, split="validation")  # K is chosen here
    qs = pclens.QuerySystem(result, model)
    for concept in task.concepts:
        print(qs.query_text(concept, top_k=3, approx=1.1), "\n")

    sweep = sweep_task(
        model, result, task, ks=(1, 2, 3, 5, 8, 12, 20, 30, 50), margin=0.01, validation=validation, random_draws=5
    )
    print(f"{'K':>3} {'PCs':>4}  {'validation worst':<20}{'test average':<22}{'test worst group':<22}")
    for p, v in zip(sweep.points, sweep.validation):
        print(f"{p.k:>3} {p.n_removed:>4}  {v.text():<20}{p.text('average'):<22}{p.text():<22}")
    print()
    print(sweep.summary())
    if sweep.chosen.k:
        images, targets = toy_attribute_data(model, ("texture", "shape"))  # the canonical world test set
        measured = removal_accuracy(model, result, images.split(256), targets, sweep.chosen.removed)
        for attribute, (before, after, n) in measured.items():
            print(
                f"control: {attribute} accuracy on {n} images of all shapes {accuracy_text(before, n)} -> "
                f"{accuracy_text(after, n)} with the picked PCs removed"
            )
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    sweep.to_csv(out / "debias.csv")
    sweep.plot(out / "debias.png")
    print(f"\nwritten: {out / 'debias.csv'}, {out / 'debias.png'}")


if __name__ == "__main__":
    main()
