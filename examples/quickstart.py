"""Quickstart: load the shipped toy CLIP, ablate one attention head with a hook, and see
what it costs each attribute's zero-shot accuracy.

Accuracies are measured on the first ``--n`` images of the canonical held-out test set of the toy
world (``hookedclip.toy.splits.test_set("world")``), each with its 95% Wilson interval; the
change is the mean per-image change in correctness with its 95% interval (mean ± 1.96 SE).

Run: python examples/quickstart.py [--layer 3] [--head 2] [--n 1000]
"""

from __future__ import annotations

import argparse

import torch

from hookedclip import HookedCLIP
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.splits import test_set
from hookedclip.toy.world import class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, accuracy, accuracy_text, mean_text


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Print and return ``{attribute: (clean accuracy, ablated accuracy)}``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=3, help="layer of the ablated head (default: %(default)s)")
    parser.add_argument("--head", type=int, default=2, help="the ablated head in that layer (default: %(default)s)")
    parser.add_argument(
        "--n",
        type=int,
        default=1000,
        help="first N images of the canonical world test set (default: %(default)s; at most 2000)",
    )
    args = parser.parse_args(argv)

    model = HookedCLIP.from_pretrained("toy")
    world = test_set("world", args.n)
    images = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    attributes = world.attributes()

    def zero_head(z, hook):  # z: [batch, pos, head, d_head]
        z = z.clone()
        z[:, :, args.head] = 0
        return z

    with torch.no_grad():
        clean = model.encode_image(images)
        with model.hooks(fwd_hooks=[(f"visual.blocks.{args.layer}.attn.hook_z", zero_head)]):
            ablated = model.encode_image(images)

    print(
        f"zero-ablating head L{args.layer}H{args.head} of the toy CLIP (first {args.n} images of the canonical test set)"
    )
    print("[95% intervals: Wilson for accuracies; mean ± 1.96 SE of the per-image change]")
    print(f"{'attribute':<12}{'clean':>20}{'ablated':>21}{'change (points)':>24}")
    results = {}
    for attribute in ("shape", "color", "texture"):
        classifier = ZeroShotClassifier.from_prompts(model, class_prompts(attribute))
        labels = torch.tensor([a.labels()[attribute] for a in attributes])
        right_before = (classifier.predict(clean) == labels).float()
        right_after = (classifier.predict(ablated) == labels).float()
        before, after = accuracy(classifier.predict(clean), labels), accuracy(classifier.predict(ablated), labels)
        change = mean_text(right_after - right_before, signed=True)
        print(f"{attribute:<12}{accuracy_text(before, args.n):>20}{accuracy_text(after, args.n):>21}{change:>24}")
        results[attribute] = (before, after)
    return results


if __name__ == "__main__":
    main()
