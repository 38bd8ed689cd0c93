"""Zero-shot segmentation and nearest-neighbour search on the toy CLIP (or ImageNet-segmentation).

1. Heat maps (TextSpan's zero-shot segmentation): every head's contribution through each
   patch, scored against the zero-shot shape classifier; compared with a centred Gaussian
   blob on held-out toy images whose masks are known exactly.
2. Nearest neighbours: the images closest to a query in one head's contribution, in
   the full embedding, and in the subspace of the PCLens principal components that the shape
   words select (``neighbours.selection_space``).

With ``--imagenet-seg PATH`` (the ``gtsegs_ijcv.mat`` file) step 1 runs on ImageNet-segmentation
instead, with an open_clip model (``--model ViT-B-16 --pretrained openai``), the 1000 ImageNet
classes and the masks resized as the reference does.

Run: python examples/segmentation.py [--n 200] [--out docs/figures]
     python examples/segmentation.py --imagenet-seg gtsegs_ijcv.mat --model ViT-B-16 --pretrained openai --limit 500
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods import pclens
from hookedclip.methods.neighbours import embedding_space, head_space, nearest_images, selection_space
from hookedclip.methods.segmentation import (
    difference_text,
    evaluate,
    evaluate_toy,
    metric_text,
    resize_mask,
    save_overlays,
)
from hookedclip.plotting import neighbour_grid
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import SHAPES, ToyWorld, class_prompts, render_batch
from hookedclip.zeroshot import ZeroShotClassifier


def report(name: str, metrics: dict) -> None:
    """One line of metrics (%), each with its 95% bootstrap interval over images in brackets."""
    pixel, miou, ap = (metric_text(metrics, k) for k in ("pixel_accuracy", "miou", "map"))
    print(f"  {name:<24} pixel acc {pixel:<18} mIoU {miou:<18} mAP {ap:<18} ({metrics['n_images']} images)")
    if "vs_blob" in metrics:  # the same images, so a paired bootstrap interval of the difference
        pixel, miou, ap = (difference_text(metrics["vs_blob"][k]) for k in ("pixel_accuracy", "miou", "map"))
        print(f"  {'  minus the blob':<24} pixel acc {pixel:<18} mIoU {miou:<18} mAP {ap:<18} (paired)")


def imagenet_segmentation(args) -> None:
    """TextSpan's segmentation protocol on ImageNet-segmentation: predicted-class maps of every head."""
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES

    from hookedclip.data.datasets import ImageNetSegmentation
    from hookedclip.model import load_model

    model = load_model(args.model, args.pretrained)
    if model.preprocess is None:
        raise ValueError(f"{args.model} has no image preprocessing; ImageNet-segmentation needs the model's transform")
    data = ImageNetSegmentation(args.imagenet_seg, transform=model.preprocess)
    n = len(data) if args.limit is None else min(args.limit, len(data))
    size = model.cfg.vision.image_size
    classifier = ZeroShotClassifier.from_classnames(model, IMAGENET_CLASSNAMES, OPENAI_IMAGENET_TEMPLATES)

    def batches(batch_size: int = 16):
        for start in range(0, n, batch_size):
            items = [data[i] for i in range(start, min(start + batch_size, n))]
            masks = [resize_mask(torch.from_numpy(it["mask"]), size, args.geometry) for it in items]
            yield torch.stack([it["image"] for it in items]), torch.stack(masks)

    print(f"ImageNet-segmentation, {n} of {len(data)} images, {args.model}, mask geometry {args.geometry!r}:")
    metrics = evaluate(model, batches(), classifier)
    report("heads, predicted class", metrics["model"])
    report("centred blob", metrics["blob"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--n",
        type=int,
        default=200,
        help="first N images of the canonical world test set to score (default: %(default)s)",
    )
    parser.add_argument("--out", default="segmentation_out", help="folder for the PNG figures (default: %(default)s)")
    parser.add_argument("--head", default=None, help="head for the neighbour search (default: last layer, head 0)")
    parser.add_argument(
        "--imagenet-seg",
        default=None,
        metavar="PATH",
        help="gtsegs_ijcv.mat: evaluate on ImageNet-segmentation instead of the toy world",
    )
    parser.add_argument(
        "--model", default="ViT-B-16", help="with --imagenet-seg: open_clip name or saved model (default: %(default)s)"
    )
    parser.add_argument(
        "--pretrained", default="openai", help="with --imagenet-seg: open_clip pretrained tag (default: %(default)s)"
    )
    parser.add_argument(
        "--limit", type=int, default=None, help="with --imagenet-seg: first N images only (default: all)"
    )
    parser.add_argument(
        "--geometry",
        choices=["reference", "aligned"],
        default="reference",
        help="mask geometry: 'reference' resizes masks to a square (parity), 'aligned' crops them "
        "(default: %(default)s)",
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # shared CPU: one thread keeps timings and neighbours predictable
    if args.imagenet_seg:
        return imagenet_segmentation(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = HookedCLIP.from_pretrained("toy")
    cfg = model.visual.cfg
    print(
        f"toy CLIP: {cfg.image_size} px images, {cfg.patch_size} px patches "
        f"({cfg.image_size // cfg.patch_size}x{cfg.image_size // cfg.patch_size} grid), {cfg.layers}x{cfg.heads} heads"
    )

    print(
        f"segmentation on the first {args.n} images of the canonical world test set (shape classifier; "
        "[95% percentile-bootstrap interval over images])"
    )
    predicted = evaluate_toy(model, n=args.n)
    labelled = evaluate_toy(model, n=args.n, use_labels=True)
    report("heads, predicted class", predicted["model"])
    report("heads, true class", labelled["model"])
    report("centred blob", predicted["blob"])

    classifier = ZeroShotClassifier.from_prompts(model, class_prompts("shape"))
    world = ToyWorld(12, seed=7, split="test", image_size=cfg.image_size)
    pixels, masks = render_batch(world.attributes(), cfg.image_size)
    truth = [classifier.classnames.index(a.shape) for a in world.attributes()]
    save_overlays(model, pixels, classifier, out / "segmentation_overlays.png", masks, labels=truth)
    last = [f"L{cfg.layers - 1}"]
    save_overlays(model, pixels, classifier, out / "segmentation_last_layer.png", masks, components=last, labels=truth)
    print(f"  overlays: {out / 'segmentation_overlays.png'}, {out / 'segmentation_last_layer.png'}")

    head = args.head or f"L{cfg.layers - 1}H0"
    pool = ToyWorld(512, seed=8, split="test", image_size=cfg.image_size)
    query = world[0]
    query_image = to_tensor(model, query["image"])[0]
    # the PCs of every head that the seven shape names select (PCLens fitted on the pool's images)
    result = pclens.fit(
        model, pool_batches(model, pool), components=[f"L0-{cfg.layers - 1}"], texts=toy_text_pool(), n_texts=3
    )
    shapes = pclens.QuerySystem(result, model).query_texts([f"a {s}" for s in SHAPES], top_k=10)
    print(f"  shape PCs: {len(shapes.pcs)} of {result.n_pcs} PCs, over {len(shapes.heads_used)} heads")
    searches = [
        (f"head {head}", "head", head_space(model, head), "score"),
        (f"head {head}", "head", head_space(model, head), "score_vis"),
        ("the embedding", "embedding", embedding_space(model), "score_vis"),
        (
            f"the {len(shapes.pcs)} shape PCs",
            "shape_pcs",
            selection_space(model, result, shapes, centre=True),
            "score_vis",
        ),
    ]
    for name, slug, space, score in searches:
        found = nearest_images(model, query_image, pool_batches(model, pool), space, k=16, score=score)
        indices = found.indices.tolist()
        kind = "dot product" if score == "score" else "cosine"
        path = out / f"neighbours_{slug}_{'dot' if score == 'score' else 'cosine'}.png"
        neighbour_grid(
            query["image"],
            pool.images(indices),
            pool.captions(indices),
            path,
            title=f"nearest toy images in {name} ({kind})",
            query_caption=query["caption"],
            scores=found.values.tolist(),
            score_name="dot" if score == "score" else "cos",
        )
        q = query["attributes"]
        shape = sum(a.shape == q.shape for a in pool.attributes(indices))
        colour = sum(a.color == q.color for a in pool.attributes(indices))
        print(f"  neighbours in {name} by {kind}: {path} (same shape {shape}/16, same colour {colour}/16)")


def to_tensor(model, pixels):
    return images_to_tensor(pixels, model.cfg.image_mean, model.cfg.image_std)


def pool_batches(model, pool, size: int = 256):
    for i in range(0, len(pool), size):
        yield to_tensor(model, pool.images(range(i, min(i + size, len(pool)))))


if __name__ == "__main__":
    main()
