"""Regenerate the figures of docs/sith.md from the shipped toy model:

- docs/figures/sith_L3H1.png: singular values of head L3H1's first 8 vectors, each with its concepts;
- docs/figures/sith_fidelity.png: fidelity and coherence against k for every pursuit (layer 3);
- docs/figures/sith_suppression.png: each group's accuracy on the spurious split before and after
  the texture vectors of layers 1-3 are removed;

and print the numbers docs/sith.md quotes. Deterministic (fixed seeds).

Run: python docs/make_sith_figures.py [--out docs/figures]
"""

from __future__ import annotations

from figure_args import figure_args

from hookedclip import HookedCLIP
from hookedclip.data.spurious import toy_task
from hookedclip.methods import sith
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__, argv)

    model = HookedCLIP.from_pretrained("toy")
    dictionary = sith.dictionary(model, "toy")
    world = ToyWorld(512, seed=11, split="test")
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    mean = sith.image_mean(model, images.split(256))
    results = [sith.decompose(model, layer, dictionary, k=3, image_mean=mean, sides=["right"]) for layer in (1, 2, 3)]
    results[-1].plot(args.out / "sith_L3H1.png", head=1, n=8)

    study = sith.fidelity_study(model, 3, dictionary, ks=(1, 2, 3, 5, 10), image_mean=mean)
    study.plot(args.out / "sith_fidelity.png")
    print(study.to_csv())

    task = toy_task(model)  # the canonical spurious test set (2000 images)
    vectors = sith.vectors_by_concept(results, task.concepts)
    found = sith.suppress(model, vectors, task)
    found.plot(args.out / "sith_suppression.png")
    print(found.summary())
    for name in ("sith_L3H1.png", "sith_fidelity.png", "sith_suppression.png"):
        print("wrote", args.out / name)


if __name__ == "__main__":
    main()
