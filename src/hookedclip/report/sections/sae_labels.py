"""The demo report's section on sparse-autoencoder latents: the shipped toy autoencoder on the toy
model's last-layer class token, each latent's top held-out images, its text label and its clarity.
"""

from __future__ import annotations

import collections

import numpy as np
import torch

from hookedclip import plotting
from hookedclip.report.sections.context import DemoContext
from hookedclip.report.viz import Section

ATTRIBUTES = ("color", "texture", "background", "shape")


def toy_autoencoder(model, n_images: int = 1024, d_sae: int = 256, k: int = 8, steps: int = 300, seed: int = 0):
    """A TopK autoencoder (``d_sae`` latents, ``k`` active) on the last layer's class-token residual
    of ``n_images`` training-split toy images: a plain AdamW loop on the cosine reconstruction
    loss, atoms renormalised after every step (seconds on a CPU). Returns ``(sae, residuals)``."""
    import torch.nn.functional as F

    from hookedclip.methods import sae as S
    from hookedclip.names import act_name
    from hookedclip.toy.model import images_to_tensor
    from hookedclip.toy.world import ToyWorld

    world = ToyWorld(n_images, seed=seed, split="train")
    site = act_name("resid_post", model.cfg.n_layers - 1)
    with torch.no_grad():
        x = images_to_tensor(world.images(), tuple(model.cfg.image_mean), tuple(model.cfg.image_std))
        _, cache = model.run_with_cache(x.to(model.device, model.dtype), names_filter=site)
    residuals = cache[site][:, 0].float().cpu()
    generator = torch.Generator().manual_seed(seed)
    sae = S.TopKSAE(S.SAEConfig(model.cfg.d_model, d_sae, k, layer=-1, token="cls"), model=model)
    sae.reset_parameters(generator)
    optimiser = torch.optim.AdamW(sae.parameters(), lr=2e-3)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # [128, 128] matrices: more threads only contend (10x slower on a busy machine)
    try:
        for _ in range(steps):
            batch = residuals[torch.randint(0, len(residuals), (128,), generator=generator)]
            recons = sae(batch, mode="recon_only")
            loss = 100 * (F.normalize(recons, dim=-1) - F.normalize(batch, dim=-1)).pow(2).mean()
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            sae.normalize_decoder_()
    finally:
        torch.set_num_threads(threads)
    return sae.eval().to(model.device, model.dtype), residuals


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


__all__ = ["distinct_labels", "gallery_strip", "section_sae_labels", "shared_attributes", "toy_autoencoder"]
