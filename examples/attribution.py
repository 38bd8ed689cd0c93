"""Attribution to autoencoder latents on the toy model: which latents make an image "a circle"?

1. A TopK autoencoder on the last layer's class token: the one shipped for the toy model
   (``sae.toy()``, 256 latents, k = 8), or another loaded with ``--sae DIR`` (written by
   ``TopKSAE.save``).
2. Act×Grad of every image's cosine to its shape prompt, the top latents per prediction (each
   latent named by the toy attribute value it separates best), and an HTML page.
3. Deletion curves of Act×Grad and its baselines (logit lens, activation × logit lens, energy,
   random) from the cached residuals, with the area under each curve and its standard error.
4. Unexpected reliance on the spurious split (circle on stripes, square on dots): the latents
   "a circle" and "a square" lean on whose name is not the class.

Run: ``python examples/attribution.py [--sae DIR] [--n 512] [--out attribution-example]``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from hookedclip import HookedCLIP
from hookedclip.methods import sae as S
from hookedclip.report.sae_attribution import write_attribution_page
from hookedclip.toy.attributes import SHAPES
from hookedclip.toy.dataset import SpuriousSpec, ToyWorld


def reliance_report(model, sae, labels: list[str], n_images: int):
    """``(attribution, classes, report)``: Act×Grad of the balanced spurious split's images to "a
    photo of a circle/square" and the unexpected-reliance report, alignment 1 where a latent is
    named after the class (the toy world's ground truth)."""
    split = ToyWorld(n_images, seed=1, split="test", spurious=SpuriousSpec(), group_balanced=True)
    classes = torch.as_tensor(split.groups() // 2)
    names = list(SpuriousSpec().classes)
    texts = [f"a photo of a {c}." for c in names]
    attribution = S.attribute(model, sae, residuals=S.class_tokens(model, split), texts=texts, labels=labels)
    alignment = torch.tensor([[float(label == c) for c in names] for label in labels])
    options = {"min_share": 0.05, "max_alignment": 0.5, "test": "absolute"}
    report = S.unexpected_reliance(attribution, classes, alignment, labels=labels, class_names=names, **options)
    return attribution, classes, report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sae", default=None, help="an autoencoder folder (default: the shipped toy one, sae.toy())")
    parser.add_argument("--n", type=int, default=512, help="toy images (default: 512)")
    parser.add_argument("--out", default="attribution-example", help="output folder (default: attribution-example)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    model = HookedCLIP.from_pretrained("toy")
    world = ToyWorld(args.n, seed=0, split="test")
    h = S.class_tokens(model, world)
    sae = (S.TopKSAE.load(args.sae, model=model) if args.sae else S.toy(model)).requires_grad_(False)
    labels = S.attribute_names(sae.encode(h), world)

    # 2. Act×Grad to the shape prompts; R[b, t, j] is exactly 0 wherever latent j is inactive.
    texts = [f"a photo of a {s}." for s in SHAPES]
    targets = torch.tensor([SHAPES.index(a.shape) for a in world.attributes()])
    attribution = S.attribute(model, sae, residuals=h, texts=texts, labels=labels)
    for b in range(3):
        for row in attribution.top(3, images=[b], texts=[int(targets[b])]):
            print(f"image {b} {row['text']!r}: latent {row['latent']} ({row['label']}) R = {row['R']:+.4f}")
    print("Σ_j R_j + R_error (≈ 0, not y):", float((attribution.R.sum(-1) + attribution.R_error).abs().max()))
    write_attribution_page(attribution, out / "page", images=world.images(), max_images=8)

    # 3. Deletion curves from the cached residuals (no ViT pass per step).
    head = S.output_head(model, texts=texts)
    scores = S.method_scores(model, sae, h, head, targets)
    curves = S.faithfulness(model, sae, scores, head, targets, residuals=h, steps=8)
    for method, (auc, err) in curves.auc().items():
        print(f"deletion AUC {method:14s} {auc:6.2f} ± {err:.2f}")
    curves.to_csv(out / "deletion.csv")
    curves.plot(out / "deletion.png")

    # 4. Unexpected reliance on the spurious split.
    _, _, report = reliance_report(model, sae, labels, args.n)
    print(report.summary())
    report.to_csv(out / "reliance.csv")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
