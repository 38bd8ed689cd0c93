"""Quickstart: load the shipped toy CLIP, ablate one attention head with a hook, and see
what it costs each attribute's zero-shot accuracy.

Run: python examples/quickstart.py [--layer 3] [--head 2] [--n 1000]
"""

from __future__ import annotations

import argparse

import torch

from hookedclip import HookedCLIP
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld, class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, accuracy


def main(argv: list[str] | None = None) -> dict[str, tuple[float, float]]:
    """Print and return ``{attribute: (clean accuracy, ablated accuracy)}``."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layer", type=int, default=3, help="layer of the ablated head (default: %(default)s)")
    parser.add_argument("--head", type=int, default=2, help="the ablated head in that layer (default: %(default)s)")
    parser.add_argument("--n", type=int, default=1000, help="held-out toy images (default: %(default)s)")
    args = parser.parse_args(argv)

    model = HookedCLIP.from_pretrained("toy")
    world = ToyWorld(args.n, seed=7, split="test")
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

    print(f"zero-ablating head L{args.layer}H{args.head} of the toy CLIP ({args.n} held-out images)")
    print(f"{'attribute':<12}{'clean':>8}{'ablated':>9}{'change':>9}")
    results = {}
    for attribute in ("shape", "color", "texture"):
        classifier = ZeroShotClassifier.from_prompts(model, class_prompts(attribute))
        labels = torch.tensor([a.labels()[attribute] for a in attributes])
        before = accuracy(classifier.predict(clean), labels)
        after = accuracy(classifier.predict(ablated), labels)
        print(f"{attribute:<12}{100 * before:>7.1f}%{100 * after:>8.1f}%{100 * (after - before):>+8.1f}")
        results[attribute] = (before, after)
    return results


if __name__ == "__main__":
    main()
