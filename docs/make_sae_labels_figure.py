"""Regenerate the figure of docs/sae_labels.md: docs/figures/sae_labels_gallery.png, the top
images of six latents of a small autoencoder on the toy model (the demo's recipe): the most
aligned latent of each of the four best labels, then two semantic outliers. Deterministic.

Run: python docs/make_sae_labels_figure.py [--out docs/figures]
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hookedclip import HookedCLIP
from hookedclip.data.vocab import toy_text_pool
from hookedclip.methods import sae as S
from hookedclip.report.sections.sae_labels import distinct_labels, gallery_strip, toy_autoencoder
from hookedclip.toy.model import images_to_tensor
from hookedclip.toy.world import ToyWorld

SEED, N_IMAGES = 2024, 512


def gallery_figure(path: Path) -> Path:
    model = HookedCLIP.from_pretrained("toy")
    sae, _ = toy_autoencoder(model, seed=0)
    world = ToyWorld(N_IMAGES, seed=SEED, split="test")
    images = world.images()
    inputs = images_to_tensor(images, tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
    top = S.top_activations(model, sae, inputs.split(256), n=20)
    labels = S.label_with_model(top, model, S.toy_image_inputs(world, model), toy_text_pool(), n=20)
    most = distinct_labels(labels, 4)
    outliers = [j for j in labels.semantic_outliers(2).tolist() if j not in most]
    return gallery_strip(labels, images, most + outliers, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(Path(__file__).parent / "figures"))
    out = Path(parser.parse_args().out)
    out.mkdir(parents=True, exist_ok=True)
    print(gallery_figure(out / "sae_labels_gallery.png"))


if __name__ == "__main__":
    main()
