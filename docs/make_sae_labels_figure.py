"""Regenerate the figure and numbers of docs/sae_labels.md with the shipped toy autoencoder
(``sae.toy()``): docs/figures/sae_labels_gallery.png, the top images of six latents on held-out
toy images (the most aligned latent of each of the four best labels, then two semantic
outliers), and the numbers of the page's "On the toy world" section. Deterministic.

Run: python docs/make_sae_labels_figure.py [--out docs/figures]
"""

from __future__ import annotations

import collections

import numpy as np
from figure_args import figure_args

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods import sae as S
from hookedclip.plotting import wilson
from hookedclip.report.sections.sae_labels import distinct_labels, gallery_strip
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.text import ATTRIBUTE_WORDS
from hookedclip.toy.world import ToyWorld

SEED, N_IMAGES, TOP = 2024, 2048, 20
PURE = 0.8  # an attribute value is "shared" by a latent's top images when at least this share hold it


def toy_world_numbers(labels, world: ToyWorld, texts: list[str]) -> None:
    """How alike the top images of the latents are (ground truth), and how often the label names it."""
    attributes = world.attributes()
    firing = (labels.top_values > 0).all(0).nonzero().flatten().tolist()
    shares = [S.shared_values(attributes, labels.top_indices[:, j].tolist(), PURE) for j in firing]
    rng = np.random.default_rng(0)
    chance = np.mean([S.shared_values(attributes, rng.choice(len(world), TOP, replace=False))[0] for _ in range(300)])
    best = np.array([share for share, _ in shares])
    print(
        f"{len(firing)} latents fire on all of their top {TOP} images; their largest share of one value: "
        f"median {100 * np.median(best):.0f}%, mean {100 * best.mean():.0f}%, random {TOP} images "
        f"{100 * chance:.0f}%; {int((best >= PURE).sum())} of {len(firing)} have a value shared by >= {PURE:.0%}"
    )
    hits, random_hits, misses = [], [], collections.Counter()
    for j, (_, shared) in zip(firing, shares):
        if shared:
            words = {ATTRIBUTE_WORDS[a][v] for a, v in shared.items()}
            hits.append(bool(words & set(labels.label_of(j).split())))
            random_hits.append(np.mean([bool(words & set(t.split())) for t in texts]))
            if not hits[-1]:
                misses["+".join(shared), labels.label_of(j)] += 1
    low, high = wilson(float(np.mean(hits)), len(hits))
    print(
        f"the best label of the {len(texts)}-text vocabulary names a shared value for {sum(hits)} of {len(hits)} "
        f"({100 * np.mean(hits):.0f}%, 95% Wilson interval {low:.0f}-{high:.0f}%); a random text would for "
        f"{100 * np.mean(random_hits):.1f}%"
    )
    print(f"misses (shared attributes, label): {dict(misses)}")


def main(argv: list[str] | None = None) -> None:
    out = figure_args(__doc__, argv).out
    model = HookedCLIP.from_pretrained("toy")
    sae = S.toy(model)
    world = ToyWorld(N_IMAGES, seed=SEED, split="test")
    images = world.images()
    inputs = images_to_tensor(images, tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
    top = S.top_activations(model, sae, inputs.split(256), n=TOP)
    texts = toy_text_pool()
    labels = S.label_with_model(top, model, S.toy_image_inputs(world, model), texts, n=TOP)
    most = distinct_labels(labels, 4)
    outliers = [j for j in labels.semantic_outliers(2).tolist() if j not in most]
    for j in most + outliers:
        shared = S.shared_values(world.attributes(), labels.top_indices[:, j].tolist(), PURE)[1]
        print(f"latent {j}: {labels.label_of(j)!r} s={float(labels.score[j]):.2f} shared {shared}")
    print(gallery_strip(labels, images, most + outliers, out / "sae_labels_gallery.png"))
    toy_world_numbers(labels, world, texts)


if __name__ == "__main__":
    main()
