"""Regenerate the figures and numbers of docs/attribution.md with the shipped toy autoencoder
(``sae.toy()``) on the toy model: docs/figures/sae_attribution_bars.png (one image's
attributions to its shape prompt), docs/figures/sae_deletion.png (deletion curves, the error
dropped) and docs/figures/sae_insertion.png (insertion curves, the error kept); it prints every
number the page quotes (areas under the curves, the reliance report on the spurious split, the
latent-augmentation checks). Deterministic: the same figures and numbers every run.

Run: python docs/make_attribution_figures.py [--out docs/figures]
"""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from figure_args import figure_args

from hookedclip import HookedCLIP
from hookedclip.methods import sae as S
from hookedclip.plotting import wilson
from hookedclip.toy.attributes import SHAPES
from hookedclip.toy.dataset import SpuriousSpec, ToyWorld

N_IMAGES = 512


def figures(model, sae, out: Path) -> list[str]:
    """The bar chart of image 0 and the deletion and insertion curves, with their areas; the latents' names."""
    world = ToyWorld(N_IMAGES, seed=0, split="test")
    h = S.class_tokens(model, world)
    texts = [f"a photo of a {s}." for s in SHAPES]
    targets = torch.tensor([SHAPES.index(a.shape) for a in world.attributes()])
    labels = S.attribute_names(sae.encode(h), world)
    attribution = S.attribute(model, sae, residuals=h, texts=texts, labels=labels)
    attribution.plot(out / "sae_attribution_bars.png", image=0, text=int(targets[0]))
    print(f"image 0 ({world.attributes()[0]}), R_error {float(attribution.R_error[0, targets[0]]):+.4f}:")
    for row in attribution.top(4, images=[0], texts=[int(targets[0])]):
        print(f"  latent {row['latent']} ({row['label']}) R = {row['R']:+.4f}")
    head = S.output_head(model, texts=texts)
    scores = S.method_scores(model, sae, h, head, targets)
    for mode, splice in (("deletion", "recon_only"), ("insertion", "error_kept")):
        curves = S.faithfulness(model, sae, scores, head, targets, residuals=h, mode=mode, splice=splice, steps=8)
        kept = "error dropped" if splice == "recon_only" else "error kept"
        title = f"{mode.capitalize()}, zero ablation, {kept}: {N_IMAGES} toy images, true shape prompt"
        curves.plot(out / f"sae_{mode}.png", title=title)
        print(curves.summary())
        gap, error = curves.difference("Act×Grad", "Random")
        print(f"{mode}: Act×Grad − Random (paired) {gap:.1f} ± {error:.1f}")
    for name in ("sae_attribution_bars", "sae_deletion", "sae_insertion"):
        print(f"wrote {out / name}.png")
    return labels


def reliance(model, sae, labels: list[str]) -> None:
    """The report on the balanced spurious split, alignment from the toy world's ground truth: the
    example's step 4 (examples/attribution.py), so the page shows what the example prints."""
    example = runpy.run_path(str(Path(__file__).resolve().parents[1] / "examples" / "attribution.py"))
    attribution, classes, report = example["reliance_report"](model, sae, labels, N_IMAGES)
    print(report.summary())
    share = S.class_relevance(attribution, classes)
    share = share / share.clamp_min(0).sum(-1, keepdim=True)
    for texture in ("stripes", "dots"):
        mask = torch.tensor([label == texture for label in labels])
        print(
            f"share of positive relevance of the {int(mask.sum())} {texture!r} latents: "
            + ", ".join(f"{c} {float(share[i, mask].sum()):.2f}" for i, c in enumerate(SpuriousSpec().classes))
        )


def accuracies(model, probe, h: torch.Tensor, y: torch.Tensor, groups: np.ndarray) -> str:
    """The probe's average and worst-group accuracy, each with its 95% Wilson interval."""
    right = (probe(F.normalize(S.head_readout(model, h), dim=-1)).argmax(-1) == y).double().numpy()
    worst = min(np.unique(groups), key=lambda g: right[groups == g].mean())
    shown = []
    for name, values in (("average", right), ("worst group", right[groups == worst])):
        low, high = wilson(float(values.mean()), len(values))
        shown.append(f"{name} {100 * values.mean():.1f}% [{low:.1f}, {high:.1f}] of {len(values)}")
    return ", ".join(shown)


def augmentation(model, sae, labels: list[str]) -> None:
    """Resample the striped latent a plain probe relies on most; the checks and the probe's reliance."""
    train = ToyWorld(1024, seed=3, split="train", spurious=SpuriousSpec())
    h, y = S.class_tokens(model, train), torch.tensor(train.groups() // 2)
    test = ToyWorld(N_IMAGES, seed=4, split="test", spurious=SpuriousSpec(), group_balanced=True)
    h_test, y_test = S.class_tokens(model, test), torch.tensor(test.groups() // 2)
    plain = S.train_probe(S.head_readout(model, h).detach(), y)
    reliance_on = S.attribute(model, sae, residuals=h, classifier=plain, output="logit").R[:, 0].mean(0)
    striped = [j for j, label in enumerate(labels) if label == "stripes"]
    shortcut = max(striped, key=lambda j: float(reliance_on[j]))
    checks = S.augmentation_checks(model, sae, h, y, shortcut)
    print(f"shortcut: latent {shortcut} of the striped {striped}; checks {checks}")
    augmented = S.train_augmented_probe(model, sae, h, y, shortcut)
    per_image = [
        S.attribute(model, sae, residuals=h_test, classifier=p, output="logit").R[:, 0, shortcut]
        for p in (plain, augmented)
    ]
    drop = per_image[0] - per_image[1]  # paired over the same test images
    error = float(drop.std() / len(drop) ** 0.5)
    print(
        f"mean Act×Grad on the 'circle' logit: {float(per_image[0].mean()):.3f} -> {float(per_image[1].mean()):.3f}, "
        f"drop {float(drop.mean()):.3f} ± {error:.3f} ({100 * float(drop.mean() / per_image[0].mean()):.0f}%, "
        f"{float(drop.mean()) / error:.1f} s.e.)"
    )
    for name, probe in (("plain", plain), ("augmented", augmented)):
        print(f"{name} probe: {accuracies(model, probe, h_test, y_test, test.groups())}")


def main(argv: list[str] | None = None) -> None:
    args = figure_args(__doc__, argv)
    model = HookedCLIP.from_pretrained("toy")
    sae = S.toy(model).requires_grad_(False)
    labels = figures(model, sae, args.out)
    reliance(model, sae, labels)
    augmentation(model, sae, labels)


if __name__ == "__main__":
    main()
