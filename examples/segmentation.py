"""Zero-shot segmentation and nearest-neighbour search on the toy CLIP.

1. Heat maps (TextSpan's segmentation, specs §4.8): every head's contribution through each
   patch, scored against the zero-shot shape classifier; compared with a centred Gaussian
   blob on held-out toy images whose masks are known exactly.
2. Nearest neighbours (§4.9): the images closest to a query in one head's contribution.

Run: python examples/segmentation.py [--n 200] [--out docs/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.methods.neighbours import embedding_space, head_space, nearest_images
from hookedclip.methods.segmentation import evaluate_toy, save_overlays
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld, class_prompts, render_batch
from hookedclip.viz import neighbour_grid
from hookedclip.zeroshot import ZeroShotClassifier


def report(name: str, metrics: dict) -> None:
    print(f"  {name:<26} pixel acc {100 * metrics['pixel_accuracy']:5.1f}   mIoU {100 * metrics['miou']:5.1f}"
          f"   mAP {100 * metrics['map']:5.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=200, help="held-out toy images to score")
    parser.add_argument("--out", default="segmentation_out", help="folder for the PNG figures")
    parser.add_argument("--head", default=None, help="head for the neighbour search (default: last layer, head 0)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared CPU: one thread keeps timings and neighbours predictable
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = HookedCLIP.from_pretrained("toy")
    cfg = model.visual.cfg
    print(f"toy CLIP: {cfg.image_size} px images, {cfg.patch_size} px patches "
          f"({cfg.image_size // cfg.patch_size}x{cfg.image_size // cfg.patch_size} grid), {cfg.layers}x{cfg.heads} heads")

    print(f"segmentation on {args.n} held-out toy images (shape classifier):")
    predicted = evaluate_toy(model, n=args.n)
    labelled = evaluate_toy(model, n=args.n, use_labels=True)
    report("heads, predicted class", predicted["model"])
    report("heads, true class", labelled["model"])
    report("centred blob", predicted["blob"])

    classifier = ZeroShotClassifier.from_prompts(model, class_prompts("shape"))
    world = ToyWorld(12, seed=7, split="test", image_size=cfg.image_size)
    pixels, masks = render_batch(world.attributes(), cfg.image_size)
    save_overlays(model, pixels, classifier, out / "segmentation_overlays.png", masks)
    last = [f"L{cfg.layers - 1}"]
    save_overlays(model, pixels, classifier, out / "segmentation_last_layer.png", masks, components=last)
    print(f"  overlays: {out / 'segmentation_overlays.png'}, {out / 'segmentation_last_layer.png'}")

    head = args.head or f"L{cfg.layers - 1}H0"
    pool = ToyWorld(512, seed=8, split="test", image_size=cfg.image_size)
    query = world[0]
    query_image = to_tensor(model, query["image"])[0]
    searches = [(head, head_space(model, head), "score"), (head, head_space(model, head), "score_vis"),
                ("embedding", embedding_space(model), "score_vis")]
    for name, space, score in searches:
        found = nearest_images(model, query_image, pool_batches(model, pool), space, k=16, score=score)
        indices = found.indices.tolist()
        kind = "dot product" if score == "score" else "cosine"
        path = out / f"neighbours_{'head' if name == head else name}_{'dot' if score == 'score' else 'cosine'}.png"
        neighbour_grid(query["image"], pool.images(indices), pool.captions(indices), path,
                       title=f"nearest toy images in {name} ({kind})", query_caption=query["caption"])
        print(f"  neighbours in {name} by {kind}: {path}")


def to_tensor(model, pixels):
    return images_to_tensor(pixels, model.cfg.image_mean, model.cfg.image_std)


def pool_batches(model, pool, size: int = 256):
    for i in range(0, len(pool), size):
        yield to_tensor(model, pool.images(range(i, min(i + size, len(pool)))))


if __name__ == "__main__":
    main()
