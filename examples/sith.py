"""SITH on the toy CLIP: what each head writes, read from its weights alone, and an edit that
removes a spurious feature.

Each head's value-output circuit W_V W_O is split by an SVD into singular vectors; every write
direction is mapped into the joint image-text space and explained by a few concepts of the toy
world's vocabulary, chosen by coherent orthogonal matching pursuit (COMP). The vectors whose top
concept is one of the spurious split's textures are then removed (their singular values set to
zero, through the intervention engine) and worst-group accuracy is compared before and after.
No image is needed except for the image mean and the evaluation.

Run: python examples/sith.py [--layers 3] [--k 3] [--n N]
"""

from __future__ import annotations

import argparse

import torch

from hookedclip import HookedCLIP
from hookedclip.data.spurious import toy_task
from hookedclip.methods import sith
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--layers", type=int, default=3, help="explain the heads of the last N layers (default: %(default)s)"
    )
    parser.add_argument("--k", type=int, default=3, help="concepts per singular vector (default: %(default)s)")
    parser.add_argument(
        "--n", type=int, default=None, help="spurious test images (default: the canonical 2000; fewer: the first N)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)

    model = HookedCLIP.from_pretrained("toy")
    dictionary = sith.dictionary(model, "toy")  # the toy world's words, embedded once and cached
    world = ToyWorld(512, seed=11, split="test", image_size=model.cfg.vision.image_size)
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    mean = sith.image_mean(model, images.split(256))
    n_layers = model.cfg.vision.layers
    results = [
        sith.decompose(model, layer, dictionary, k=args.k, image_mean=mean, sides=["right"])
        for layer in range(n_layers - args.layers, n_layers)
    ]

    last = results[-1]
    print(f"The two strongest singular vectors of each head of layer {last.layer} (coefficients in brackets):")
    for h, label in enumerate(last.labels):
        for i in range(2):
            concepts = ", ".join(f"{c} ({w:.2f})" for c, w in last.explanation(h, i))
            print(
                f"  {label} v{i} σ={float(last.S[h, i]):.2f} fidelity {float(last.fidelity[0, h, i]):.2f}: {concepts}"
            )

    task = toy_task(model, n=args.n)
    vectors = sith.vectors_by_concept(results, task.concepts)
    found = sith.suppress(model, vectors, task)
    print(f"\nRemoving the {len(vectors)} vectors whose top concept is {' or '.join(map(repr, task.concepts))}:")
    for when in ("before", "after"):
        group, acc, (low, high) = found.worst_group(when)
        print(
            f"  {when:6s} worst group {100 * acc:.1f}% [{100 * low:.1f}, {100 * high:.1f}] ({group}), "
            f"average {100 * found.average(when):.1f}%"
        )


if __name__ == "__main__":
    main()
