"""The demo report's section on sparse-autoencoder latents: the shipped toy autoencoder on the toy
model's last-layer class token, each latent's top held-out images, its text label and its clarity.
"""

from __future__ import annotations

import collections

import numpy as np

from hookedclip import plotting
from hookedclip.report.sections.context import DemoContext
from hookedclip.report.viz import Section

ATTRIBUTES = ("color", "texture", "background", "shape")


def shared_attributes(attributes: list, indices: list[int], share: float = 0.8) -> str:
    """The attribute values held by at least ``share`` of the images (ground truth), e.g. ``"red, plain"``."""
    values = []
    for name in ATTRIBUTES:
        value, count = collections.Counter(getattr(attributes[i], name) for i in indices).most_common(1)[0]
        if count >= share * len(indices):
            values.append(value)
    return ", ".join(values) or "-"


def distinct_labels(labels, k: int) -> list[int]:
    """The most aligned latent of each of the ``k`` best distinct labels (most aligned first)."""
    chosen: dict[str, int] = {}
    for j in labels.most_aligned(len(labels)).tolist():
        chosen.setdefault(labels.label_of(j), j)
        if len(chosen) == k:
            break
    return list(chosen.values())


def _num(x: float) -> str:
    return f"{round(float(x), 2) + 0.0:.2f}"  # no "-0.00"


def gallery_strip(labels, images: np.ndarray, latents: list[int], path, top: int = 6):
    """One row per latent: its ``top`` images, the first captioned with the label."""
    grid, captions = [], []
    for j in latents:
        for r, (value, index) in enumerate(
            zip(labels.top_values[:top, j].tolist(), labels.top_indices[:top, j].tolist())
        ):
            grid.append(images[index])
            head = f"latent {j}: “{labels.label_of(j)}” s={_num(labels.score[j])} clarity {_num(labels.clarity[j])}"
            captions.append(f"{head} · a={value:.2f}" if r == 0 else f"a={value:.2f}")
    return plotting.image_grid(np.stack(grid), captions, path, cols=top)


def section_sae_labels(ctx: DemoContext) -> Section:
    from hookedclip.data.vocab import toy_text_pool
    from hookedclip.methods import sae as S
    from hookedclip.toy.model import images_to_tensor

    sae = S.toy(ctx.model).to(ctx.model.device, ctx.model.dtype)  # the shipped toy autoencoder
    top = S.top_activations(ctx.model, sae, ctx.tensors.split(256), n=20)
    mean, std = tuple(ctx.model.cfg.image_mean), tuple(ctx.model.cfg.image_std)
    labels = S.label_with_model(
        top, ctx.model, lambda index: images_to_tensor(ctx.images[index], mean, std), toy_text_pool(), n=20
    )
    most = distinct_labels(labels, 4)
    outliers = [j for j in labels.semantic_outliers(2).tolist() if j not in most]
    gallery_strip(labels, ctx.images, most + outliers, ctx.out_dir / "sae_labels_gallery.png")
    labels.plot(ctx.out_dir / "sae_labels_scatter.png")
    rows = [
        [
            str(j),
            labels.label_of(j),
            _num(labels.score[j]),
            labels.runner_up_of(j),
            _num(labels.clarity[j]),
            shared_attributes(ctx.attributes, labels.top_indices[:, j].tolist()),
        ]
        for j in most + outliers
    ]
    live = len(labels.candidates())
    return Section(
        "Sparse-autoencoder latents, labelled",
        [
            f"The shipped toy TopK sparse autoencoder ({sae.d_sae} latents, {sae.k} active per image; "
            f"hookedclip.methods.sae.toy()), trained on the last layer's class-token residual of training images. On the {len(ctx.images)} "
            f"held-out images, {live} latents fire; each is labelled with the text of the toy pool closest to the mean "
            "embedding of its top 20 images, minus the empty text's closeness (alignment s, at most 2), and its "
            "clarity is the mean pairwise cosine of those images (1: alike).",
            "The most aligned latent of each of the four best labels and the clearest latents no text describes (semantic outliers) are "
            "below; the last column gives the attribute values that 80% of their top images share (ground truth). "
            "hookedclip sae gallery writes the full page for any autoencoder.",
        ],
        figures=[
            ("sae_labels_gallery.png", "Top images of each latent (rows), with their activations a."),
            (
                "sae_labels_scatter.png",
                "Alignment against clarity, one dot per live latent; circled: semantic outliers.",
            ),
        ],
        tables=[(["latent", "label", "alignment", "runner-up", "clarity", "shared by the top images"], rows)],
    )


__all__ = ["distinct_labels", "gallery_strip", "section_sae_labels", "shared_attributes"]
