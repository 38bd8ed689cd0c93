"""TextSpan on the toy CLIP: for each head of the last layers, the texts that span its
direct contribution to the image embedding (Gandelsman et al., ICLR 2024).

One streaming pass over the first ``--n`` images of the canonical world test set
(``hookedclip.toy.splits.test_set("world")``) accumulates each head's mean and covariance;
the greedy text selection then runs on those statistics only.

Run: python examples/textspan.py [--layers 2] [--texts 5] [--n 1024]
"""

from __future__ import annotations

import argparse

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods.textspan import text_span_heads
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.splits import test_set


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--layers", type=int, default=2, help="analyse the heads of the last N layers (default: %(default)s)"
    )
    parser.add_argument("--texts", type=int, default=5, help="texts per head (default: %(default)s)")
    parser.add_argument(
        "--n", type=int, default=1024, help="first N canonical world test images (default: %(default)s)"
    )
    args = parser.parse_args(argv)

    model = HookedCLIP.from_pretrained("toy")
    world = test_set("world", args.n)
    batches = (
        images_to_tensor(world.images(range(i, min(i + 256, args.n))), model.cfg.image_mean, model.cfg.image_std)
        for i in range(0, args.n, 256)
    )
    L = model.cfg.vision.layers
    heads = [f"L{l}" for l in range(L - args.layers, L)]
    results = text_span_heads(model, batches, toy_text_pool(), components=heads, n_texts=args.texts, rank=None)
    for label, result in results.items():
        explained = result.explained_fraction[-1].item()
        print(f"{label}  ({100 * explained:.0f}% of the head's variance with {len(result)} texts)")
        for text, frac in zip(result.texts, result.explained_fraction.tolist()):
            print(f"    {text:<28} cumulative {100 * frac:5.1f}%")


if __name__ == "__main__":
    main()
