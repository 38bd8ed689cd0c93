"""Accuracy recovered with K principal components (PCLens) or K texts (TextSpan) per head.

The comparison made in the PCLens paper, scored like its accuracy tables (direct mode:
LayerNorm frozen, the network not re-run), on the toy CLIP: the heads of the last ``--layers``
layers are each rebuilt from their first K PCs / TextSpan texts, all earlier heads are
mean-ablated, MLPs are kept. One decomposition per batch serves every K. Writes
``accuracy_recovered_{attribute}.png`` and ``.csv`` for each attribute.

Every accuracy is measured on the canonical held-out test set of the toy world
(``hookedclip.toy.splits.test_set("world")``, 2000 images, or its first ``--n``) and printed and
drawn with its 95% Wilson interval.

Run: python examples/accuracy_recovered.py [--n 2000] [--layers 2] [--out accuracy_recovered_out]
"""

from __future__ import annotations

import argparse
import time
import warnings
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods.pclens.recovered import accuracy_recovered
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.splits import TEST_SIZES, test_set
from hookedclip.toy.world import class_prompts
from hookedclip.zeroshot import ZeroShotClassifier, embed_texts

NAMES = {"shape": "shape", "color": "colour"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n",
        type=int,
        default=None,
        help="images of the canonical world test set (default: all 2000; fewer: the first N)",
    )
    parser.add_argument(
        "--layers", type=int, default=2, help="analyse the heads of the last N layers (default: %(default)s)"
    )
    parser.add_argument(
        "--budgets",
        type=int,
        nargs="+",
        default=[0, 1, 2, 4, 8, 16, 32],
        help="values of K: PCs or texts per head (default: %(default)s)",
    )
    parser.add_argument(
        "--out", default="accuracy_recovered_out", help="folder for the figures and CSVs (default: %(default)s)"
    )
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()

    model = HookedCLIP.from_pretrained("toy")
    world = test_set("world", args.n, image_size=model.cfg.vision.image_size)
    n = args.n or TEST_SIZES["world"]
    x = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    texts = toy_text_pool()
    pool = embed_texts(model, texts)
    L = model.cfg.vision.layers
    heads = f"L{L - args.layers}-{L - 1}"
    print(f"toy CLIP, {n} images of the canonical world test set, analysed heads {heads}, text pool of {len(texts)}")
    for attribute in ("shape", "color"):
        labels = torch.tensor([a.labels()[attribute] for a in world.attributes()])
        classifier = ZeroShotClassifier.from_prompts(model, class_prompts(attribute))
        batches = list(zip(x.split(250), labels.split(250)))
        with warnings.catch_warnings():  # TextSpan may run out of new directions in a small pool
            warnings.simplefilter("ignore", RuntimeWarning)
            result = accuracy_recovered(
                model, batches, classifier, components=heads, budgets=args.budgets, texts=texts, text_embeddings=pool
            )
        name = NAMES[attribute]
        print(f"\n{name} ({len(classifier.classnames)} classes)\n{result.summary()}")
        result.to_csv(out / f"accuracy_recovered_{name}.csv")
        result.plot(
            out / f"accuracy_recovered_{name}.png",
            title=f"Toy CLIP, {name}: heads {heads} rebuilt, earlier heads mean-ablated",
        )
    print(f"\nfigures and CSVs in {out}/ ({time.perf_counter() - start:.0f} s)")


if __name__ == "__main__":
    main()
