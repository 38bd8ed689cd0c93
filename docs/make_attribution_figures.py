"""Regenerate the figures and numbers of docs/attribution.md with the shipped toy autoencoder
(``sae.toy()``) on the toy model: docs/figures/sae_attribution_bars.png (one image's
attributions to its shape prompt), docs/figures/sae_deletion.png (deletion curves, the error
dropped) and docs/figures/sae_insertion.png (insertion curves, the error kept); it prints every
number the page quotes (areas under the curves, the reliance report on the spurious split, the
latent-augmentation checks). Deterministic: the same figures and numbers every run.

Run: python docs/make_attribution_figures.py [--out docs/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from hookedclip import HookedCLIP
from hookedclip.methods import sae as S
from hookedclip.plotting import wilson
from hookedclip.toy.attributes import BACKGROUNDS, COLORS, SHAPES, TEXTURES
from hookedclip.toy.dataset import SpuriousSpec, ToyWorld
from hookedclip.toy.model import images_to_tensor

NAMES = {"shape": SHAPES, "color": COLORS, "texture": TEXTURES, "background": BACKGROUNDS}
N_IMAGES = 512


def class_token(model, world: ToyWorld) -> torch.Tensor:
    """The last block's class-token rows: what the autoencoder reads."""
    x = images_to_tensor(world.images(), model.cfg.image_mean, model.cfg.image_std)
    with torch.no_grad():
        return model.encode_image(x, stop_at_layer=model.cfg.n_layers)[:, 0]


def name_latents(codes: np.ndarray, world: ToyWorld) -> list[str]:
    """Each latent named by the attribute value whose images activate it most above the others
    (in standard deviations of its activation); latents active on fewer than 10 images: "(rarely active)"."""
    attrs = world.attributes()
    labels = []
    for col in codes.T:
        best, gap = "(rarely active)", -np.inf
        if (col != 0).sum() >= 10:
            for attribute, names in NAMES.items():
                values = np.array([getattr(x, attribute) for x in attrs])
                for v in names:
                    if (values == v).any():
                        g = (col[values == v].mean() - col[values != v].mean()) / (col.std() + 1e-9)
                        best, gap = (v, g) if g > gap else (best, gap)
        labels.append(best)
    return labels


def figures(model, sae, out: Path) -> list[str]:
    """The bar chart of image 0 and the deletion and insertion curves, with their areas; the latents' names."""
    world = ToyWorld(N_IMAGES, seed=0, split="test")
    h = class_token(model, world)
    texts = [f"a photo of a {s}." for s in SHAPES]
    targets = torch.tensor([SHAPES.index(a.shape) for a in world.attributes()])
    labels = name_latents(sae.encode(h).numpy(), world)
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
    """The report on the balanced spurious split, alignment from the toy world's ground truth."""
    split = ToyWorld(N_IMAGES, seed=1, split="test", spurious=SpuriousSpec(), group_balanced=True)
    classes = torch.as_tensor(split.groups() // 2)
    names = list(SpuriousSpec().classes)
    texts = [f"a photo of a {c}." for c in names]
    attribution = S.attribute(model, sae, residuals=class_token(model, split), texts=texts, labels=labels)
    alignment = torch.tensor([[float(label == c) for c in names] for label in labels])
    report = S.unexpected_reliance(
        attribution,
        classes,
        alignment,
        labels=labels,
        class_names=names,
        min_share=0.05,
        max_alignment=0.5,
        test="absolute",
    )
    print(report.summary())
    share = S.class_relevance(attribution, classes)
    share = share / share.clamp_min(0).sum(-1, keepdim=True)
    for texture in ("stripes", "dots"):
        mask = torch.tensor([label == texture for label in labels])
        print(
            f"share of positive relevance of the {int(mask.sum())} {texture!r} latents: "
            + ", ".join(f"{c} {float(share[i, mask].sum()):.2f}" for i, c in enumerate(names))
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
    h, y = class_token(model, train), torch.tensor(train.groups() // 2)
    test = ToyWorld(N_IMAGES, seed=4, split="test", spurious=SpuriousSpec(), group_balanced=True)
    h_test, y_test = class_token(model, test), torch.tensor(test.groups() // 2)
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
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "figures")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    model = HookedCLIP.from_pretrained("toy")
    sae = S.toy(model).requires_grad_(False)
    labels = figures(model, sae, args.out)
    reliance(model, sae, labels)
    augmentation(model, sae, labels)


if __name__ == "__main__":
    main()
